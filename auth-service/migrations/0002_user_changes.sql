-- Every change of a user's standing (status, roles), recorded in the same
-- transaction as the change by a trigger, so no code path can miss one; the
-- feed publishes the rows to JetStream and deletes them once acknowledged.
--
-- Each change gets the next standing sequence number, kept on the user too
-- and put in every access token issued afterwards (claim `sv`): a service
-- holding a published standing knows exactly whether it is newer than a
-- token, with no clocks involved.
CREATE SEQUENCE user_standing_seq;
ALTER TABLE users ADD COLUMN standing_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE user_changes (
    seq     bigint      PRIMARY KEY,
    user_id uuid        NOT NULL,
    status  text        NOT NULL,
    roles   text[]      NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION record_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IS DISTINCT FROM NEW.status OR OLD.roles IS DISTINCT FROM NEW.roles THEN
        NEW.standing_seq := nextval('user_standing_seq');
        INSERT INTO user_changes (seq, user_id, status, roles) VALUES (NEW.standing_seq, NEW.id, NEW.status, NEW.roles);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER users_standing_changed BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION record_user_change();
