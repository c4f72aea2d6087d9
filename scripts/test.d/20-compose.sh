#!/usr/bin/env bash
# compose.yaml against the current Compose specification schema.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v check-jsonschema >/dev/null || python3 -m pip install -q --disable-pip-version-check check-jsonschema
check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
python3 -c "import json; json.load(open('deploy/grafana/dashboards/bankmesh.json'))"
