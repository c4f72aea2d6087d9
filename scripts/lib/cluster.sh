# shellcheck shell=bash
# The HA topology's engines as local processes on loopback:
#   etcd x3          the consensus Patroni keeps its leader key in
#   Patroni x3       Postgres primary + synchronous standby + a second standby,
#                    strict synchronous mode, automatic failover
#   nats-server x3   one JetStream cluster (streams with three replicas)
#   redis x2         master + replica, and redis-sentinel x3 watching them
# Every port is picked free (below the ephemeral range) when the cluster is
# first made and kept in $HA_STATE/ports.env; all data lives under $HA_STATE.
# Sourced by scripts/cluster (and through it scripts/run --ha and the HA
# fault tests) after scripts/lib/stack.sh.

HA_STATE="${HA_STATE:-$STATE/ha}"
HA_NODES=(etcd1 etcd2 etcd3 pg1 pg2 pg3 nats1 nats2 nats3 redis1 redis2 sentinel1 sentinel2 sentinel3)

cluster_install() {
  stack_install
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v patroni >/dev/null || missing+=(patroni)
  /usr/bin/python3 -c "import etcd" 2>/dev/null || missing+=(python3-etcd)
  command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

# cluster_ports: the cluster's ports, picked once.
cluster_ports() {
  mkdir -p "$HA_STATE/run" "$HA_STATE/logs"
  if [ ! -s "$HA_STATE/ports.env" ]; then
    local p
    read -r -a p <<<"$(free_ports 24)"
    cat >"$HA_STATE/ports.env" <<PORTS
ETCD_CLIENT=(${p[0]} ${p[1]} ${p[2]})
ETCD_PEER=(${p[3]} ${p[4]} ${p[5]})
PG_PORTS=(${p[6]} ${p[7]} ${p[22]})
PATRONI_REST=(${p[8]} ${p[9]} ${p[23]})
NATS_PORTS=(${p[10]} ${p[11]} ${p[12]})
NATS_CLUSTER=(${p[13]} ${p[14]} ${p[15]})
NATS_MONITOR=(${p[16]} ${p[17]} ${p[18]})
REDIS_PORTS=(${p[19]} ${p[20]})
SENTINEL_PORTS=(${p[21]} $(free_ports 2))
PORTS
  fi
  # shellcheck disable=SC1091
  source "$HA_STATE/ports.env"
  # A cluster made when it had two Postgres nodes gains the third's ports.
  if [ "${#PG_PORTS[@]}" -lt 3 ]; then
    local extra
    read -r -a extra <<<"$(free_ports 2)"
    sed -i -e "s|^PG_PORTS=(.*)|PG_PORTS=(${PG_PORTS[*]} ${extra[0]})|" \
      -e "s|^PATRONI_REST=(.*)|PATRONI_REST=(${PATRONI_REST[*]} ${extra[1]})|" "$HA_STATE/ports.env"
    # shellcheck disable=SC1091
    source "$HA_STATE/ports.env"
  fi
}

# ha_secrets: the cluster's own passwords beside the stack's (replication,
# Patroni's REST API, NATS routes).
ha_secrets() {
  stack_secrets
  local dir="$STATE/secrets" name
  for name in pg_replicator patroni_rest nats_route; do
    [ -s "$dir/$name" ] || (umask 077 && echo "k$(openssl rand -hex 24)" >"$dir/$name")
    export "${name^^}_PASSWORD=$(cat "$dir/$name")"
  done
}

pid_of() { cat "$HA_STATE/run/$1.pid" 2>/dev/null; }
node_alive() { local pid; pid="$(pid_of "$1")" && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# run_node <name> <command...>: a daemon of the cluster in a session of its
# own (so a kill reaches all it started), its pid in $HA_STATE/run.
run_node() {
  local name=$1; shift
  setsid "$@" >>"$HA_STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$HA_STATE/run/$name.pid"
}

start_etcd() { # start_etcd <1-3>
  local i=$1 n=$(($1 - 1)) cluster="" j
  for j in 0 1 2; do cluster+="etcd$((j + 1))=http://127.0.0.1:${ETCD_PEER[$j]},"; done
  node_alive "etcd$i" && return 0
  local state=new
  [ -d "$HA_STATE/etcd$i/member" ] && state=existing
  run_node "etcd$i" etcd --name "etcd$i" --data-dir "$HA_STATE/etcd$i" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$n]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$n]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$n]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$n]}" \
    --initial-cluster "${cluster%,}" --initial-cluster-state "$state" --initial-cluster-token bankmesh \
    --heartbeat-interval 100 --election-timeout 1000
}

