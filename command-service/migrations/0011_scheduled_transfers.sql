-- Scheduled and recurring transfers. A schedule is the owner's standing
-- instruction; the scheduler (every command-service instance) takes a due one
-- under a row lock (FOR UPDATE SKIP LOCKED, so two instances never run the
-- same schedule at once), runs its occurrence through the ledger under the
-- key schedule:<id>:<occurrence>:<attempt> and records the outcome and the
-- next run in the same transaction. A crash between the transfer and that
-- record only means the next scheduler asks the ledger again under the same
-- key and is answered with the first outcome.
CREATE TABLE scheduled_transfers (
    id uuid PRIMARY KEY,
    owner_id uuid NOT NULL,
    -- The standing the owner's token was issued under: a suspension after it
    -- refuses the occurrences as it would the owner's own transfers.
    standing_version bigint NOT NULL,
    idempotency_key text NOT NULL,
    request_hash bytea NOT NULL,
    from_account_id uuid NOT NULL REFERENCES accounts (id),
    to_account_id uuid NOT NULL,
    amount numeric NOT NULL CHECK (amount > 0),
    currency text NOT NULL,
    description text NOT NULL,
    cadence text NOT NULL CHECK (cadence IN ('ONCE', 'DAILY', 'WEEKLY', 'MONTHLY')),
    day_of_month integer CHECK (day_of_month BETWEEN 1 AND 31),
    time_zone text NOT NULL,
    start_at timestamptz NOT NULL,
    end_at timestamptz,
    state text NOT NULL CHECK (state IN ('ACTIVE', 'PAUSED', 'CANCELLED', 'COMPLETED')),
    next_occurrence integer NOT NULL DEFAULT 0 CHECK (next_occurrence >= 0),
    next_attempt integer NOT NULL DEFAULT 1 CHECK (next_attempt >= 1),
    next_run_at timestamptz,
    created_at timestamptz NOT NULL,
    UNIQUE (owner_id, idempotency_key),
    CHECK ((cadence = 'MONTHLY') = (day_of_month IS NOT NULL)),
    CHECK ((state IN ('ACTIVE', 'PAUSED')) = (next_run_at IS NOT NULL))
);
CREATE INDEX scheduled_transfers_due ON scheduled_transfers (next_run_at) WHERE state = 'ACTIVE';
CREATE INDEX scheduled_transfers_by_owner ON scheduled_transfers (owner_id, id);

-- Every attempt at every occurrence, kept: what ran, when, and why not.
CREATE TABLE schedule_occurrences (
    schedule_id uuid NOT NULL REFERENCES scheduled_transfers (id),
    occurrence integer NOT NULL,
    attempt integer NOT NULL,
    due_at timestamptz NOT NULL,
    ran_at timestamptz NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('SUCCEEDED', 'REFUSED', 'FAILED')),
    reason text,
    message text,
    transaction_id uuid,
    PRIMARY KEY (schedule_id, occurrence, attempt),
    CHECK ((outcome = 'SUCCEEDED') = (transaction_id IS NOT NULL))
);
-- At most one made transfer per occurrence, whatever else goes wrong.
CREATE UNIQUE INDEX schedule_occurrences_once ON schedule_occurrences (schedule_id, occurrence)
    WHERE outcome = 'SUCCEEDED';

GRANT SELECT, INSERT, UPDATE ON scheduled_transfers TO bank_command;
GRANT SELECT, INSERT ON schedule_occurrences TO bank_command;
