#!/usr/bin/env bash
# The README's walk-through, as a newcomer runs it: a fresh clone of this
# repository, `scripts/run` started from it in a clean environment on ports
# chosen free for the run (its own Postgres, NATS, Redis, services and Envoy;
# the build is shared through CARGO_TARGET_DIR), the README's two walk-through
# blocks executed exactly as written through the edge (gRPC, then REST), then
# Ctrl-C as a terminal sends it (SIGINT to the process group): every process it
# started must be gone and every port free. Then the two ways it must fail
# clearly: a port in use (one line naming the port and its variable) and a
# service that dies (named, with its last log lines, and everything stopped).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
repo=$PWD
work=$(mktemp -d /tmp/bankmesh-walkthrough.XXXXXX)
clone=$work/clone
git clone -q "$repo" "$clone"
target="${CARGO_TARGET_DIR:-$repo/target}"

port_vars=(PGPORT NATS_PORT NATS_MONITOR_PORT REDIS_PORT AUTH_GRPC_PORT AUTH_HTTP_PORT COMMAND_GRPC_PORT
  COMMAND_HTTP_PORT QUERY_GRPC_PORT QUERY_HTTP_PORT PROJECTOR_HTTP_PORT EDGE_PORT ENVOY_ADMIN_PORT)
read -r -a ports <<<"$(free_ports ${#port_vars[@]})"
port_env=()
for i in "${!port_vars[@]}"; do port_env+=("${port_vars[$i]}=${ports[$i]}"); done
EDGE_PORT=${ports[11]}

fail() { echo "WALKTHROUGH TEST FAILED: $*" >&2; tail -n 30 "$work/run.log" >&2 2>/dev/null || true; exit 1; }

run_pid=""
# scripts/run in a clean environment, as a user's shell would start it. Job
# control gives it a process group of its own, with SIGINT not ignored (a
# background job of a script would otherwise inherit SIGINT ignored).
start_run() {
  set -m
  env -i HOME="$HOME" PATH="$PATH" TERM=dumb CARGO_TARGET_DIR="$target" "${port_env[@]}" \
    bash "$clone/scripts/run" >"$work/run.log" 2>&1 &
  run_pid=$!
  set +m
  for _ in $(seq 1 1200); do
    grep -q "running: edge" "$work/run.log" && return 0
    kill -0 "$run_pid" 2>/dev/null || fail "scripts/run exited before the mesh was up"
    sleep 0.5
  done
  fail "scripts/run did not bring the mesh up within 10 minutes"
}
cleanup() {
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    kill -TERM "$run_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  env "${port_env[@]}" bash "$clone/scripts/stack" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Every process scripts/run started: its descendants, plus the servers that
# detach (Redis daemonizes; the postmaster is pg_ctl's child).
started_pids() {
  python3 - "$run_pid" <<'PY'
import os, sys
root = int(sys.argv[1])
parent = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            with open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            pass
def under(pid):
    while pid > 1:
        if pid == root:
            return True
        pid = parent.get(pid, 0)
    return False
print(" ".join(str(p) for p in parent if p != root and under(p)))
PY
  [ -s "$clone/.state/run/redis.pid" ] && cat "$clone/.state/run/redis.pid"
  [ -s "$clone/.state/pg/postmaster.pid" ] && head -1 "$clone/.state/pg/postmaster.pid"
}

# The README's block after <!-- walkthrough:NAME -->, as written.
block() {
  python3 - "$clone/README.md" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"<!-- walkthrough:%s -->\s*```sh\n(.*?)```" % re.escape(sys.argv[2]), text, re.S)
if not m:
    sys.exit(f"README.md has no walkthrough:{sys.argv[2]} block")
print(m.group(1))
PY
}

# Checks on the JSON documents a block printed, in order (the last few).
check_outputs() { # check_outputs <output file> <python expressions over docs[-n]...>
  python3 "$repo/scripts/lib/check_outputs.py" "$@"
}

# 1. Up from a fresh clone, and the README's commands work as written.
start_run
echo "ok: scripts/run brought the mesh up from a fresh clone"
for name in grpc rest holds; do
  block "$name" >"$work/$name.sh"
  (cd "$clone" && EDGE="127.0.0.1:$EDGE_PORT" bash -euo pipefail "$work/$name.sh") >"$work/$name.out" 2>&1 \
    || { cat "$work/$name.out"; fail "the README's $name walk-through failed"; }