# secret_sed <script file> <sed expression...>: the expressions written to
# an owner-only sed script (for `sed -f`): a password must never be an
# argument of sed (or of anything), where any local user reads it.
secret_sed() {
  local f=$1; shift
  (umask 077 && printf '%s\n' "$@" >"$f")
}

patroni_config() { # patroni_config <1-3>: $HA_STATE/patroni<i>.yml, readable by postgres only
  local i=$1 n=$(($1 - 1))
  local f="$HA_STATE/patroni$i.yml" script="$HA_STATE/patroni$i.sed"
  secret_sed "$script" "s|@POSTGRES_PASSWORD@|$PG_POSTGRES_PASSWORD|" "s|@REPLICATOR_PASSWORD@|$PG_REPLICATOR_PASSWORD|" \
    "s|@REST_PASSWORD@|$PATRONI_REST_PASSWORD|"
  (umask 077 && cat >"$f" <<YAML
# Rendered from deploy/ha/patroni.yml.in by scripts/lib/cluster.sh.
$(sed -e "s|@NAME@|pg$i|; s|@REST_PORT@|${PATRONI_REST[$n]}|g; s|@PG_PORT@|${PG_PORTS[$n]}|g" \
      -e "s|@ETCD_HOSTS@|127.0.0.1:${ETCD_CLIENT[0]},127.0.0.1:${ETCD_CLIENT[1]},127.0.0.1:${ETCD_CLIENT[2]}|" \
      -e "s|@DATA_DIR@|$HA_STATE/pg$i|; s|@RUN_DIR@|$HA_STATE/run|; s|@PGPASS@|$HA_STATE/patroni$i/pgpass|" \
      -e "s|@PGBIN@|$PGBIN|" -f "$script" "$REPO/deploy/ha/patroni.yml.in")
YAML
  )
  rm -f "$script"
  chown postgres "$f"
}

start_patroni() { # start_patroni <1-3>
  local i=$1
  node_alive "pg$i" && return 0
  # Postgres runs as the postgres user, which must reach the folder.
  local d="$HA_STATE"
  mkdir -p "$d"
  while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
  mkdir -p "$HA_STATE/pg$i" "$HA_STATE/patroni$i" && chown postgres "$HA_STATE/pg$i" "$HA_STATE/patroni$i"
  chmod 700 "$HA_STATE/pg$i" "$HA_STATE/patroni$i"
  chown postgres "$HA_STATE/run"
  touch "$HA_STATE/logs/pg$i.log" && chown postgres "$HA_STATE/logs/pg$i.log"
  patroni_config "$i"
  run_node "pg$i" runuser -u postgres -- patroni "$HA_STATE/patroni$i.yml"
}

start_nats_node() { # start_nats_node <1-3>
  local i=$1 n=$(($1 - 1)) routes="" j
  node_alive "nats$i" && return 0
  for j in 0 1 2; do
    [ "$j" = "$n" ] || routes+="\"nats-route://route:$NATS_ROUTE_PASSWORD@127.0.0.1:${NATS_CLUSTER[$j]}\", "
  done
  mkdir -p "$HA_STATE/nats$i"
  # deploy/nats/nats.conf plus the cluster, its route password in the
  # owner-only file (never on nats-server's command line).
  local conf="$HA_STATE/nats$i/nats.conf"
  (
    umask 077
    cat "$REPO/deploy/nats/nats.conf" >"$conf"
    printf 'cluster {\n  name: bankmesh\n  listen: "127.0.0.1:%s"\n  authorization { user: route, password: "%s" }\n  routes: [%s]\n}\n' \
      "${NATS_CLUSTER[$n]}" "$NATS_ROUTE_PASSWORD" "${routes%, }" >>"$conf"
  )
  run_node "nats$i" nats-server -c "$conf" -js -n "nats$i" -a 127.0.0.1 -p "${NATS_PORTS[$n]}" \
    -m "${NATS_MONITOR[$n]}" -sd "$HA_STATE/nats$i"
}

