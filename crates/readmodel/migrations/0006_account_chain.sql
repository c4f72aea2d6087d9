-- Every applied event's place in its account's hash chain, so a statement
-- can name the chain head at each end of its period (the hash of the
-- account's last event at or before the instant) and the customer can hold
-- it against the event store. Written by the projector with the event;
-- accounts projected before this table existed have their links from the
-- next rebuild on (query-service refuses a statement it cannot head).
CREATE TABLE account_chain (
    generation  int         NOT NULL,
    account_id  uuid        NOT NULL,
    version     bigint      NOT NULL,
    occurred_at timestamptz NOT NULL,
    hash        bytea       NOT NULL,
    PRIMARY KEY (generation, account_id, version)
);
GRANT SELECT, INSERT, DELETE ON account_chain TO bank_projector;
GRANT SELECT ON account_chain TO bank_query;
