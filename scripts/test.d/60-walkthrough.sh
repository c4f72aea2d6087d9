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
#
# And three attacks by an unprivileged local user (made for the run with
# useradd, removed after), against that first run:
# - reading every process's command line every ~2 ms from before scripts/run
#   starts (stack start, provisioning, migrations, services) through the
#   walk-through to the end of Ctrl-C: no secret of .state/secrets may appear
#   in any (and the watcher must have seen psql, postgres, the migrations,
#   every service and Envoy, so it cannot pass by seeing nothing);
# - (as root, what a compromised service could read of itself) each
#   service's environment holds its own secrets and no other's; Envoy's none;
# - Envoy's admin interface: no TCP port, and its unix socket refuses that
#   user's POST /quitquitquit; Envoy stays up.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
repo=$PWD
work=$(mktemp -d /tmp/bankmesh-walkthrough.XXXXXX)
clone=$work/clone
git clone -q "$repo" "$clone"
target="${CARGO_TARGET_DIR:-$repo/target}"

port_vars=(PGPORT NATS_PORT NATS_MONITOR_PORT REDIS_PORT SMTP_PORT AUTH_GRPC_PORT AUTH_HTTP_PORT COMMAND_GRPC_PORT
  COMMAND_HTTP_PORT QUERY_GRPC_PORT QUERY_HTTP_PORT PROJECTOR_HTTP_PORT NOTIFY_GRPC_PORT NOTIFY_HTTP_PORT EDGE_PORT)
read -r -a ports <<<"$(free_ports ${#port_vars[@]})"
port_env=()
for i in "${!port_vars[@]}"; do port_env+=("${port_vars[$i]}=${ports[$i]}"); done
EDGE_PORT=${ports[14]}

fail() { echo "WALKTHROUGH TEST FAILED: $*" >&2; tail -n 30 "$work/run.log" >&2 2>/dev/null || true; exit 1; }

