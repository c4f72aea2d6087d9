#!/usr/bin/env bash
# The HA topology's fault tests (crates/e2e/tests/ha.rs): starts
# the cluster (scripts/cluster: etcd x3, Patroni x3, NATS x3, Redis +
# replica + Sentinel x3) in a state folder of its own, runs the tests on it
# one at a time, prints the failover figures, and stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
export HA_STATE="${HA_STATE:-$STATE/ha-test}"
source scripts/lib/cluster.sh
rm -rf "$HA_STATE"
cleanup() { cluster_stop; }
trap cleanup EXIT
cluster_install
cluster_start
cluster_env
cargo build -q --bins
cargo nextest run -p bank-e2e --test ha --locked --test-threads 1 --no-fail-fast
echo "== HA failover figures"
cat "$HA_STATE/figures.txt"
