#!/usr/bin/env bash
# Fault and soak tests (crates/e2e): the service binaries as processes, killed
# and restarted, and the shared servers stopped and restarted — so they run
# here, alone and one at a time, after the parallel suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
stack_env
cargo build -q --bins
cargo nextest run -p bank-e2e --locked --test-threads 1 --no-fail-fast -E "not binary(ha)"