start_redis_node() { # start_redis_node <1-2>: node 1 starts as the master, 2 as its replica
  local i=$1 n=$(($1 - 1))
  node_alive "redis$i" && return 0
  mkdir -p "$HA_STATE/redis$i"
  "$REPO/deploy/redis/render-acl.sh" "$REPO/deploy/redis/users.acl.in" "$HA_STATE/redis$i/users.acl"
  local replica=() master="" peer="${REDIS_PORTS[$((1 - n))]}"
  # Node 1 starts as the master. A restarted node never comes back as a
  # master, which would be empty (no persistence): beside a promoted replica
  # it would split the writes until Sentinel demoted it (losing them), and
  # if no failover happened yet its replica would copy it empty. It follows
  # the master the sentinels name, or while they still name this node (the
  # restart beat the failover), the peer, which Sentinel then promotes.
  if [ -e "$HA_STATE/redis$i/started" ]; then
    master="$(sentinel_master_port)" || master=""
    if [ -z "$master" ] || [ "$master" = "${REDIS_PORTS[$n]}" ]; then master="$peer"; fi
  elif [ "$i" = 2 ]; then
    master="$peer"
  fi
  if [ -n "$master" ]; then
    replica=(--replicaof 127.0.0.1 "$master")
  fi
  echo started >"$HA_STATE/redis$i/started"
  # Replication as admin: its password in an owner-only file, never an argument.
  local conf="$HA_STATE/redis$i/redis.conf"
  (umask 077 && printf 'masteruser admin\nmasterauth %s\n' "$REDIS_ADMIN_PASSWORD" >"$conf")
  run_node "redis$i" redis-server "$conf" --bind 127.0.0.1 --port "${REDIS_PORTS[$n]}" --dir "$HA_STATE/redis$i" \
    --aclfile "$HA_STATE/redis$i/users.acl" --save '' --appendonly no "${replica[@]}"
}

# sentinel_master_port: the master's port, as the first sentinel that answers names it.
sentinel_master_port() {
  local port answer
  for port in "${SENTINEL_PORTS[@]}"; do
    answer="$(redis_at "$port" sentinel get-master-addr-by-name bank 2>/dev/null | tail -1)" || continue
    [[ "$answer" =~ ^[0-9]+$ ]] && { echo "$answer"; return 0; }
  done
  return 1
}

start_sentinel() { # start_sentinel <1-3>
  local i=$1 n=$(($1 - 1))
  node_alive "sentinel$i" && return 0
  mkdir -p "$HA_STATE/sentinel$i"
  local conf="$HA_STATE/sentinel$i/sentinel.conf"
  # Sentinel rewrites its file (what it learns of the others): made once.
  if [ ! -s "$conf" ]; then
    secret_sed "$conf.sed" "s|@ADMIN@|$REDIS_ADMIN_PASSWORD|g" "s|@PROJECTOR@|$REDIS_PROJECTOR_PASSWORD|" \
      "s|@QUERY@|$REDIS_QUERY_PASSWORD|" "s|@COMMAND@|$REDIS_COMMAND_PASSWORD|" "s|@AUTH@|$REDIS_AUTH_PASSWORD|"
    (umask 077 && sed -e "s|@PORT@|${SENTINEL_PORTS[$n]}|; s|@DIR@|$HA_STATE/sentinel$i|; s|@MASTER_PORT@|${REDIS_PORTS[0]}|" \
      -f "$conf.sed" "$REPO/deploy/ha/sentinel.conf.in" >"$conf")
    rm -f "$conf.sed"
  fi
  run_node "sentinel$i" redis-sentinel "$conf"
}

