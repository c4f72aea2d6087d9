#!/bin/sh
# Inside compose: same envoy.yaml, upstreams by service name, listener on all
# interfaces, descriptor from the shared volume.
set -eu
sed -e 's/address: 127.0.0.1, port_value: 50051/address: auth-service, port_value: 50051/' \
    -e 's/address: 127.0.0.1, port_value: 50052/address: command-service, port_value: 50052/' \
    -e 's/address: 127.0.0.1, port_value: 50053/address: query-service, port_value: 50053/' \
    -e 's/address: 127.0.0.1, port_value: 9091/address: auth-service, port_value: 9091/' \
    -e 's#http://127.0.0.1:9091/#http://auth-service:9091/#' \
    -e 's/address: 127.0.0.1, port_value: 8080/address: 0.0.0.0, port_value: 8080/' \
    -e 's#"envoy/bank.pb"#"/descriptors/bank.pb"#' \
    /etc/envoy/envoy.yaml > /tmp/envoy.yaml
exec envoy -c /tmp/envoy.yaml
