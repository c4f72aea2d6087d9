#!/usr/bin/env bash
# The HA topology from one command, through the edge: a fresh
# clone's `scripts/run --ha` on ports chosen free (the engines pick their
# own), the README's gRPC walk-through through Envoy; then one instance of
# every service killed with SIGKILL: scripts/run names each and runs on, and
# the README's REST walk-through (log in, open, deposit, transfer, read back
# with tokens) still succeeds through Envoy on the survivors; then Ctrl-C
# stops every process, the HA engines included.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
repo=$PWD
work=$(mktemp -d /tmp/bankmesh-ha-edge.XXXXXX)
clone=$work/clone
git clone -q "$repo" "$clone"
target="${CARGO_TARGET_DIR:-$repo/target}"

port_vars=(SMTP_PORT AUTH_GRPC_PORT AUTH_HTTP_PORT COMMAND_GRPC_PORT COMMAND_HTTP_PORT QUERY_GRPC_PORT QUERY_HTTP_PORT
  PROJECTOR_HTTP_PORT NOTIFY_GRPC_PORT NOTIFY_HTTP_PORT EDGE_PORT AUTH_GRPC_PORT_2 AUTH_HTTP_PORT_2 COMMAND_GRPC_PORT_2
  COMMAND_HTTP_PORT_2 QUERY_GRPC_PORT_2 QUERY_HTTP_PORT_2 PROJECTOR_HTTP_PORT_2 NOTIFY_GRPC_PORT_2 NOTIFY_HTTP_PORT_2)
read -r -a ports <<<"$(free_ports ${#port_vars[@]})"
port_env=()
declare -A port
for i in "${!port_vars[@]}"; do port_env+=("${port_vars[$i]}=${ports[$i]}"); port[${port_vars[$i]}]=${ports[$i]}; done
EDGE_PORT=${port[EDGE_PORT]}

run_pid=""
fail() {
  echo "HA EDGE TEST FAILED: $*" >&2
  tail -n 40 "$work/run.log" >&2 2>/dev/null || true
  for f in "$clone"/.state/ha/logs/pg*.log; do echo "== $f" >&2; tail -n 15 "$f" >&2; done 2>/dev/null || true
  exit 1
}
cleanup() {
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    kill -INT -- "-$run_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  (BANKMESH_STATE="$clone/.state" bash "$clone/scripts/cluster" stop >/dev/null 2>&1) || true
  rm -rf "$work"
}
trap cleanup EXIT

set -m
as_from_a_terminal env -i HOME="$HOME" PATH="$PATH" TERM=dumb CARGO_TARGET_DIR="$target" "${port_env[@]}" \
  bash "$clone/scripts/run" --ha >"$work/run.log" 2>&1 &
run_pid=$!
set +m
for _ in $(seq 1 1200); do
  grep -q "running: edge" "$work/run.log" && break
  kill -0 "$run_pid" 2>/dev/null || fail "scripts/run --ha exited before the mesh was up"
  sleep 0.5
done
grep -q "running: edge" "$work/run.log" || fail "scripts/run --ha did not come up within 10 minutes"
echo "ok: scripts/run --ha brought the HA topology up from a fresh clone"

block() {
  python3 - "$clone/README.md" "$1" <<'PY'
import re, sys
m = re.search(r"<!-- walkthrough:%s -->\s*```sh\n(.*?)```" % re.escape(sys.argv[2]), open(sys.argv[1]).read(), re.S)
print(m.group(1) if m else sys.exit(f"README.md has no walkthrough:{sys.argv[2]} block"))
PY
}
walk() { # walk <block>: the README's block as written, through the edge
  block "$1" >"$work/$1.sh"
  (cd "$clone" && EDGE="127.0.0.1:$EDGE_PORT" bash -euo pipefail "$work/$1.sh") >"$work/$1.out" 2>&1 ||
    { cat "$work/$1.out"; fail "the README's $1 walk-through failed"; }
}
walk grpc
grep -q '"amount": "74.50"' "$work/grpc.out" || fail "gRPC walk-through: no balance of 74.50"
echo "ok: the README's gRPC walk-through through the edge on the HA topology"

# One instance of each service, killed: the process listening on its port.
for var in AUTH_GRPC_PORT COMMAND_GRPC_PORT QUERY_GRPC_PORT PROJECTOR_HTTP_PORT NOTIFY_GRPC_PORT; do
  pid=$(ss -ltnpH "sport = :${port[$var]}" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u || true)
  [ -n "$pid" ] || fail "nothing listens on ${port[$var]} ($var)"
  kill -9 "$pid"
done
for name in auth-service command-service query-service projector notification-service; do
  for _ in $(seq 1 100); do grep -q "running on without $name\$" "$work/run.log" && break; sleep 0.1; done
  grep -q "running on without $name\$" "$work/run.log" || fail "scripts/run did not name $name and run on"
done
kill -0 "$run_pid" 2>/dev/null || fail "scripts/run --ha stopped when one instance of each service died"
# Envoy's health checks (every 2 s, two misses) take the dead ones out; until
# then a refused connection is retried on the other instance.
sleep 5
walk rest
python3 "$repo/scripts/lib/check_outputs.py" "$work/rest.out" \
  'docs[-4]["balance"] == {"currencyCode": "USD", "amount": "4.50"}' \
  '[t["kind"] for t in docs[-3]["transactions"]] == ["TRANSACTION_KIND_DEPOSIT"] * 2' ||
  fail "REST walk-through output on the survivors"
echo "ok: one instance of each service killed; the REST walk-through succeeded through the edge on the others"

kill -INT -- "-$run_pid"
for _ in $(seq 1 600); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$run_pid" 2>/dev/null && fail "scripts/run --ha still running 60 s after Ctrl-C"
status=0; wait "$run_pid" || status=$?
[ "$status" = 0 ] || fail "scripts/run --ha exited with $status after Ctrl-C"
left=$(pgrep -f "$clone" || true)
[ -z "$left" ] || fail "processes outlived Ctrl-C: $(ps -o pid,cmd -p "${left//$'\n'/,}")"
for p in "${ports[@]}"; do port_open "$p" && fail "port $p still in use after Ctrl-C"; done
echo "ok: Ctrl-C stopped the services, Envoy and every HA engine"
