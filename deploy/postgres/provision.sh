#!/bin/sh
# provision.sh [psql arguments]: runs provision.sql as the superuser with the
# roles' passwords from the environment (PG_<ROLE>_PASSWORD, e.g.
# PG_BANK_COMMAND_PASSWORD). Also the compose init script
# (docker-entrypoint-initdb.d), where psql reaches the server by default and
# PROVISION_SQL names the SQL file (mounted elsewhere).
# No password is ever an argument (any local user may read a process's
# argv): provision.sql reads each from psql's own environment (\getenv, psql
# 15 and later), and the superuser's comes as PGPASSWORD.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
for role in bank_auth_owner bank_auth bank_command_owner bank_command bank_read_owner bank_projector bank_query \
  bank_notify_owner bank_notify; do
  var="PG_$(echo "$role" | tr a-z A-Z)_PASSWORD"
  eval "pw=\${$var:-}"
  # shellcheck disable=SC2154
  if [ -z "$pw" ]; then echo "provision.sh: $var is not set" >&2; exit 1; fi
done
psql "$@" -v ON_ERROR_STOP=1 -q -f "${PROVISION_SQL:-$dir/provision.sql}"
