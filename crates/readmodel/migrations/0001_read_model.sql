-- The read models, written by the projector only. Every row carries the
-- generation it belongs to: `projector rebuild` fills generation n+1 from the
-- stream while readers keep using n, then switches `active_generation`.

CREATE TABLE projection_meta (
    id                int PRIMARY KEY CHECK (id = 1),
    active_generation int NOT NULL
);
INSERT INTO projection_meta VALUES (1, 1);

CREATE TABLE account_view (
    generation int         NOT NULL,
    account_id uuid        NOT NULL,
    owner_id   uuid        NOT NULL,
    kind       text        NOT NULL,
    currency   text        NOT NULL,
    balance    numeric(20, 3) NOT NULL,
    status     text        NOT NULL,
    version    bigint      NOT NULL,
    opened_at  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (generation, account_id)
);
CREATE INDEX account_view_owner ON account_view (generation, owner_id);

-- One row per money event, keyed by the version it produced: keyset
-- pagination walks (account_id, version) backwards.
CREATE TABLE transaction_history (
    generation     int         NOT NULL,
    account_id     uuid        NOT NULL,
    version        bigint      NOT NULL,
    event_id       uuid        NOT NULL,
    transaction_id uuid        NOT NULL,
    kind           text        NOT NULL,
    amount         numeric(20, 3) NOT NULL,
    balance_before numeric(20, 3) NOT NULL,
    balance_after  numeric(20, 3) NOT NULL,
    counterparty_account_id uuid,
    description    text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    PRIMARY KEY (generation, account_id, version)
);
CREATE INDEX transaction_history_tx ON transaction_history (generation, transaction_id);
CREATE INDEX transaction_history_time ON transaction_history (generation, account_id, occurred_at);

-- Messages that can never be applied, with the reason; they do not block the rest.
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    stream_sequence bigint,
    subject         text        NOT NULL,
    reason          text        NOT NULL,
    payload         bytea       NOT NULL
);
