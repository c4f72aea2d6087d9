-- What command-service may do at run time (issue 15). The schema belongs to
-- the migration role that runs this file; the service runs as bank_command:
-- it reaches this database (and reads the read models for reconcile), changes
-- no schema and no trigger, and can neither update nor delete an event, a
-- posting, a reversal or an audit row. Roles are provisioned outside the
-- service (deploy/postgres/provision.sql).
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO bank_command', current_database());
END $$;
GRANT SELECT, INSERT, UPDATE ON accounts TO bank_command;
GRANT SELECT, INSERT ON events, postings, reversals, audit_log TO bank_command;
GRANT SELECT, INSERT, DELETE ON outbox TO bank_command;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency TO bank_command;
-- A hold ends once (a trigger keeps it so); it is never deleted.
GRANT SELECT, INSERT, UPDATE ON holds TO bank_command;
GRANT SELECT, INSERT, UPDATE ON user_standing TO bank_command;
GRANT USAGE ON SEQUENCE events_seq_seq, outbox_id_seq, audit_log_id_seq TO bank_command;
-- So the service can tell it runs against the schema it was built for.
GRANT SELECT ON _sqlx_migrations TO bank_command;
