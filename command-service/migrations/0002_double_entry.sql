-- Double entry (issue 13): the bank's own accounts and postings that must
-- net to zero per transaction and currency.

-- System accounts: settlement (may go negative: it mirrors what customers
-- hold) and fee income, owned by the bank (the nil uuid).
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('CHECKING', 'SAVINGS', 'SETTLEMENT', 'FEE_INCOME'));
ALTER TABLE accounts DROP CONSTRAINT accounts_balance_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_check
    CHECK (balance >= 0 OR kind = 'SETTLEMENT');
ALTER TABLE accounts ADD CONSTRAINT accounts_system_owned_by_the_bank
    CHECK ((kind IN ('SETTLEMENT', 'FEE_INCOME')) = (owner_id = '00000000-0000-0000-0000-000000000000'));
-- Lets a posting's currency be checked against its account's by a foreign key.
ALTER TABLE accounts ADD CONSTRAINT accounts_id_currency UNIQUE (id, currency);

-- One row per money event: its signed change to one account.
CREATE TABLE postings (
    event_id       uuid    PRIMARY KEY REFERENCES events (event_id),
    transaction_id uuid    NOT NULL,
    account_id     uuid    NOT NULL,
    currency       char(3) NOT NULL,
    amount         numeric(20, 3) NOT NULL CHECK (amount <> 0),
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency)
);
CREATE INDEX postings_transaction ON postings (transaction_id);

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Checked at COMMIT, after every posting of the transaction is in: whatever
-- the application does, an unbalanced transaction does not commit.
CREATE FUNCTION check_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    off record;
BEGIN
    SELECT currency, sum(amount) AS total INTO off
    FROM postings WHERE transaction_id = NEW.transaction_id
    GROUP BY currency HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transaction % does not balance: % postings sum to %',
            NEW.transaction_id, off.currency, off.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_transaction_balanced();
