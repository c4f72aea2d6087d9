-- Projector instances share the event partitions (issue 18). Each instance
-- is a member while it renews its row; each partition is leased by at most
-- one member at a time. Expiry is the database's clock, so instances'
-- clocks do not matter. The partition rows are made by the projector (the
-- partition count is the code's: bank_platform::nats::EVENT_PARTITIONS).
CREATE TABLE projector_members (
    member text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE TABLE projector_partitions (
    partition int PRIMARY KEY,
    holder text,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
GRANT SELECT, INSERT, UPDATE, DELETE ON projector_members, projector_partitions TO bank_projector;
GRANT SELECT ON projector_members, projector_partitions TO bank_query, bank_command;