done
check_outputs "$work/grpc.out" \
  'docs[-4]["balance"] == {"currencyCode": "USD", "amount": "74.50"}' \
  'len(docs[-3]["transactions"]) == 2' \
  'docs[-3]["transactions"][0]["kind"] == "TRANSACTION_KIND_TRANSFER_OUT"' \
  'sorted((d["type"], d["balance"]["amount"]) for d in docs[-2:]) == [("ACCOUNT_TYPE_FEE_INCOME", "0.00"), ("ACCOUNT_TYPE_SETTLEMENT", "-100.00")]' ||
  fail "gRPC walk-through output"
check_outputs "$work/rest.out" \
  'docs[-4]["balance"] == {"currency_code": "USD", "amount": "4.50"}' \
  '[t["kind"] for t in docs[-3]["transactions"]] == ["TRANSACTION_KIND_DEPOSIT"] * 2' \
  'docs[-2]["code"] == 7' \
  'docs[-1]["code"] == 3 and docs[-1]["details"][0]["field_violations"][0]["field"] == "money.amout"' ||
  fail "REST walk-through output"
check_outputs "$work/holds.out" \
  'docs[0]["balance"]["amount"] == "80.00" and docs[0]["availableBalance"]["amount"] == "50.00"' \
  'len(docs[0]["openHolds"]) == 1 and docs[0]["openHolds"][0]["state"] == "HOLD_STATE_OPEN"' \
  'docs[1]["balance"]["amount"] == "60.00" and docs[1]["availableBalance"]["amount"] == "60.00"' \
  '"openHolds" not in docs[1]' \
  'docs[2]["transactions"][0]["reversesTransactionId"] == docs[2]["transactions"][1]["transactionId"]' \
  'docs[2]["transactions"][1]["reversedByTransactionId"] == docs[2]["transactions"][0]["transactionId"]' \
  'docs[2]["transactions"][0]["balanceAfter"]["amount"] == "80.00"' ||
  fail "holds walk-through output"
echo "ok: the README's gRPC, REST and holds walk-throughs, as written, through the edge"

# 2. Ctrl-C stops everything it started and frees every port.
pids=$(started_pids | tr '\n' ' ')
[ -n "$pids" ] || fail "found no processes under scripts/run"
kill -INT -- "-$run_pid"
status=0
for _ in $(seq 1 600); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$run_pid" 2>/dev/null && fail "scripts/run still running 60 s after Ctrl-C"
wait "$run_pid" || status=$?
[ "$status" = 0 ] || fail "scripts/run exited with $status after Ctrl-C"
# A zombie (state Z) has exited; only its reaping by init is left.
alive() { [ -e "/proc/$1/stat" ] && [ "$(cut -d')' -f2 "/proc/$1/stat" | cut -d' ' -f2)" != Z ]; }
for pid in $pids; do
  if alive "$pid"; then fail "process $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline)) outlived Ctrl-C"; fi
done
for port in "${ports[@]}"; do port_open "$port" && fail "port $port still in use after Ctrl-C"; done
echo "ok: Ctrl-C stopped all $(wc -w <<<"$pids") processes it started and freed all ${#ports[@]} ports"

# 3. A port in use: one clear line naming the port and the variable that moves it.
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(120)' "$EDGE_PORT" &
squatter=$!
for _ in $(seq 1 50); do port_open "$EDGE_PORT" && break; sleep 0.1; done
status=0
env -i HOME="$HOME" PATH="$PATH" CARGO_TARGET_DIR="$target" "${port_env[@]}" timeout 60 bash "$clone/scripts/run" \
  >"$work/busy.log" 2>&1 || status=$?
kill "$squatter"
[ "$status" = 1 ] || fail "scripts/run with a port in use exited with $status"
[ "$(wc -l <"$work/busy.log")" = 1 ] && grep -qx "scripts/run: port $EDGE_PORT is already in use (set EDGE_PORT to move it)" \
  "$work/busy.log" || fail "port-in-use message: $(cat "$work/busy.log")"
echo "ok: a port in use is one line naming it and EDGE_PORT"

# 4. A service that dies is named with its last log lines, and the rest stop.
wait "$squatter" 2>/dev/null || true
start_run
query_pid=$(pgrep -P "$run_pid" -f -- "query-service$" | head -1 || true)
[ -n "$query_pid" ] || fail "query-service not found under scripts/run"
kill -9 "$query_pid"
status=0
for _ in $(seq 1 300); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
wait "$run_pid" || status=$?
[ "$status" = 1 ] || fail "scripts/run exited with $status after query-service died"
grep -q "scripts/run: query-service exited (status 137); its last log lines" "$work/run.log" \
  && grep -q "  | .*query-service listening" "$work/run.log" || fail "crash report: $(tail -n 25 "$work/run.log")"
for port in "${ports[@]}"; do port_open "$port" && fail "port $port still in use after the crash stop"; done
echo "ok: a crashed service is named with its last log lines, and everything stops"
