-- Every change of a user's standing (status, roles), recorded in the same
-- transaction as the change by a trigger, so no code path can miss one; the
-- feed publishes the rows to JetStream and deletes them once acknowledged.
CREATE TABLE user_changes (
    seq     bigserial   PRIMARY KEY,
    user_id uuid        NOT NULL,
    status  text        NOT NULL,
    roles   text[]      NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION record_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_changes (user_id, status, roles) VALUES (NEW.id, NEW.status, NEW.roles);
    RETURN NULL;
END $$;

CREATE TRIGGER users_standing_changed AFTER UPDATE OF status, roles ON users
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.roles IS DISTINCT FROM NEW.roles)
    EXECUTE FUNCTION record_user_change();
