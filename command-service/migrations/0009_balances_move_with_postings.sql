-- A balance moves only together with the postings that explain it, whoever
-- writes the row: checked at COMMIT (like the postings' balance), so a
-- stolen runtime password cannot add money to an account by hand.
--
-- Every write of an account row that changes its balance or its version
-- must change the balance by exactly the postings of the events it moved
-- the version over: (old version, new version]. A new account starts at 0.
-- The version never goes back (that would let the same postings count twice).
CREATE FUNCTION check_balance_explained() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_balance numeric := 0;
    old_version bigint := 0;
    posted numeric;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_balance := OLD.balance;
        old_version := OLD.version;
        IF NEW.balance = OLD.balance AND NEW.version = OLD.version THEN
            RETURN NULL;
        END IF;
    END IF;
    IF NEW.version < old_version THEN
        RAISE EXCEPTION 'account % went back from version % to %', NEW.id, old_version, NEW.version
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(p.amount), 0) INTO posted
    FROM events e JOIN postings p ON p.event_id = e.event_id
    WHERE e.account_id = NEW.id AND e.version > old_version AND e.version <= NEW.version;
    IF NEW.balance - old_balance <> posted THEN
        RAISE EXCEPTION 'account % balance moved by % but its postings (versions % to %) explain %',
            NEW.id, NEW.balance - old_balance, old_version + 1, NEW.version, posted
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER accounts_balance_explained AFTER INSERT OR UPDATE ON accounts
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_balance_explained();
