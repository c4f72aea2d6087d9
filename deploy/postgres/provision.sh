#!/bin/sh
# provision.sh [psql arguments]: runs provision.sql as the superuser with the
# roles' passwords from the environment (PG_<ROLE>_PASSWORD, e.g.
# PG_BANK_COMMAND_PASSWORD). Also the compose init script
# (docker-entrypoint-initdb.d), where psql reaches the server by default and
# PROVISION_SQL names the SQL file (mounted elsewhere).
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
set -- "$@" -v ON_ERROR_STOP=1 -q
for role in bank_auth_owner bank_auth bank_command_owner bank_command bank_read_owner bank_projector bank_query; do
  var="PG_$(echo "$role" | tr a-z A-Z)_PASSWORD"
  eval "pw=\${$var:-}"
  # shellcheck disable=SC2154
  if [ -z "$pw" ]; then echo "provision.sh: $var is not set" >&2; exit 1; fi
  set -- "$@" -v "$role=$pw"
done
psql "$@" -f "${PROVISION_SQL:-$dir/provision.sql}"
