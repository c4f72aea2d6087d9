#!/bin/sh
# redis-node.sh: one Redis node of the HA topology in compose (profile `ha`),
# as scripts/lib/cluster.sh starts one: the users of deploy/redis/users.acl.in
# (rendered as for the single server), replication as the admin user, no
# persistence. On the first start REDIS_ROLE=master starts as the master,
# =replica as the replica of REDIS_PEER. A restarted node never comes back as
# a master, which would be empty: beside a promoted replica it would split the
# writes until Sentinel demoted it (losing them), and before a failover its
# replica would copy it empty. It follows the master the sentinels name, or,
# while they name this node or none answers, REDIS_PEER (which Sentinel then
# promotes). NODE_NAME is what it announces, so the sentinels hand out names
# that survive a container's new address.
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
    answer="$(REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" timeout 2 redis-cli --user admin -h "$sentinel" -p 26379 \
      sentinel get-master-addr-by-name bank 2>/dev/null | head -1)" || continue
    case $answer in "" | *[!A-Za-z0-9._-]*) continue ;; esac
    master=$answer
    break
  done
  if [ -z "$master" ] || [ "$master" = "$NODE_NAME" ]; then master="$REDIS_PEER"; fi
elif [ "${REDIS_ROLE:-replica}" != master ]; then
  master="$REDIS_PEER"
fi
if [ -n "$master" ]; then
  echo "replicaof $master 6379" >>/tmp/redis.conf
fi
touch /data/started
exec redis-server /tmp/redis.conf --aclfile /tmp/users.acl --save '' --appendonly no
