#!/usr/bin/env bash
# The contracts, checked like a library's: `buf lint`, `buf breaking` against
# the previous commit of main, the OpenAPI generator's own tests, and the
# committed OpenAPI document equal to what proto/ generates now.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
BUF_VERSION=1.75.0 # PyPI buf-bin: the official buf binary, pinned
if [ "$(buf --version 2>/dev/null)" != "$BUF_VERSION" ]; then pip_install "buf-bin==$BUF_VERSION"; hash -r; fi
python3 -c 'import google.api.annotations_pb2' 2>/dev/null || pip_install -r scripts/requirements.txt

buf lint
echo "ok: buf lint"
if git rev-parse -q --verify HEAD~1 >/dev/null; then
  buf breaking --against '.git#ref=HEAD~1,subdir=proto'
  echo "ok: buf breaking against $(git rev-parse --short HEAD~1)"
else
  echo "buf breaking: this clone has no previous commit to compare with" >&2
  exit 1
fi

python3 -m unittest -q scripts/test_openapi.py
pb=$(mktemp)
trap 'rm -f "$pb"' EXIT
cargo run -q -p bank-proto --bin write-descriptor-set -- "$pb" >/dev/null
python3 scripts/openapi.py "$pb" --check envoy/openapi.json
echo "ok: envoy/openapi.json is what proto/ generates"
