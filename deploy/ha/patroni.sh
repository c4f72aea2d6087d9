#!/bin/sh
# patroni.sh: one Postgres node of the HA topology in compose (profile `ha`),
# run as postgres. deploy/ha/patroni.yml.in is rendered as
# scripts/lib/cluster.sh renders it, except that what binds to loopback there
# listens on the container's interfaces here, announces the node's compose
# name, and accepts peers on the compose network (`samenet`); then Patroni.
# The passwords come from the environment: NODE_NAME (pg1, pg2, pg3),
# PG_POSTGRES_PASSWORD, PG_REPLICATOR_PASSWORD, REST_API_PASSWORD (not a
# PATRONI_* name: Patroni reads those itself).
set -eu
for var in NODE_NAME PG_POSTGRES_PASSWORD PG_REPLICATOR_PASSWORD REST_API_PASSWORD; do
  eval "val=\${$var:-}"
  # shellcheck disable=SC2154
  if [ -z "$val" ]; then echo "patroni.sh: $var is not set" >&2; exit 1; fi
done
# A value as sed replacement text: | (the delimiter), & and \ taken literally.
lit() { printf '%s' "$1" | sed 's/[|&\\]/\\&/g'; }
conf=/tmp/patroni.yml
umask 077
# The passwords reach sed in a script file (owner-only), never as arguments.
{
  printf 's|@POSTGRES_PASSWORD@|%s|\n' "$(lit "$PG_POSTGRES_PASSWORD")"
  printf 's|@REPLICATOR_PASSWORD@|%s|\n' "$(lit "$PG_REPLICATOR_PASSWORD")"
  printf 's|@REST_PASSWORD@|%s|\n' "$(lit "$REST_API_PASSWORD")"
} >/tmp/patroni-secrets.sed
sed -e "s|@NAME@|$NODE_NAME|; s|@REST_PORT@|8008|g; s|@PG_PORT@|5432|g" \
    -e "s|@ETCD_HOSTS@|etcd1:2379,etcd2:2379,etcd3:2379|" \
    -e "s|@DATA_DIR@|/var/lib/postgresql/data/pgdata|; s|@RUN_DIR@|/var/run/postgresql|; s|@PGPASS@|/tmp/pgpass|" \
    -e "s|@PGBIN@|/usr/lib/postgresql/15/bin|" \
    -f /tmp/patroni-secrets.sed \
    -e "s|listen: 127\.0\.0\.1:|listen: 0.0.0.0:|; s|connect_address: 127\.0\.0\.1:|connect_address: $NODE_NAME:|" \
    -e "s|127\.0\.0\.1/32|samenet|" \
    /etc/bank-ha/patroni.yml.in >"$conf"
rm -f /tmp/patroni-secrets.sed
# Whatever the template gains later must not silently stay on loopback.
if grep -n '127\.0\.0\.1\|@[A-Z_]*@' "$conf" >&2; then
  echo "patroni.sh: the lines above of patroni.yml.in are not rendered for compose" >&2
  exit 1
fi
unset PG_POSTGRES_PASSWORD PG_REPLICATOR_PASSWORD REST_API_PASSWORD
exec patroni "$conf"
