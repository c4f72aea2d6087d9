#!/bin/sh
# nats-node.sh: one server of the HA topology's JetStream cluster in compose
# (profile `ha`): deploy/nats/nats.conf (the same users and permissions as
# the single server) plus the cluster, as scripts/lib/cluster.sh starts it:
# routes on :6222 to every peer, authenticated as user `route` (written to
# a config file: no password is ever an argument).
# NODE_NAME (the server name JetStream's cluster needs, unique), NATS_PEERS
# (the other servers' names) and NATS_ROUTE_PASSWORD from the environment.
set -eu
: "${NODE_NAME:?nats-node.sh: NODE_NAME is not set}" "${NATS_PEERS:?nats-node.sh: NATS_PEERS is not set}"
: "${NATS_ROUTE_PASSWORD:?nats-node.sh: NATS_ROUTE_PASSWORD is not set}"
routes=""
for peer in $NATS_PEERS; do
  routes="$routes${routes:+, }\"nats-route://route:$NATS_ROUTE_PASSWORD@$peer:6222\""
done
# The route password goes in an owner-only config file (deploy/nats/nats.conf
# plus the cluster), never on nats-server's command line.
umask 077
cat /etc/nats/nats.conf >/tmp/nats.conf
printf 'cluster {\n  name: bankmesh\n  listen: "0.0.0.0:6222"\n  authorization { user: route, password: "%s" }\n  routes: [%s]\n}\n' \
  "$NATS_ROUTE_PASSWORD" "$routes" >>/tmp/nats.conf
exec nats-server -c /tmp/nats.conf -js -sd /data -m 8222 -n "$NODE_NAME"
