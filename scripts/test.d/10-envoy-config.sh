#!/usr/bin/env bash
# Envoy's config: the template rendered with its defaults (as scripts/run
# does) and with compose's values (as envoy/render-compose.sh does), both
# passing `envoy --mode validate`; consistency with proto/ (exemptions name
# real RPCs, routes real clusters).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo run -q -p bank-proto --bin write-descriptor-set -- "$out/bank.pb" >/dev/null
sh deploy/tls/make-certs.sh "$out/tls" envoy
DESCRIPTOR="$out/bank.pb" TLS_DIR="$out/tls" python3 envoy/render.py "$out/local.yaml"
envoy --mode validate -c "$out/local.yaml" --log-level error
# compose: service names resolve only inside compose, so validate with them
# swapped back to loopback; the descriptor and document from this checkout.
RENDER_ONLY=1 sh envoy/render-compose.sh envoy/envoy.yaml "$out/compose.yaml"
sed -e 's/\(auth\|command\|query\|notification\)-service/127.0.0.1/g' \
  -e "s#/descriptors/bank.pb#$out/bank.pb#" -e "s#/etc/envoy/openapi.json#$PWD/envoy/openapi.json#" \
  -e "s#/etc/envoy-tls#$out/tls#g" \
  "$out/compose.yaml" >"$out/compose-local.yaml"
envoy --mode validate -c "$out/compose-local.yaml" --log-level error
python3 scripts/check_envoy.py
