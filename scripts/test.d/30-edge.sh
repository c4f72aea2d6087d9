#!/usr/bin/env bash
# End-to-end through the real Envoy in front of the real services (the
# binaries, on their default ports): JWT at the edge, a token reaching a
# service, Login rate limiting, JSON transcoding, gRPC-Web, and an upstream
# killed and restarted.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
stack_env

cargo build -q --bins
cargo run -q -p bank-proto --bin write-descriptor-set -- envoy/bank.pb >/dev/null
logs="$STATE/logs/edge-test"
mkdir -p "$logs"
export BOOTSTRAP_ADMIN_EMAIL=edge-admin@bank.test BOOTSTRAP_ADMIN_PASSWORD="edge admin password"
export AUTH_DATABASE_URL="${DATABASE_ADMIN_URL%/*}/edge_auth_$$" COMMAND_DATABASE_URL="${DATABASE_ADMIN_URL%/*}/edge_command_$$"
export READ_DATABASE_URL="${DATABASE_ADMIN_URL%/*}/edge_read_$$" NATS_STREAM="EDGE_$$" NATS_SUBJECT_PREFIX="edge$$.events"
export REDIS_PREFIX="edge$$:" AUTH_REDIS_PREFIX="edge$$:auth:" PROJECTOR_DURABLE="edge$$"

