#!/usr/bin/env bash
# compose.yaml against the current Compose specification schema.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v check-jsonschema >/dev/null || python3 -m pip install -q --disable-pip-version-check check-jsonschema
check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
python3 -c "import json; json.load(open('deploy/grafana/dashboards/bankmesh.json'))"
# NATS and Redis in compose run with the users and permissions the tests run
# with (the same files), and every service reaches them as its own user.
python3 - <<'PY'
import re, yaml
c = yaml.safe_load(open("compose.yaml"))["services"]
assert "/etc/nats/nats.conf" in c["nats"]["command"] and "./deploy/nats:/etc/nats:ro" in c["nats"]["volumes"], "nats: deploy/nats/nats.conf"
assert "render-acl.sh" in " ".join(c["redis"]["command"]) and "./deploy/redis:/etc/redis-acl:ro" in c["redis"]["volumes"], "redis: deploy/redis ACL"
users = {"auth-service": "auth", "command-service": "command", "projector": "projector", "query-service": "query",
         "notification-service": "notify"}
for name, user in users.items():
    env = c[name]["environment"]
    if name == "notification-service":
        assert "REDIS_URL" not in env, "notification-service uses no Redis"
    else:
        assert re.match(rf"redis://{user}:\$\{{REDIS_{user.upper()}_PASSWORD:\?", env["REDIS_URL"]), (name, "REDIS_URL")
    assert re.match(rf"nats://{user}:\$\{{NATS_{user.upper()}_PASSWORD:\?", env["NATS_URL"]), (name, "NATS_URL")
# Postgres: provisioned by the stack's own script; the services connect as
# their runtime roles, never as the superuser or a schema owner.
assert "./deploy/postgres/provision.sh:/docker-entrypoint-initdb.d/10-provision.sh:ro" in c["postgres"]["volumes"], "postgres: provision.sh"
roles = {"auth-service": {"AUTH_DATABASE_URL": "bank_auth"},
         "command-service": {"COMMAND_DATABASE_URL": "bank_command", "READ_DATABASE_URL": "bank_command"},
         "projector": {"READ_DATABASE_URL": "bank_projector"}, "query-service": {"READ_DATABASE_URL": "bank_query"},
         "notification-service": {"NOTIFY_DATABASE_URL": "bank_notify"}}
for name, urls in roles.items():
    for var, role in urls.items():
        assert c[name]["environment"][var].startswith(f"postgres://{role}:${{"), (name, var)
    assert not any("_owner:" in str(v) or "postgres://postgres" in str(v) for v in c[name]["environment"].values()), name
# Page tokens hold across query-service restarts and instances.
assert c["query-service"]["environment"]["PAGE_TOKEN_SECRET"].startswith("${PAGE_TOKEN_SECRET:?"), "PAGE_TOKEN_SECRET"
for svc in ("projector", "query-service"):
    assert c[svc]["environment"]["READ_CACHE_KEY"].startswith("${READ_CACHE_KEY:?"), f"{svc}: READ_CACHE_KEY"
for svc in ("auth-service", "command-service"):
    assert "READ_CACHE_KEY" not in c[svc]["environment"], f"{svc} holds the cache's seal key"
# Keys from files: events signed and verified, tokens signed with a stable key.
assert c["command-service"]["environment"]["EVENT_SIGNING_KEY"].startswith("/run/secrets/")
assert c["projector"]["environment"]["EVENT_VERIFYING_KEYS"].startswith("/run/secrets/")
assert c["auth-service"]["environment"]["JWT_SIGNING_KEYS"].startswith("/run/secrets/")
assert c["query-service"]["environment"]["STATEMENT_SIGNING_KEY"].startswith("/run/secrets/")
for svc in ("auth-service", "command-service", "projector", "notification-service"):
    assert "STATEMENT_SIGNING_KEY" not in c[svc]["environment"], f"{svc} holds the statement key"
assert c["notification-service"]["environment"]["EVENT_VERIFYING_KEYS"].startswith("/run/secrets/")
for svc in ("auth-service", "command-service", "projector", "query-service"):
    assert "SMTP_URL" not in c[svc]["environment"], f"{svc} holds the mail server's URL"
assert "EVENT_SIGNING_KEY" not in c["notification-service"]["environment"], "notification-service holds the event signing key"
assert c["notification-service"]["environment"]["WEBHOOK_SECRETS_KEY"].startswith("/run/secrets/"), "webhook secrets sealed"
for svc in ("auth-service", "command-service", "projector", "query-service"):
    assert "WEBHOOK_SECRETS_KEY" not in c[svc]["environment"], f"{svc} holds the webhook secrets key"
assert c["auth-service"]["environment"]["TOTP_SECRETS_KEY"].startswith("/run/secrets/"), "second-factor seeds sealed"
# Monthly statements: notification-service's own principal, the only one query-service lets read them.
assert c["query-service"]["environment"]["STATEMENT_READERS"] == "notification-service"
assert c["notification-service"]["environment"]["SERVICE_CLIENT_SECRET"].startswith("${NOTIFY_CLIENT_SECRET:?")
for svc in ("auth-service", "command-service", "projector", "query-service"):
    assert "SERVICE_CLIENT_SECRET" not in c[svc]["environment"], f"{svc} holds notification-service's client secret"
for svc in ("command-service", "projector", "query-service", "notification-service"):
    assert "TOTP_SECRETS_KEY" not in c[svc]["environment"], f"{svc} holds the second-factor key"
# TLS inside: every service has its own certificate and key (no other's),
# the JWKS is fetched over HTTPS, Envoy presents its own client certificate.
common = yaml.safe_load(open("compose.yaml"))["x-service"]["environment"]
assert common["JWKS_URL"].startswith("https://") and common["TLS_CA_FILE"], "JWKS over HTTPS, TLS on"
for name in users:
    mounts = c[name]["volumes"]
    assert f"./secrets/tls/{name}.key:/etc/bankmesh/tls/key.pem:ro" in mounts, (name, "own TLS key")
    assert not any(m.endswith(".key:/etc/bankmesh/tls/key.pem:ro") and f"/{name}.key" not in m for m in mounts), name
assert "./secrets/tls/envoy.key:/etc/envoy-tls/envoy.key:ro" in c["envoy"]["volumes"], "envoy client key"
print("ok -- compose: NATS, Redis and Postgres users per service, from deploy/; keys from files; TLS inside")
PY
