#!/usr/bin/env bash
# Envoy's config: generated descriptor, `envoy --mode validate`, and
# consistency with proto/ (exemptions name real RPCs, routes real clusters).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run -q -p bank-proto --bin write-descriptor-set -- envoy/bank.pb
envoy --mode validate -c envoy/envoy.yaml --log-level error
python3 scripts/check_envoy.py