pids=()
declare -A pid_of
start() { # start <name> <command...>
  local name=$1; shift
  "$@" >>"$logs/$name.log" 2>&1 &
  pid_of[$name]=$!
  pids+=($!)
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in edge_auth_$$ edge_command_$$ edge_read_$$; do
    psql -q "$DATABASE_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
wait_port() { wait_for "$1" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$2"; }
fail() { echo "EDGE TEST FAILED: $*" >&2; tail -n 20 "$logs"/*.log >&2; exit 1; }

start auth target/debug/auth-service
wait_port auth-service 50051
start command target/debug/command-service
start projector target/debug/projector
start query target/debug/query-service
wait_port command-service 50052
wait_port query-service 50053
start envoy envoy -c envoy/envoy.yaml --log-level warn
wait_port envoy 8080
edge=localhost:8080
# Wait until Envoy's health checks see the upstreams.
for _ in $(seq 1 100); do
  grpcurl -plaintext $edge grpc.health.v1.Health/Check >/dev/null 2>&1 && break
  sleep 0.1
done

expect() { # expect <needle> <command...>: the command's output contains needle
  local needle=$1; shift
  local out; out=$("$@" 2>&1 || true)
  grep -q -- "$needle" <<<"$out" || fail "expected '$needle' from: $* -> $out"
}

# 0. Every service answers grpcurl (v1alpha reflection) and health without proto files.
for port in 50051 50052 50053; do
  expect "grpc.health.v1.Health" grpcurl -plaintext localhost:$port list
  expect "bank.v1.AccountCommandService" grpcurl -plaintext localhost:$port list
  expect "SERVING" grpcurl -plaintext localhost:$port grpc.health.v1.Health/Check
done
echo "ok: grpcurl list and health on every service"

# 1. No token: refused at the edge (Envoy's jwt_authn, before any service).
expect "Unauthenticated" grpcurl -plaintext -d '{}' $edge bank.v1.AuthService/WhoAmI
expect "Jwt is missing" grpcurl -plaintext -d '{}' $edge bank.v1.AuthService/WhoAmI
echo "ok: no token -> UNAUTHENTICATED at the edge"

# 2. A valid token reaches the service.
grpcurl -plaintext -d '{"email":"edge@example.com","password":"correct horse battery","full_name":"Edge"}' \
  $edge bank.v1.AuthService/Register >/dev/null || fail "register through the edge"
token=$(grpcurl -plaintext -d '{"email":"edge@example.com","password":"correct horse battery"}' \
  $edge bank.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
expect "edge@example.com" grpcurl -plaintext -H "authorization: Bearer $token" -d '{}' $edge bank.v1.AuthService/WhoAmI
echo "ok: a valid token reaches auth-service"

# 3. JSON over HTTP through the transcoder.
code=$(curl -s -o "$logs/json.out" -w '%{http_code}' -X POST -H 'content-type: application/json' \
  -H "authorization: Bearer $token" -d '{}' http://$edge/bank.v1.AuthService/WhoAmI)
[ "$code" = 200 ] && grep -q '"email":"edge@example.com"' "$logs/json.out" || fail "JSON transcoding: $code $(cat "$logs/json.out")"
echo "ok: JSON POST reaches a gRPC method"

# 4. gRPC-Web: a framed binary WhoAmIRequest (empty message).
printf '\x00\x00\x00\x00\x00' >"$logs/grpcweb.in"
curl -s -D "$logs/grpcweb.headers" -o "$logs/grpcweb.out" -X POST -H 'content-type: application/grpc-web+proto' \
  -H 'x-grpc-web: 1' -H "authorization: Bearer $token" --data-binary @"$logs/grpcweb.in" \
  http://$edge/bank.v1.AuthService/WhoAmI
grep -qi 'content-type: application/grpc-web' "$logs/grpcweb.headers" && grep -aq 'edge@example.com' "$logs/grpcweb.out" \
  && grep -aq 'grpc-status:0' "$logs/grpcweb.out" || fail "gRPC-Web"
echo "ok: gRPC-Web request answered"

# 5. A killed upstream is UNAVAILABLE, then recovers.
kill "${pid_of[command]}"; wait "${pid_of[command]}" 2>/dev/null || true
open='{"type":"ACCOUNT_TYPE_CHECKING","currency_code":"USD","idempotency_key":"edge-1"}'
expect "Unavailable" grpcurl -plaintext -H "authorization: Bearer $token" -d "$open" $edge bank.v1.AccountCommandService/OpenAccount
start command target/debug/command-service
recovered=0
for _ in $(seq 1 100); do
  out=$(grpcurl -plaintext -H "authorization: Bearer $token" -d "$open" $edge bank.v1.AccountCommandService/OpenAccount 2>&1 || true)
  # The customer is not KYC-approved: the service's own answer proves it is reachable again.
  if grep -q "CUSTOMER_NOT_ACTIVE\|FailedPrecondition" <<<"$out"; then recovered=1; break; fi
  sleep 0.2
done
[ "$recovered" = 1 ] || fail "command-service did not recover behind Envoy: $out"
echo "ok: killed upstream -> UNAVAILABLE, then recovered"

# 6. A customer's whole journey through the edge, with the real auth-service:
#    approved by the bootstrap admin, logs in again (the token now says ACTIVE),
#    opens two accounts, deposits, transfers, and reads the result back through
#    query-service with the transfer's consistency token: the first read shows it.
field() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d[k]
print(d)' "$1"; }
call() { # call <token> <json> <method>
  grpcurl -plaintext -H "authorization: Bearer $1" -d "$2" $edge "$3"
}
uid=$(call "$token" '{}' bank.v1.AuthService/WhoAmI | field userId)
admin=$(grpcurl -plaintext -d "{\"email\":\"$BOOTSTRAP_ADMIN_EMAIL\",\"password\":\"$BOOTSTRAP_ADMIN_PASSWORD\"}" \
  $edge bank.v1.AuthService/Login | field accessToken)
expect "USER_STATUS_ACTIVE" call "$admin" "{\"user_id\":\"$uid\"}" bank.v1.AuthService/ApproveCustomer
token=$(grpcurl -plaintext -d '{"email":"edge@example.com","password":"correct horse battery"}' \
  $edge bank.v1.AuthService/Login | field accessToken)
acct() { call "$token" "{\"type\":\"ACCOUNT_TYPE_CHECKING\",\"currency_code\":\"USD\",\"idempotency_key\":\"$1\"}" \
  bank.v1.AccountCommandService/OpenAccount | field account.accountId; }
a=$(acct journey-open-a) && b=$(acct journey-open-b) || fail "open accounts"
call "$token" "{\"account_id\":\"$a\",\"money\":{\"currency_code\":\"USD\",\"amount\":\"100.00\"},\"idempotency_key\":\"journey-dep\"}" \
  bank.v1.AccountCommandService/Deposit >/dev/null || fail "deposit"
ct=$(call "$token" "{\"from_account_id\":\"$a\",\"to_account_id\":\"$b\",\"money\":{\"currency_code\":\"USD\",\"amount\":\"30.25\"},\"idempotency_key\":\"journey-tx\"}" \
  bank.v1.AccountCommandService/Transfer | field consistencyToken) || fail "transfer"
got=$(call "$token" "{\"account_id\":\"$a\",\"min_consistency_token\":\"$ct\"}" bank.v1.AccountQueryService/GetBalance | field balance.amount)
[ "$got" = "69.75" ] || fail "balance after the transfer: $got"
n=$(call "$token" "{\"account_id\":\"$a\",\"min_consistency_token\":\"$ct\",\"page_size\":10}" \
  bank.v1.AccountQueryService/ListTransactions | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["transactions"]))')
[ "$n" = 2 ] || fail "history after the transfer: $n entries"
echo "ok: register, approve, login, open, deposit, transfer, read back through the edge"

# 7. Login is rate limited at the edge (10 per minute).
limited=0
for _ in $(seq 1 15); do
  out=$(grpcurl -plaintext -d '{"email":"edge@example.com","password":"correct horse battery"}' $edge bank.v1.AuthService/Login 2>&1 || true)
  if grep -q "ResourceExhausted" <<<"$out"; then limited=1; break; fi
done
[ "$limited" = 1 ] || fail "Login was not rate limited"
echo "ok: Login rate-limited at the edge"
echo "edge: 8 passed, 0 failed"
