-- The write model of the money path. Owned by command-service only.

CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    owner_id    uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('CHECKING', 'SAVINGS')),
    currency    char(3)     NOT NULL,
    -- Scale 3 covers every supported currency's minor unit; the application
    -- bounds each amount to its currency. The CHECK backs up the funds logic.
    balance     numeric(20, 3) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    status      text        NOT NULL CHECK (status IN ('ACTIVE', 'FROZEN', 'CLOSED')),
    version     bigint      NOT NULL CHECK (version >= 1),
    -- Head of this account's event hash chain (tamper evidence).
    last_hash   bytea       NOT NULL,
    opened_at   timestamptz NOT NULL
);
CREATE INDEX accounts_owner ON accounts (owner_id);

-- Append-only event store: one row per event, per-account versions without gaps.
CREATE TABLE events (
    seq            bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    account_id     uuid        NOT NULL REFERENCES accounts (id),
    version        bigint      NOT NULL,
    transaction_id uuid        NOT NULL,
    kind           text        NOT NULL,
    actor          uuid        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    -- Signed change to the balance (0 for status events), for folding in SQL.
    delta          numeric(20, 3) NOT NULL,
    balance_after  numeric(20, 3) NOT NULL,
    -- The encoded bank.v1.EventEnvelope, exactly what is published.
    envelope       bytea       NOT NULL,
    hash           bytea       NOT NULL,
    UNIQUE (account_id, version)
);
CREATE INDEX events_transaction ON events (transaction_id);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Transactional outbox: written in the command's transaction, deleted by the
-- relay only after JetStream acknowledged the publish.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    event_id   uuid        NOT NULL,
    subject    text        NOT NULL,
    envelope   bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (caller, key): the request fingerprint and the first outcome.
CREATE TABLE idempotency (
    caller_id     uuid        NOT NULL,
    key           text        NOT NULL,
    request_hash  bytea       NOT NULL,
    -- Exactly one of: the encoded response, or a refusal (reason + message).
    response      bytea,
    refusal_reason  text,
    refusal_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_id, key)
);

-- Refused attempts, append-only like the events.
CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       uuid        NOT NULL,
    command     text        NOT NULL,
    account_id  uuid,
    reason      text        NOT NULL,
    detail      text        NOT NULL
);
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
