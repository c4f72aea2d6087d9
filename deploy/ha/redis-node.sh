#!/bin/sh
# redis-node.sh: one Redis node of the HA topology in compose (profile `ha`),
# as scripts/lib/cluster.sh starts one: the users of deploy/redis/users.acl.in
# (rendered as for the single server), replication as the admin user, no
# persistence. On the first start REDIS_ROLE=master starts as the master,
# =replica as the replica of REDIS_PEER; a node that restarts follows the
# master the sentinels name (REDIS_PEER if none answers), never coming back
# as an empty master beside a promoted one (writes there would be lost when
# Sentinel demotes it). NODE_NAME is what it announces, so the sentinels
# hand out names that survive a container's new address.
set -eu
: "${NODE_NAME:?redis-node.sh: NODE_NAME is not set}" "${REDIS_PEER:?redis-node.sh: REDIS_PEER is not set}"
sh /etc/redis-acl/render-acl.sh /etc/redis-acl/users.acl.in /tmp/users.acl
umask 077
# Every user has a password and the default user is off, so remote clients
# are fine (protected mode would only get in the way of that).
cat >/tmp/redis.conf <<CONF
protected-mode no
replica-announce-ip $NODE_NAME
masteruser admin
masterauth $REDIS_ADMIN_PASSWORD
CONF
# /data lives as long as the container's volume does; so does the sentinels'.
master=""
if [ -e /data/started ]; then
  for sentinel in sentinel1 sentinel2 sentinel3; do
    master="$(REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" redis-cli --user admin -h "$sentinel" -p 26379 \
      sentinel get-master-addr-by-name bank 2>/dev/null | head -1)" || master=""
    [ -n "$master" ] && break
  done
  [ -n "$master" ] || master="$REDIS_PEER"
elif [ "${REDIS_ROLE:-replica}" != master ]; then
  master="$REDIS_PEER"
fi
if [ -n "$master" ] && [ "$master" != "$NODE_NAME" ]; then
  echo "replicaof $master 6379" >>/tmp/redis.conf
fi
touch /data/started
exec redis-server /tmp/redis.conf --aclfile /tmp/users.acl --save '' --appendonly no