# pg_primary_port: the Postgres port of the node that is primary now.
pg_primary_port() {
  local n
  for n in 0 1 2; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PATRONI_REST[$n]}/primary")" = 200 ]; then
      echo "${PG_PORTS[$n]}"
      return 0
    fi
  done
  return 1
}

# pg_member_with_role <role>: the Patroni node (pg1-3) whose role is <role>
# (leader, sync_standby, replica) as the cluster reports it.
pg_member_with_role() {
  local n
  for n in 0 1 2; do
    curl -fs "http://127.0.0.1:${PATRONI_REST[$n]}/cluster" 2>/dev/null | python3 -c '
import json, sys
names = [m["name"] for m in json.load(sys.stdin)["members"] if m["role"] == sys.argv[1] and m["state"] in ("running", "streaming")]
print(names[0]) if names else sys.exit(1)' "$1" && return 0
  done
  return 1
}

# pg_streams <node>: the node (pg1-3) streams WAL from the primary.
pg_streams() {
  local primary; primary="$(pg_primary_port)" || return 1
  [ "$(psql_at "$primary" -qAtc "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$1' AND state = 'streaming'")" = 1 ]
}

cluster_start() {
  cluster_ports
  ha_secrets
  local i
  for i in 1 2 3; do start_etcd "$i"; done
  for i in 1 2 3; do start_patroni "$i"; done
  for i in 1 2 3; do start_nats_node "$i"; done
  for i in 1 2; do start_redis_node "$i"; done
  wait_for "redis master" 20 redis_at "${REDIS_PORTS[0]}" ping
  for i in 1 2 3; do start_sentinel "$i"; done
  wait_for "a Postgres primary (Patroni)" 90 pg_primary_accepts
  # Roles and databases (idempotent); retried, as a restarted cluster may
  # still be settling which node leads.
  wait_for "provisioning the primary" 60 pg_provision
  wait_for "Patroni's cluster-wide settings" 30 patroni_settings
  local primary; primary="$(pg_primary_port)"
  for i in 0 1 2; do
    wait_for "nats$((i + 1))" 30 curl -fs "http://127.0.0.1:${NATS_MONITOR[$i]}/healthz?js-enabled-only=true"
  done
  wait_for "both standbys, one synchronous" 150 standbys_streaming
  log "HA cluster up: Postgres on ${PG_PORTS[*]} (primary $primary), NATS on ${NATS_PORTS[*]}, Redis on ${REDIS_PORTS[*]}, sentinels on ${SENTINEL_PORTS[*]}"
}

# pg_primary_accepts: Patroni names a primary and it takes connections (a
# restarted node is named a moment before it does).
pg_primary_accepts() {
  local primary; primary="$(pg_primary_port)" || return 1
  psql_at "$primary" -qAtc "SELECT 1" >/dev/null 2>&1
}

# psql_at <port> <psql args>: psql as the superuser on a node of the cluster.
psql_at() { local port=$1; shift; PGPASSWORD="$PG_POSTGRES_PASSWORD" "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }

pg_provision() {
  local primary; primary="$(pg_primary_port)" || return 1
  PGPASSWORD="$PG_POSTGRES_PASSWORD" "$REPO/deploy/postgres/provision.sh" -h 127.0.0.1 -p "$primary" -U postgres -d postgres
}


# patroni_settings: the cluster-wide settings (bootstrap.dcs in
# deploy/ha/patroni.yml.in) applied to the running cluster. Patroni reads
# bootstrap.dcs only when it first makes the cluster: one made before a
# setting changed (non-strict synchronous mode, say) would keep the old one.
# The REST password goes to curl in a config on a pipe, never an argument.
patroni_settings() {
  local settings n
  settings="$(python3 -c '
import json, re, sys, yaml
template = re.sub(r"@[A-Z_]+@", "x", open(sys.argv[1]).read())  # the settings have no placeholders
print(json.dumps(yaml.safe_load(template)["bootstrap"]["dcs"]))' "$REPO/deploy/ha/patroni.yml.in")" || return 1
  for n in 0 1 2; do
    curl -fsS -o /dev/null -X PATCH -K <(printf 'user = "patroni:%s"\n' "$PATRONI_REST_PASSWORD") \
      -H 'Content-Type: application/json' --data-binary "$settings" "http://127.0.0.1:${PATRONI_REST[$n]}/config" && return 0
  done
  return 1
}

# standbys_streaming: both standbys replicate from the primary, one of them
# synchronously (the strict mode's one required standby).
standbys_streaming() {
  local primary; primary="$(pg_primary_port)" || return 1
  [ "$(psql_at "$primary" -qAtc "SELECT count(*) FILTER (WHERE sync_state = 'sync') || ' ' || count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = "1 2" ]
}

# cluster_healthy: waits until every node is up and the cluster whole: a
# primary with its synchronous standby, every NATS server with JetStream
# current, a Redis master known to the sentinels with its replica attached.
cluster_healthy() {
  local i name
  for name in "${HA_NODES[@]}"; do node_alive "$name" || start_node "$name"; done
  wait_for "a Postgres primary (Patroni)" 90 pg_primary_accepts
  wait_for "both standbys, one synchronous" 150 standbys_streaming
  for i in 0 1 2; do
    wait_for "nats$((i + 1))" 60 curl -fs "http://127.0.0.1:${NATS_MONITOR[$i]}/healthz?js-server-only=false"
  done
  wait_for "the Redis replica" 60 redis_replica_attached
}

redis_replica_attached() {
  local master; master="$(sentinel_master_port)" || return 1
  redis_at "$master" info replication 2>/dev/null | grep -q '^connected_slaves:1'
}

# kill_node <name>: SIGKILL to the node and everything it started (Patroni
# and its Postgres: the host is gone).
kill_node() {
  local pid; pid="$(pid_of "$1")" || return 0
  kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
  if [[ $1 == pg* ]]; then
    # Postgres's own processes: the postmaster of that data directory.
    local pm; pm="$(head -1 "$HA_STATE/$1/postmaster.pid" 2>/dev/null || true)"
    [ -n "$pm" ] && kill -9 "$pm" 2>/dev/null || true
  fi
  rm -f "$HA_STATE/run/$1.pid"
}

start_node() { # start_node <name>
  cluster_ports
  ha_secrets
  case $1 in
    etcd[1-3]) start_etcd "${1#etcd}" ;;
    pg[1-3]) start_patroni "${1#pg}" ;;
    nats[1-3]) start_nats_node "${1#nats}" ;;
    redis[1-2]) start_redis_node "${1#redis}" ;;
    sentinel[1-3]) start_sentinel "${1#sentinel}" ;;
    *) echo "unknown node: $1 (${HA_NODES[*]})" >&2; return 2 ;;
  esac
}

