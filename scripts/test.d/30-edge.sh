#!/usr/bin/env bash
# End-to-end through the real Envoy in front of the real services (the
# binaries, on free ports below the ephemeral range, with the Envoy config
# rendered for them from the template): reflection per service, JWT at the
# edge, a token reaching a service, REST (resource paths, errors as HTTP codes
# with google.rpc.Status bodies, bad input), the OpenAPI document against the
# running edge, gRPC-Web, Login rate limiting per client address, and an upstream killed and
# restarted. Each service starts with its own environment only
# (service_exec), no secret on any command line; Envoy's admin interface is
# a unix socket (its /stats read here with curl --unix-socket).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/stack.sh
bin="${CARGO_TARGET_DIR:-target}/debug"
stack_env

cargo build -q --bins
logs="$STATE/logs/edge-test-$$"
mkdir -p "$logs"
read -r AUTH_GRPC_PORT AUTH_HTTP_PORT COMMAND_GRPC_PORT COMMAND_HTTP_PORT QUERY_GRPC_PORT QUERY_HTTP_PORT \
  PROJECTOR_HTTP_PORT NOTIFY_GRPC_PORT NOTIFY_HTTP_PORT EDGE_PORT <<<"$(free_ports 10)"
export AUTH_GRPC_PORT AUTH_HTTP_PORT COMMAND_GRPC_PORT QUERY_GRPC_PORT NOTIFY_GRPC_PORT EDGE_PORT
ENVOY_ADMIN_SOCKET="$logs/envoy-admin.sock"
services_env
DESCRIPTOR="$logs/bank.pb"
edge_config "$bin"/write-descriptor-set "$DESCRIPTOR" "$logs/envoy.yaml"
export BOOTSTRAP_ADMIN_EMAIL=edge-admin@bank.test BOOTSTRAP_ADMIN_PASSWORD="edge admin password"
AUTH_DB="edge_auth_$$" COMMAND_DB="edge_command_$$" READ_DB="edge_read_$$" NOTIFY_DB="edge_notify_$$"
export NATS_STREAM="EDGE_$$" NATS_SUBJECT_PREFIX="edge$$.events" \
  USERS_STREAM="EDGE_USERS_$$" USERS_SUBJECT_PREFIX="edge$$.users"
export REDIS_PREFIX="bank:rm:edge$$:" AUTH_REDIS_PREFIX="bank:auth:edge$$:" PROJECTOR_DURABLE="edge$$"

