-- Each recorded change also says the status it moved from, so a reader of
-- the feed can tell a KYC approval (PENDING_KYC -> ACTIVE) from a
-- reinstatement (SUSPENDED -> ACTIVE) without keeping every user's history.
ALTER TABLE user_changes ADD COLUMN previous_status text;

CREATE OR REPLACE FUNCTION record_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IS DISTINCT FROM NEW.status OR OLD.roles IS DISTINCT FROM NEW.roles THEN
        NEW.standing_seq := nextval('user_standing_seq');
        INSERT INTO user_changes (seq, user_id, status, roles, previous_status)
            VALUES (NEW.standing_seq, NEW.id, NEW.status, NEW.roles, OLD.status);
    END IF;
    RETURN NEW;
END $$;