cluster_stop() {
  local name
  [ -s "$HA_STATE/ports.env" ] || return 0
  for name in sentinel3 sentinel2 sentinel1 redis2 redis1 nats3 nats2 nats1 pg3 pg2 pg1 etcd3 etcd2 etcd1; do
    local pid; pid="$(pid_of "$name")" || continue
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 100); do
    local alive=0
    for name in "${HA_NODES[@]}"; do node_alive "$name" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for name in "${HA_NODES[@]}"; do kill_node "$name"; done
  log "HA cluster stopped"
}

# cluster_env: what the tests and scripts/run --ha need: the admin URLs
# and every service's view of the cluster (several hosts each).
cluster_env() {
  cluster_ports
  ha_secrets
  local pg_hosts="127.0.0.1:${PG_PORTS[0]},127.0.0.1:${PG_PORTS[1]},127.0.0.1:${PG_PORTS[2]}"
  export DATABASE_ADMIN_URL="postgres://postgres:$PG_POSTGRES_PASSWORD@$pg_hosts/postgres"
  export PG_HOSTS="$pg_hosts"
  export NATS_ADDR="127.0.0.1:${NATS_PORTS[0]},127.0.0.1:${NATS_PORTS[1]},127.0.0.1:${NATS_PORTS[2]}"
  export NATS_MONITOR_ADDR="127.0.0.1:${NATS_MONITOR[0]}"
  export NATS_ADMIN_URL="nats://admin:$NATS_ADMIN_PASSWORD@$NATS_ADDR"
  export REDIS_SENTINELS="127.0.0.1:${SENTINEL_PORTS[0]},127.0.0.1:${SENTINEL_PORTS[1]},127.0.0.1:${SENTINEL_PORTS[2]}"
  export REDIS_MASTER_NAME=bank
  export REDIS_ADDR="127.0.0.1:${REDIS_PORTS[0]}"
  export REDIS_ADMIN_URL="redis://admin:$REDIS_ADMIN_PASSWORD@$REDIS_ADDR"
  export NATS_STREAM_REPLICAS=3 READ_DB_SYNCHRONOUS_COMMIT=on
  export HA_STATE HA_SCRIPT="$REPO/scripts/cluster"
  service_redis_url() { echo "redis+sentinel://$1:$2@$REDIS_SENTINELS/$REDIS_MASTER_NAME"; }
  service_nats_url() { echo "nats://$1:$2@$NATS_ADDR"; }
}

