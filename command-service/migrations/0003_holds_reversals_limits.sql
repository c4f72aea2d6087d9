-- Holds, reversals and debit limits (issue 14).

-- What open holds reserve: the available balance is balance - held, never
-- negative (backs up the rules, like the balance check).
ALTER TABLE accounts ADD COLUMN held numeric(20, 3) NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD CONSTRAINT accounts_held_within_balance CHECK (held >= 0 AND held <= greatest(balance, 0));
-- Staff-set debit limits; NULL is no limit.
ALTER TABLE accounts ADD COLUMN max_debit numeric(20, 3) CHECK (max_debit > 0);
ALTER TABLE accounts ADD COLUMN daily_debit_limit numeric(20, 3) CHECK (daily_debit_limit > 0);
-- The rolling-day debit sum reads the account's events through the
-- (account_id, version) index prefix, filtering on occurred_at, for limited
-- accounts only. No index of its own
-- on the event store: measured, one on (account_id, occurred_at) cost about a
-- sixth of the uniform transfer throughput (bench 2026-11-25T133134Z vs T133726Z).

-- Each hold, its state, and its deadline: the durable expiry schedule.
CREATE TABLE holds (
    id            uuid PRIMARY KEY,
    account_id    uuid        NOT NULL REFERENCES accounts (id),
    to_account_id uuid        NOT NULL REFERENCES accounts (id),
    currency      char(3)     NOT NULL,
    amount        numeric(20, 3) NOT NULL CHECK (amount > 0),
    state         text        NOT NULL CHECK (state IN ('OPEN', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    captured      numeric(20, 3) NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
    expires_at    timestamptz NOT NULL,
    placed_by     uuid        NOT NULL,
    placed_at     timestamptz NOT NULL,
    ended_at      timestamptz,
    CHECK ((state = 'OPEN') = (ended_at IS NULL))
);
CREATE INDEX holds_due ON holds (expires_at) WHERE state = 'OPEN';

-- A hold ends once: whatever the application does, an ended hold's row
-- never changes again, and only the state and its outcome ever change.
CREATE FUNCTION hold_ends_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'OPEN' THEN
        RAISE EXCEPTION 'hold % already ended (%)', OLD.id, OLD.state USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.id, NEW.account_id, NEW.to_account_id, NEW.currency, NEW.amount, NEW.expires_at, NEW.placed_by, NEW.placed_at)
       IS DISTINCT FROM
       (OLD.id, OLD.account_id, OLD.to_account_id, OLD.currency, OLD.amount, OLD.expires_at, OLD.placed_by, OLD.placed_at) THEN
        RAISE EXCEPTION 'hold % terms are immutable', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER holds_end_once BEFORE UPDATE ON holds FOR EACH ROW EXECUTE FUNCTION hold_ends_once();
CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- One reversal per original (the primary key), and a reversal is never
-- itself reversed (it never appears as an original).
CREATE TABLE reversals (
    original_transaction_id uuid PRIMARY KEY,
    reversal_transaction_id uuid NOT NULL UNIQUE,
    reversed_by             uuid NOT NULL,
    reason                  text NOT NULL,
    reversed_at             timestamptz NOT NULL,
    CHECK (original_transaction_id <> reversal_transaction_id)
);
CREATE FUNCTION reversal_not_reversed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM reversals WHERE reversal_transaction_id = NEW.original_transaction_id) THEN
        RAISE EXCEPTION 'transaction % is a reversal', NEW.original_transaction_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER reversals_not_of_reversals BEFORE INSERT ON reversals
    FOR EACH ROW EXECUTE FUNCTION reversal_not_reversed();
CREATE TRIGGER reversals_append_only BEFORE UPDATE OR DELETE ON reversals
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