run_pid=""
# scripts/run in a clean environment, as a user's shell would start it. Job
# control gives it a process group of its own, with SIGINT not ignored (a
# background job of a script would otherwise inherit SIGINT ignored).
start_run() {
  set -m
  as_from_a_terminal env -i HOME="$HOME" PATH="$PATH" TERM=dumb CARGO_TARGET_DIR="$target" "${port_env[@]}" \
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
snoop_user="bmsnoop$$" snoop_pids=()
stop_watcher() {
  local p
  for p in "${snoop_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${snoop_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  snoop_pids=()
}
cleanup() {
  stop_watcher
  if id "$snoop_user" >/dev/null 2>&1; then userdel "$snoop_user" 2>/dev/null || true; fi
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

# 0. An unprivileged local user watching every command line from now on.
useradd --system --no-create-home --shell /usr/sbin/nologin "$snoop_user"
: >"$work/cmdlines.jsonl"
runuser -u "$snoop_user" -- python3 -c '
import json, os, sys, time
seen = set()
print(json.dumps("watcher ready"), flush=True)
while True:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fd = os.open(f"/proc/{d}/cmdline", os.O_RDONLY)
                try:
                    c = os.read(fd, 65536)
                finally:
                    os.close(fd)
            except OSError:
                continue
            if c and c not in seen:
                seen.add(c)
                sys.stdout.write(json.dumps(c.decode("utf-8", "replace").replace("\0", " ")) + "\n")
                sys.stdout.flush()
    time.sleep(0.002)
' >>"$work/cmdlines.jsonl" 2>"$work/watcher.err" &
snoop_pids+=($!)
for _ in $(seq 1 100); do grep -q "watcher ready" "$work/cmdlines.jsonl" && break; sleep 0.05; done
grep -q "watcher ready" "$work/cmdlines.jsonl" || fail "the command-line watcher did not start"
snoop_child=$(pgrep -P "${snoop_pids[0]}" | head -1 || true)
[ -z "$snoop_child" ] || snoop_pids+=("$snoop_child")
# A short-lived process it must catch: the proof that it is quick enough.
bash -c 'sleep 0.05; true' "bankmesh-canary-$$"

# 1. Up from a fresh clone, and the README's commands work as written.
start_run
echo "ok: scripts/run brought the mesh up from a fresh clone"
for name in grpc rest holds statement scheduled notifications; do
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
  'docs[-4]["balance"] == {"currencyCode": "USD", "amount": "4.50"}' \
  '[t["kind"] for t in docs[-3]["transactions"]] == ["TRANSACTION_KIND_DEPOSIT"] * 2' \
  'docs[-2]["code"] == 7' \
  'docs[-1]["code"] == 3 and docs[-1]["details"][0]["fieldViolations"][0]["field"] == "money.amout"' ||
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
grep -q '^VERIFIED: account .* closing 80.00;' "$work/statement.out" &&
  grep -q '^NOT VERIFIED: .*closingBalance "180.00"' "$work/statement.out" &&
  grep -q '^exit 1$' "$work/statement.out" || { cat "$work/statement.out"; fail "statement walk-through output"; }
check_outputs "$work/scheduled.out" \
  'docs[0]["state"] == "SCHEDULE_STATE_COMPLETED"' \
  '[(o["attempt"], o["outcome"]) for o in docs[0]["recentOccurrences"]] == [(1, "OCCURRENCE_OUTCOME_SUCCEEDED")]' \
  'docs[1]["state"] == "SCHEDULE_STATE_ACTIVE" and docs[1]["dayOfMonth"] == 31 and docs[1]["timeZone"] == "Europe/Berlin"' \
  'docs[2]["state"] == "SCHEDULE_STATE_CANCELLED"' ||
  fail "scheduled walk-through output"
check_outputs "$work/notifications.out" \
  'docs[0]["direction"] == "ALERT_DIRECTION_BELOW" and docs[0]["threshold"]["amount"] == "60.00"' \
  'len(docs) == 7 and all(d["verified"] for d in docs[1:4])' \
  'sorted(d["type"] for d in docs[1:4]) == ["notification.balance_alert", "notification.transaction", "notification.transaction"]' \
  'sorted(n["title"] for n in docs[4]) == ["Balance below 60.00 USD", "Transfer received", "Transfer sent"]' \
  'docs[5] == ["Subject: bankmesh: Balance below 60.00 USD", "Subject: bankmesh: Transfer received", "Subject: bankmesh: Transfer sent"]' \
  'docs[6] == ["Identity verified"]' ||
  fail "notifications walk-through output"
echo "ok: the README's gRPC, REST, holds, statement, scheduled-transfer and notification walk-throughs, as written, through the edge"

# 1b. Each service's environment: its own secrets, and no other's.
python3 - "$run_pid" "$clone/.state/secrets" <<'PY' || fail "a process's environment (above)"
import os, sys
run, secrets_dir = int(sys.argv[1]), sys.argv[2]
secrets = {n: open(os.path.join(secrets_dir, n)).read().strip() for n in os.listdir(secrets_dir)}
assert len(secrets) >= 17 and all(secrets.values()), sorted(secrets)
own = {
    "auth-service": {"pg_bank_auth", "nats_auth", "redis_auth"},
    "command-service": {"pg_bank_command", "nats_command", "redis_command"},
    "projector": {"pg_bank_projector", "nats_projector", "redis_projector", "read_cache_key"},
    "query-service": {"pg_bank_query", "nats_query", "redis_query", "page_token", "read_cache_key"},
    "notification-service": {"pg_bank_notify", "nats_notify", "notify_client"},
    "envoy": set(),
}
# Key files (paths) and the bootstrap password: only their own service's.
own_vars = {"auth-service": {"BOOTSTRAP_ADMIN_PASSWORD", "TOTP_SECRETS_KEY", "SERVICE_CLIENTS_FILE"}, "command-service": {"EVENT_SIGNING_KEY"},
            "projector": {"EVENT_VERIFYING_KEYS", "READ_CACHE_KEY"},
            "query-service": {"PAGE_TOKEN_SECRET", "READ_CACHE_KEY", "STATEMENT_SIGNING_KEY"},
            "notification-service": {"EVENT_VERIFYING_KEYS", "SMTP_URL", "WEBHOOK_SECRETS_KEY", "SERVICE_CLIENT_SECRET"},
            "envoy": set()}
key_vars = set().union(*own_vars.values()) | {"JWT_SIGNING_KEYS", "SERVICE_CLIENTS"}
found, bad = {}, []
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
        argv0 = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")[0].decode()
        environ = open(f"/proc/{d}/environ", "rb").read().decode("utf-8", "replace").split("\0")
    except OSError:
        continue
    name = os.path.basename(argv0)
    if ppid != run or name not in own:
        continue
    found[name] = d
    env = dict(kv.split("=", 1) for kv in environ if "=" in kv)
    text = "\0".join(environ)
    held = {n for n, v in secrets.items() if v in text}
    for n in sorted(held - own[name]):
        bad.append(f"{name} (pid {d}) holds {n}, not its own")
    for n in sorted(own[name] - held):
        bad.append(f"{name} (pid {d}) lacks its own {n}")
    for v in sorted(key_vars & set(env)):
        if v not in own_vars[name]:
            bad.append(f"{name} (pid {d}) holds {v}, not its own")
    for v in sorted(own_vars[name] - set(env)):
        bad.append(f"{name} (pid {d}) lacks its own {v}")
    for v in env:
        if v.endswith("_ADMIN_URL") or v.endswith("_MIGRATE_DATABASE_URL") or v.endswith("_PASSWORD") and v != "BOOTSTRAP_ADMIN_PASSWORD":
            bad.append(f"{name} (pid {d}) holds {v}")
missing = set(own) - set(found)
if missing:
    bad.append(f"not found under scripts/run: {sorted(missing)}")
if bad:
    print("\n".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
PY
echo "ok: each service's environment holds its own credentials and keys and no other's; Envoy's holds none"

# 1c. Envoy's admin interface: no TCP port; its socket (owner-only) refuses
#     the unprivileged user, and Envoy stays up.
admin_sock="$clone/.state/run/envoy-admin.sock"
envoy_pid=$(pgrep -P "$run_pid" -x envoy || true)
[ -n "$envoy_pid" ] || fail "Envoy not found under scripts/run"
envoy_tcp=$(ss -ltnpH | grep "pid=$envoy_pid," | awk '{print $4}' | sed 's/.*://' | sort -u | tr '\n' ' ')
[ "$envoy_tcp" = "$EDGE_PORT " ] || fail "Envoy listens on TCP ports '$envoy_tcp', want only the edge ($EDGE_PORT)"
[ "$(stat -c %a "$admin_sock")" = 600 ] || fail "admin socket mode $(stat -c %a "$admin_sock")"
runuser -u "$snoop_user" -- test -S "$admin_sock" || fail "the unprivileged user cannot even see the admin socket (test not meaningful)"
status=0
runuser -u "$snoop_user" -- curl -s -m 5 -X POST --unix-socket "$admin_sock" http://admin/quitquitquit >"$work/quit.out" 2>&1 || status=$?
[ "$status" = 7 ] || fail "an unprivileged POST /quitquitquit on the admin socket: curl status $status, $(cat "$work/quit.out")"
sleep 0.5
kill -0 "$envoy_pid" 2>/dev/null && port_open "$EDGE_PORT" || fail "Envoy is gone after the unprivileged /quitquitquit"
[ "$(curl -s -m 5 --unix-socket "$admin_sock" http://admin/ready)" = LIVE ] || fail "the admin socket does not answer its owner"
echo "ok: Envoy's admin has no TCP port; its socket refused an unprivileged POST /quitquitquit (Envoy still up)"

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

# 2b. What the watcher saw from start to stop: no secret on any command line.
stop_watcher
python3 - "$work/cmdlines.jsonl" "$clone/.state/secrets" "$target" "bankmesh-canary-$$" <<'PY' || fail "command lines (above)"
import json, os, re, sys
path, secrets_dir, target, canary = sys.argv[1:]
lines = [json.loads(l) for l in open(path) if l.strip()]
secrets = {n: open(os.path.join(secrets_dir, n)).read().strip() for n in os.listdir(secrets_dir)}
def redact(c):
    for n, v in secrets.items():
        c = c.replace(v, f"<{n}>")
    return c[:300]
bad = [f"{n} on a command line: {redact(c)}" for c in lines for n, v in secrets.items() if v in c]
def saw(what, test):
    if not any(test(c) for c in lines):
        bad.append(f"the watcher never saw {what} ({len(lines)} command lines seen): not a meaningful test")
saw("the canary", lambda c: canary in c)
saw("psql (provisioning)", lambda c: c.split(" ")[0].endswith("psql"))
saw("the postgres server", lambda c: "postgres" in c.split(" ")[0] and " -D " in c)
for svc in ("auth-service", "command-service", "projector", "notification-service"):
    saw(f"{svc} migrate", lambda c, s=svc: c.startswith(f"{target}/debug/{s} migrate"))
for svc in ("auth-service", "command-service", "projector", "query-service", "notification-service"):
    saw(svc, lambda c, s=svc: c.strip() == f"{target}/debug/{s}")
saw("envoy", lambda c: re.search(r"(^|/)envoy -c ", c))
if bad:
    print("\n".join(bad), file=sys.stderr)
print(f"{len(lines)} distinct command lines seen, {len(secrets)} secrets looked for")
sys.exit(1 if bad else 0)
PY
echo "ok: an unprivileged user reading every command line from start to stop saw no secret"

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