pids=()
declare -A pid_of
start() { # start <name> <command...> (service_exec <service> <binary> for a service)
  local name=$1; shift
  "$@" >>"$logs/$name.log" 2>&1 &
  pid_of[$name]=$!
  pids+=($!)
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in edge_auth_$$ edge_command_$$ edge_read_$$ edge_notify_$$; do
    psql_admin -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
create_databases
run_migrations "$bin" >>"$logs/migrate.log" 2>&1 || { cat "$logs/migrate.log" >&2; exit 1; }
provision_streams "$bin" >>"$logs/migrate.log" 2>&1 || { cat "$logs/migrate.log" >&2; exit 1; }
wait_port() { wait_for "$1" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$2"; }
fail() { echo "EDGE TEST FAILED: $*" >&2; tail -n 20 "$logs"/*.log >&2; exit 1; }

start auth service_exec auth-service "$bin"/auth-service
wait_port auth-service "$AUTH_GRPC_PORT"
start command service_exec command-service "$bin"/command-service
start projector service_exec projector "$bin"/projector
start query service_exec query-service "$bin"/query-service
start notify service_exec notification-service "$bin"/notification-service
wait_port command-service "$COMMAND_GRPC_PORT"
wait_port query-service "$QUERY_GRPC_PORT"
wait_port notification-service "$NOTIFY_GRPC_PORT"
start envoy exec_clean -- envoy -c "$logs/envoy.yaml" --log-level warn --disable-hot-restart
wait_port envoy "$EDGE_PORT"
edge=localhost:$EDGE_PORT
# Wait until Envoy's health checks see the upstreams.
for _ in $(seq 1 100); do
  grpcurl -plaintext -protoset "$DESCRIPTOR" $edge grpc.health.v1.Health/Check >/dev/null 2>&1 && break
  sleep 0.1
done

expect() { # expect <needle> <command...>: the command's output contains needle
  local needle=$1; shift
  local out; out=$("$@" 2>&1 || true)
  grep -q -- "$needle" <<<"$out" || fail "expected '$needle' from: $* -> $out"
}

# 0. Every service answers grpcurl (v1alpha reflection) and health without
#    proto files, and advertises exactly what it serves; over mutual TLS
#    only (an operator's certificate from the mesh's CA).
tls="$STATE/tls"
operator=(-cacert "$tls/ca.pem" -cert "$tls/operator.pem" -key "$tls/operator.key")
for served in "$AUTH_GRPC_PORT bank.v1.AuthService" "$COMMAND_GRPC_PORT bank.v1.AccountCommandService" \
  "$QUERY_GRPC_PORT bank.v1.AccountQueryService" "$NOTIFY_GRPC_PORT bank.v1.NotificationService"; do
  read -r port service <<<"$served"
  listed=$(grpcurl "${operator[@]}" localhost:$port list | sort | tr '\n' ' ')
  want=$(printf '%s\n' grpc.health.v1.Health grpc.reflection.v1.ServerReflection grpc.reflection.v1alpha.ServerReflection \
    "$service" | sort | tr '\n' ' ')
  [ "$listed" = "$want" ] || fail "reflection on :$port lists '$listed', want '$want'"
  expect "SERVING" grpcurl "${operator[@]}" localhost:$port grpc.health.v1.Health/Check
  # Plaintext inside is refused, and so is TLS without a client certificate.
  out=$(grpcurl -plaintext -max-time 3 localhost:$port grpc.health.v1.Health/Check 2>&1 || true)
  ! grep -q SERVING <<<"$out" || fail "plaintext gRPC reached :$port"
  out=$(grpcurl -cacert "$tls/ca.pem" -max-time 3 localhost:$port grpc.health.v1.Health/Check 2>&1 || true)
  ! grep -q SERVING <<<"$out" || fail "TLS without a client certificate reached :$port"
done
# The JWKS only over HTTPS, and only as the mesh's CA vouches for it.
curl -sf --cacert "$tls/ca.pem" "https://127.0.0.1:$AUTH_HTTP_PORT/.well-known/jwks.json" | grep -q '"kid"' ||
  fail "JWKS over HTTPS"
! curl -sf -m 3 "http://127.0.0.1:$AUTH_HTTP_PORT/.well-known/jwks.json" >/dev/null 2>&1 || fail "JWKS over plain HTTP"
echo "ok: grpcurl list (only the services served) and health on every service, over mutual TLS only; JWKS over HTTPS only"

# 1. No token: refused at the edge (Envoy's jwt_authn, before any service).
expect "Unauthenticated" grpcurl -plaintext -protoset "$DESCRIPTOR" -d '{}' $edge bank.v1.AuthService/WhoAmI
expect "Jwt is missing" grpcurl -plaintext -protoset "$DESCRIPTOR" -d '{}' $edge bank.v1.AuthService/WhoAmI
echo "ok: no token -> UNAUTHENTICATED at the edge"
# The public RPCs are exempt by exact path: a made-up path that merely starts
# like one (once a way to reach services unauthenticated and grow their
# metrics) is refused at the edge too.
# (Envoy answers gRPC callers in gRPC, "Jwt is missing"; a call that got
# through would be refused by auth-service itself, in other words.)
headers=$(curl -s -D - -o /dev/null --http2-prior-knowledge -X POST -H 'content-type: application/grpc' \
  --data-binary '' "http://$edge/bank.v1.AuthService/Register$RANDOM$RANDOM" | tr -d '\r')
grep -qx "grpc-status: 16" <<<"$headers" && grep -q "^grpc-message: Jwt is missing" <<<"$headers" ||
  fail "a made-up path under a public RPC's name was not refused by the edge: $headers"
echo "ok: only the exact public RPC paths pass the edge without a token"

# 2. A valid token reaches the service.
grpcurl -plaintext -d '{"email":"edge@example.com","password":"correct horse battery","full_name":"Edge"}' \
  $edge bank.v1.AuthService/Register >/dev/null || fail "register through the edge"
token=$(grpcurl -plaintext -d '{"email":"edge@example.com","password":"correct horse battery"}' \
  $edge bank.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
expect "edge@example.com" grpcurl -plaintext -protoset "$DESCRIPTOR" -H "authorization: Bearer $token" -d '{}' $edge bank.v1.AuthService/WhoAmI
echo "ok: a valid token reaches auth-service"

# 3. JSON over HTTP through the transcoder, on the method's REST path; JSON on
#    the gRPC method path is refused with the REST path to use.
code=$(curl -s -o "$logs/json.out" -w '%{http_code}' -H "authorization: Bearer $token" http://$edge/v1/users/me)
[ "$code" = 200 ] && grep -q '"email":"edge@example.com"' "$logs/json.out" || fail "JSON transcoding: $code $(cat "$logs/json.out")"
code=$(curl -s -o "$logs/json.out" -w '%{http_code}' -X POST -H 'content-type: application/json' \
  -H "authorization: Bearer $token" -d '{}' http://$edge/bank.v1.AuthService/WhoAmI)
[ "$code" = 400 ] && grep -q 'GET /v1/users/me' "$logs/json.out" || fail "JSON on a gRPC path: $code $(cat "$logs/json.out")"
echo "ok: REST GET reaches a gRPC method; JSON on a gRPC path names the REST path"

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
expect "Unavailable" grpcurl -plaintext -protoset "$DESCRIPTOR" -H "authorization: Bearer $token" -d "$open" $edge bank.v1.AccountCommandService/OpenAccount
start command service_exec command-service "$bin"/command-service
recovered=0
for _ in $(seq 1 100); do
  out=$(grpcurl -plaintext -protoset "$DESCRIPTOR" -H "authorization: Bearer $token" -d "$open" $edge bank.v1.AccountCommandService/OpenAccount 2>&1 || true)
  # The customer is not KYC-approved: the service's own answer proves it is reachable again.
  if grep -q "CUSTOMER_NOT_ACTIVE\|FailedPrecondition" <<<"$out"; then recovered=1; break; fi
  sleep 0.2
done
[ "$recovered" = 1 ] || fail "command-service did not recover behind Envoy: $out"
echo "ok: killed upstream -> UNAVAILABLE, then recovered"

# 6. A customer's whole journey through the edge, with the real auth-service:
#    approved by the bootstrap admin, logs in again (the token now says ACTIVE),
#    opens two accounts, a teller (the admin) deposits, she transfers, and reads the result back through
#    query-service with the transfer's consistency token: the first read shows it.
field() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d[k]
print(d)' "$1"; }
call() { # call <token> <json> <method>
  grpcurl -plaintext -protoset "$DESCRIPTOR" -H "authorization: Bearer $1" -d "$2" $edge "$3"
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
call "$admin" "{\"account_id\":\"$a\",\"money\":{\"currency_code\":\"USD\",\"amount\":\"100.00\"},\"idempotency_key\":\"journey-dep\"}" \
  bank.v1.AccountCommandService/Deposit >/dev/null || fail "deposit"
transfer=$(call "$token" "{\"from_account_id\":\"$a\",\"to_account_id\":\"$b\",\"money\":{\"currency_code\":\"USD\",\"amount\":\"30.25\"},\"idempotency_key\":\"journey-tx\"}" \
  bank.v1.AccountCommandService/Transfer) || fail "transfer"
ct=$(field consistencyToken <<<"$transfer") && tx=$(field transactionId <<<"$transfer")
got=$(call "$token" "{\"account_id\":\"$a\",\"min_consistency_token\":\"$ct\"}" bank.v1.AccountQueryService/GetBalance | field balance.amount)
[ "$got" = "69.75" ] || fail "balance after the transfer: $got"
n=$(call "$token" "{\"account_id\":\"$a\",\"min_consistency_token\":\"$ct\",\"page_size\":10}" \
  bank.v1.AccountQueryService/ListTransactions | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["transactions"]))')
[ "$n" = 2 ] || fail "history after the transfer: $n entries"
echo "ok: register, approve, login, open, deposit, transfer, read back through the edge"

# 8. REST: resource paths, query filters, the consistency token as a query
#    parameter; gRPC errors as HTTP codes with a google.rpc.Status JSON body;
#    bad input is a 400 naming the field, and changes nothing.
api=http://$edge
rest() { # rest <method> <path> [curl args...]: prints "<status> <body>"
  local method=$1 path=$2; shift 2
  curl -s -o "$logs/rest.out" -w '%{http_code}' -X "$method" -H "authorization: Bearer $token" "$@" "$api$path"
  printf ' %s' "$(cat "$logs/rest.out")"
}
expect_rest() { # expect_rest <status> <needle> <method> <path> [curl args...]
  local status=$1 needle=$2; shift 2
  local out; out=$(rest "$@")
  [[ "$out" == "$status "* ]] && grep -qF -- "$needle" <<<"$out" || fail "REST $1 $2: want $status with '$needle', got: $out"
}
expect_rest 200 '"amount":"69.75"' GET "/v1/accounts/$a/balance" -G --data-urlencode "min_consistency_token=$ct"
expect_rest 200 '"accountId":"'"$b"'"' GET "/v1/accounts/$b"
expect_rest 200 '"transactionId":"'"$tx"'"' GET "/v1/transactions/$tx"
[ "$(rest GET "/v1/accounts/$a/transactions?page_size=10&kinds=TRANSACTION_KIND_DEPOSIT" | grep -o '"kind":' | wc -l)" = 1 ] \
  || fail "REST kinds filter"
[ "$(rest GET "/v1/accounts/$a/transactions?page_size=10" | grep -o '"kind":' | wc -l)" = 2 ] || fail "REST history"
expect_rest 200 '"transactions":[]' GET "/v1/accounts/$a/transactions?from_time=2999-01-01T00:00:00Z"
expect_rest 200 '"closingBalance":{"currencyCode":"USD","amount":"69.75"}' GET "/v1/accounts/$a/statement?from_time=$(date -u -d yesterday +%FT%TZ)&to_time=$(date -u -d tomorrow +%FT%TZ)"
expect_rest 400 '"field":"account_id"' GET "/v1/accounts/not-a-uuid/balance"
expect_rest 404 '"code":5' GET "/v1/accounts/$(python3 -c 'import uuid; print(uuid.uuid4())')/balance"
expect_rest 400 '"code":3' GET "/v1/accounts/$a/transactions?page_sise=10"
expect_rest 400 '"field":"money.amount"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":"-5"},"idempotency_key":"rest-bad-1"}'
expect_rest 400 '"field":"idempotency_key"' POST "/v1/transfers" -d "{\"from_account_id\":\"$a\",\"to_account_id\":\"$b\",\"money\":{\"currency_code\":\"USD\",\"amount\":\"1.00\"}}"
expect_rest 400 '"code":3' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":"5.00"},"idempotency_key":"rest-bad-2"'
expect_rest 400 '"field":"money.amount"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":5},"idempotency_key":"rest-bad-3"}'
expect_rest 400 '"field":"money.amout"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amout":"5.00"},"idempotency_key":"rest-bad-4"}'
# A field given twice (the transcoder would keep the last), and an amount with a leading zero.
expect_rest 400 '"field":"money.amount"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":"1.00","amount":"900.00"},"idempotency_key":"rest-bad-11"}'
expect_rest 400 '"field":"idempotencyKey"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":"1.00"},"idempotency_key":"rest-bad-12","idempotencyKey":"rest-bad-13"}'
expect_rest 400 '"field":"money.amount"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":"01.00"},"idempotency_key":"rest-bad-14"}'
expect_rest 400 '"field":"idempotencykey"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":"5.00"},"idempotencykey":"rest-bad-5"}'
# Customers do not take money out of the bank: 403.
expect_rest 403 '"code":7' POST "/v1/accounts/$a:withdraw" -d '{"money":{"currency_code":"USD","amount":"1000.00"},"idempotency_key":"rest-bad-6"}'
# The check cannot be sidestepped: a trailing slash, a content type that only
# starts like gRPC's.
expect_rest 400 '"field":"money.amout"' POST "/v1/accounts/$a:deposit/" -d '{"money":{"currency_code":"USD","amout":"5.00"},"idempotency_key":"rest-bad-7"}'
expect_rest 400 '"field":"money.amout"' POST "/v1/accounts/$a:deposit" -H 'content-type: application/grpcx' -d '{"money":{"currency_code":"USD","amout":"5.00"},"idempotency_key":"rest-bad-8"}'
expect_rest 200 '"amount":"69.75"' GET "/v1/accounts/$a/balance"
token_saved=$token token=""
expect_rest 401 '"code":16' GET "/v1/accounts/$a/balance"
token=$token_saved
# A read parked on a consistency token the read model never reaches answers
# 503 once: the edge does not retry it (each retry would park it again).
retries() { curl -s --unix-socket "$ENVOY_ADMIN_SOCKET" "http://admin/stats?filter=^cluster\.query_service\.upstream_rq_retry\$" | awk '{print $2}'; }
[ -n "$(retries)" ] || fail "Envoy's admin socket gave no retry counter"
before=$(retries)
expect_rest 503 '"code":14' GET "/v1/accounts/$a/balance" -H "grpc-timeout: 2S" -G --data-urlencode "min_consistency_token=ct1.${a//-/}:1000000"
[ "$(retries)" = "$before" ] || fail "the edge retried a read parked on an unreachable consistency token ($before -> $(retries))"
# A REST deposit (by a teller: the admin) and transfer, read back with the consistency token.
token=$admin
expect_rest 200 '"amount":"74.75"' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amount":"5.00"},"idempotency_key":"rest-dep"}'
expect_rest 400 '"reason":"INSUFFICIENT_FUNDS"' POST "/v1/accounts/$a:withdraw" -d '{"money":{"currency_code":"USD","amount":"1000.00"},"idempotency_key":"rest-bad-10"}'
token=$token_saved
ct=$(rest POST /v1/transfers -d "{\"from_account_id\":\"$a\",\"to_account_id\":\"$b\",\"money\":{\"currency_code\":\"USD\",\"amount\":\"4.75\"},\"idempotency_key\":\"rest-tr\"}" \
  | cut -d' ' -f2- | field consistencyToken)
expect_rest 200 '"amount":"35.00"' GET "/v1/accounts/$b/balance" -G --data-urlencode "min_consistency_token=$ct"
echo "ok: REST paths, filters, read-your-writes, errors as HTTP + google.rpc.Status, bad input refused"

# 9. The committed OpenAPI document is what the edge serves, and every path in
#    it answers through the edge with a status it documents.
python3 scripts/check_openapi_edge.py --doc envoy/openapi.json --base "$api" --token "$admin" \
  --param account_id="$a" --param transaction_id="$tx" --param user_id="$(python3 -c 'import uuid; print(uuid.uuid4())')" \
  --param hold_id="$(python3 -c 'import uuid; print(uuid.uuid4())')" \
  --param schedule_id="$(python3 -c 'import uuid; print(uuid.uuid4())')" \
  --param alert_id="$(python3 -c 'import uuid; print(uuid.uuid4())')" \
  --param endpoint_id="$(python3 -c 'import uuid; print(uuid.uuid4())')" \
  --param delivery_id="$(python3 -c 'import uuid; print(uuid.uuid4())')" \
  --expect AccountCommandService_CaptureHold=400 --expect AccountCommandService_VoidHold=400 \
  --expect AccountCommandService_ReverseTransaction=400 --expect AccountCommandService_SetAccountLimits=400 \
  --expect AuthService_ApproveCustomer=404 --expect AuthService_SuspendCustomer=404 \
  --expect AccountQueryService_GetBalance=200 --expect AccountQueryService_GetTransaction=200 \
  --expect AccountQueryService_ListTransactions=200 --expect AuthService_WhoAmI=200 --expect AccountCommandService_Deposit=400 \
  >"$logs/openapi-check.out" 2>&1 || { cat "$logs/openapi-check.out"; fail "OpenAPI document against the edge"; }
echo "ok: OpenAPI document served at /openapi.json and every path answers as documented"

# 7. Login is rate limited at the edge (10 per minute).
limited=0
for _ in $(seq 1 15); do
  out=$(grpcurl -plaintext -protoset "$DESCRIPTOR" -d '{"email":"edge@example.com","password":"correct horse battery"}' $edge bank.v1.AuthService/Login 2>&1 || true)
  if grep -q "ResourceExhausted" <<<"$out"; then limited=1; break; fi
done
[ "$limited" = 1 ] || fail "Login was not rate limited"
echo "ok: Login rate-limited at the edge"
# 7b. Per client address, the one the edge saw: claiming another address in
# x-forwarded-for does not escape the limit, and another client (another
# loopback address) is not held up by this one's.
login_from() { # login_from <source address> [header]: the HTTP status of a REST Login
  curl -s -o /dev/null -w '%{http_code}' --interface "$1" ${2:+-H "$2"} -H 'content-type: application/json' \
    -d '{"email":"edge@example.com","password":"correct horse battery"}' "http://127.0.0.1:$EDGE_PORT/v1/auth:login"
}
code=$(login_from 127.0.0.1 "x-forwarded-for: 203.0.113.9")
[ "$code" = 429 ] || fail "a forged x-forwarded-for escaped the Login limit (HTTP $code)"
code=$(login_from 127.0.0.2)
[ "$code" = 200 ] || fail "another client was held up by this one's Login limit (HTTP $code)"
echo "ok: the Login limit is per client address, and x-forwarded-for cannot move it"
# 10. The REST body check fails closed: with auth-service down a REST write is
#     UNAVAILABLE (503, google.rpc.Status), never let through unchecked.
kill "${pid_of[auth]}"; wait "${pid_of[auth]}" 2>/dev/null || true
expect_rest 503 '"code":14' POST "/v1/accounts/$a:deposit" -d '{"money":{"currency_code":"USD","amout":"5.00"},"idempotency_key":"rest-bad-9"}'
expect_rest 200 '"amount":"35.00"' GET "/v1/accounts/$b/balance"
echo "ok: REST writes fail closed (503) while the body check is unreachable"
echo "edge: every check above passed"
