#!/bin/sh
# redis-node.sh: one Redis node of the HA topology in compose (profile `ha`),
# as scripts/lib/cluster.sh starts one: the users of deploy/redis/users.acl.in
# (rendered as for the single server), replication as the admin user, no
# persistence. REDIS_ROLE=master starts as the master, =replica as the
# replica of REDIS_PEER; a node that restarts comes back as a replica (the
# sentinels point it at whichever node is master now), never as an empty
# master. NODE_NAME is what it announces, so the sentinels hand out names
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
if [ "${REDIS_ROLE:-replica}" != master ] || [ -e /data/started ]; then
  echo "replicaof $REDIS_PEER 6379" >>/tmp/redis.conf
fi
touch /data/started
exec redis-server /tmp/redis.conf --aclfile /tmp/users.acl --save '' --appendonly no
