#!/bin/sh
# sentinel.sh: one redis-sentinel of the HA topology in compose (profile
# `ha`): deploy/ha/sentinel.conf.in rendered as scripts/lib/cluster.sh renders
# it, except that it listens on the container's interfaces and names every
# node by its compose name (hostnames everywhere, as Redis advises: container
# addresses change). NODE_NAME, REDIS_MASTER_HOST (the first master) and the
# REDIS_*_PASSWORDs from the environment.
set -eu
: "${NODE_NAME:?sentinel.sh: NODE_NAME is not set}" "${REDIS_MASTER_HOST:?sentinel.sh: REDIS_MASTER_HOST is not set}"
conf=/data/sentinel.conf
# Sentinel rewrites its file (what it learns of the others): made once.
if [ ! -s "$conf" ]; then
  for name in ADMIN PROJECTOR QUERY COMMAND AUTH; do
    eval "pw=\${REDIS_${name}_PASSWORD:-}"
    # shellcheck disable=SC2154
    if [ -z "$pw" ]; then echo "sentinel.sh: REDIS_${name}_PASSWORD is not set" >&2; exit 1; fi
    case $pw in *[!A-Za-z0-9._-]*) echo "sentinel.sh: REDIS_${name}_PASSWORD may hold only A-Z a-z 0-9 . _ -" >&2; exit 1 ;; esac
  done
  umask 077
  # The passwords reach sed in a script file (owner-only), never as arguments.
  printf 's|@ADMIN@|%s|g\ns|@PROJECTOR@|%s|\ns|@QUERY@|%s|\ns|@COMMAND@|%s|\ns|@AUTH@|%s|\n' "$REDIS_ADMIN_PASSWORD" \
    "$REDIS_PROJECTOR_PASSWORD" "$REDIS_QUERY_PASSWORD" "$REDIS_COMMAND_PASSWORD" "$REDIS_AUTH_PASSWORD" >/tmp/sentinel-secrets.sed
  {
    # Before the monitor line, which names the master by host name.
    echo "protected-mode no"
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $NODE_NAME"
    sed -e "s|@PORT@|26379|; s|@DIR@|/data|; s|^bind 127\.0\.0\.1\$|bind 0.0.0.0|" \
        -e "s|monitor bank 127\.0\.0\.1 @MASTER_PORT@|monitor bank $REDIS_MASTER_HOST 6379|" \
        -f /tmp/sentinel-secrets.sed /etc/bank-ha/sentinel.conf.in
  } >"$conf.new"
  rm -f /tmp/sentinel-secrets.sed
  # Whatever the template gains later must not silently stay on loopback.
  if grep -n '127\.0\.0\.1\|@[A-Z_]*@' "$conf.new" >&2; then
    echo "sentinel.sh: the lines above of sentinel.conf.in are not rendered for compose" >&2
    exit 1
  fi
  mv "$conf.new" "$conf"
fi
exec redis-sentinel "$conf"