# ha_edge_config <envoy.yaml>: the rendered edge config with every upstream
# cluster given the second instance too (*_PORT_2), and passive health
# checks: an instance that stops answering is ejected for a while.
ha_edge_config() {
  python3 - "$1" <<'PY'
import os, sys, yaml
path = sys.argv[1]
config = yaml.safe_load(open(path))
second = {os.environ[v]: os.environ[v + "_2"] for v in
          ("AUTH_GRPC_PORT", "AUTH_HTTP_PORT", "COMMAND_GRPC_PORT", "QUERY_GRPC_PORT", "NOTIFY_GRPC_PORT")}
for cluster in config["static_resources"]["clusters"]:
    for group in cluster.get("load_assignment", {}).get("endpoints", []):
        extra = []
        for lb in group["lb_endpoints"]:
            addr = lb["endpoint"]["address"]["socket_address"]
            if str(addr["port_value"]) in second:
                twin = yaml.safe_load(yaml.safe_dump(lb))
                twin["endpoint"]["address"]["socket_address"]["port_value"] = int(second[str(addr["port_value"])])
                extra.append(twin)
        group["lb_endpoints"].extend(extra)
        if extra:
            cluster["outlier_detection"] = {"consecutive_5xx": 3, "consecutive_gateway_failure": 2,
                                            "interval": "1s", "base_ejection_time": "5s", "max_ejection_percent": 50}
            # The gRPC clusters have gRPC health checks; the rest a TCP one.
            # Every second even without traffic (Envoy's default then is a
            # minute): a dead instance is out within about two seconds.
            checks = cluster.setdefault("health_checks", [{"timeout": "1s", "unhealthy_threshold": 2,
                                                           "healthy_threshold": 1, "tcp_health_check": {}}])
            cluster["health_checks"] = [dict(c, interval="1s", no_traffic_interval="1s") for c in checks]
# A request that found an instance dead (refused, reset before an answer) is
# sent to the other: safe for commands too, which carry idempotency keys.
def routes(node):
    if isinstance(node, dict):
        if "virtual_hosts" in node:
            for vh in node["virtual_hosts"]:
                vh["retry_policy"] = {"retry_on": "connect-failure,refused-stream,reset,unavailable", "num_retries": 2}
        for v in node.values():
            routes(v)
    elif isinstance(node, list):
        for v in node:
            routes(v)
routes(config)
yaml.safe_dump(config, open(path, "w"), sort_keys=False)
PY
}
