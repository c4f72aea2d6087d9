#!/usr/bin/env bash
# A brief libFuzzer run (cargo-fuzz) on the decoders every request and event
# passes through: fuzz/fuzz_targets/{events,requests}.rs, seeded by
# fuzz/seeds.py. FUZZ_SECONDS per target (default 20). A crash fails the test
# command and leaves the input in fuzz/artifacts/.
#
# `-s none`: AddressSanitizer needs a nightly compiler, which this machine's
# registries cannot install; the code under test has no `unsafe`, so the
# coverage-guided search for panics is what matters here.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
python3 fuzz/seeds.py
log=$(mktemp)
for target in events requests; do
  echo "-- fuzz $target for ${FUZZ_SECONDS:-20} s"
  if ! cargo fuzz run -s none "$target" -- -max_total_time="${FUZZ_SECONDS:-20}" -max_len=4096 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log"
done
rm -f "$log"
