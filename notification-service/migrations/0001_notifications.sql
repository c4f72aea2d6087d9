-- notification-service's own database. It holds what it learnt from the
-- event stream (each account's owner, balance and the head it applied) and
-- what it made of it. The service runs as bank_notify, which owns nothing
-- and holds the grants below; the schema is the migration role's.

-- Each account the stream opened: its owner, its balance after the last
-- event applied, and that event's version and hash (the consumer's head).
CREATE TABLE watched_accounts (
    account_id uuid PRIMARY KEY,
    owner_id uuid NOT NULL,
    currency text NOT NULL,
    balance numeric NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    hash bytea NOT NULL
);
CREATE INDEX watched_accounts_by_owner ON watched_accounts (owner_id);

-- One per (event, rule, user), however often the event is delivered.
CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    event_id uuid NOT NULL,
    rule text NOT NULL,
    kind text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    account_id uuid,
    created_at timestamptz NOT NULL,
    read_at timestamptz,
    UNIQUE (event_id, rule, user_id)
);
CREATE INDEX notifications_by_user ON notifications (user_id, id DESC);

CREATE TABLE balance_alerts (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    account_id uuid NOT NULL REFERENCES watched_accounts (account_id),
    direction text NOT NULL CHECK (direction IN ('BELOW', 'ABOVE')),
    threshold numeric NOT NULL,
    -- Whether the balance is past the threshold now: the alert fires on the
    -- way past it, once, and again only after the balance came back.
    beyond boolean NOT NULL,
    fired bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz
);
CREATE INDEX balance_alerts_by_account ON balance_alerts (account_id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    url text NOT NULL,
    description text NOT NULL,
    secret text NOT NULL,
    -- After a rotation, deliveries are signed under both for a while.
    previous_secret text,
    previous_until timestamptz,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz
);
CREATE INDEX webhook_endpoints_by_user ON webhook_endpoints (user_id) WHERE deleted_at IS NULL;

-- The delivery log: one row per (endpoint, notification), its attempts.
CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id),
    notification_id uuid NOT NULL REFERENCES notifications (id),
    payload text NOT NULL,
    state text NOT NULL CHECK (state IN ('PENDING', 'DELIVERED', 'DEAD')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- An instance delivering it holds it until then.
    leased_until timestamptz,
    last_status integer,
    last_error text,
    created_at timestamptz NOT NULL,
    delivered_at timestamptz,
    UNIQUE (endpoint_id, notification_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'PENDING';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id DESC);

-- Stream messages never believed (forged, malformed, unchained).
CREATE TABLE refused_messages (
    id bigserial PRIMARY KEY,
    stream_sequence bigint NOT NULL,
    subject text NOT NULL,
    reason text NOT NULL,
    refused_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO bank_notify', current_database());
END $$;
GRANT SELECT, INSERT, UPDATE ON watched_accounts, notifications, balance_alerts, webhook_endpoints,
    webhook_deliveries TO bank_notify;
GRANT INSERT ON refused_messages TO bank_notify;
GRANT USAGE ON SEQUENCE refused_messages_id_seq TO bank_notify;
GRANT SELECT ON _sqlx_migrations TO bank_notify;
