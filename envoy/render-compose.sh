#!/bin/sh
# Inside compose: envoy.yaml's placeholders (see envoy/render.py) filled with
# compose service names, the listener on all interfaces, the descriptor from
# the shared volume, the admin interface on an owner-only unix socket inside
# the container (no port; nothing publishes it). sed, because the Envoy
# image has no Python.
set -eu
sed -e 's/${EDGE_ADDRESS}/0.0.0.0/g' -e 's/${EDGE_PORT}/8080/g' -e 's#${ENVOY_ADMIN_SOCKET}#/tmp/envoy-admin.sock#g' \
    -e 's/${AUTH_HOST}/auth-service/g' -e 's/${AUTH_GRPC_PORT}/50051/g' -e 's/${AUTH_HTTP_PORT}/9091/g' \
    -e 's/${COMMAND_HOST}/command-service/g' -e 's/${COMMAND_GRPC_PORT}/50052/g' \
    -e 's/${QUERY_HOST}/query-service/g' -e 's/${QUERY_GRPC_PORT}/50053/g' \
    -e 's/${NOTIFY_HOST}/notification-service/g' -e 's/${NOTIFY_GRPC_PORT}/50054/g' \
    -e 's#${DESCRIPTOR}#/descriptors/bank.pb#g' -e 's#${OPENAPI}#/etc/envoy/openapi.json#g' \
    -e 's#${TLS_DIR}#/etc/envoy-tls#g' \
    "${1:-/etc/envoy/envoy.yaml}" > "${2:-/tmp/envoy.yaml}"
if grep -n '\${' "${2:-/tmp/envoy.yaml}"; then echo "render-compose.sh: placeholder left unfilled" >&2; exit 1; fi
[ -n "${RENDER_ONLY:-}" ] || exec envoy -c "${2:-/tmp/envoy.yaml}"
