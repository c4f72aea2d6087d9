-- Who may do what with the read models at run time (issue 15). The schema
-- belongs to the migration role that runs this file. The projector
-- (bank_projector) writes them; query-service (bank_query) and
-- command-service's reconcile (bank_command) only read. None changes a
-- schema. Roles are provisioned outside the services
-- (deploy/postgres/provision.sql).
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO bank_projector, bank_query, bank_command', current_database());
END $$;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON projection_meta, account_view, transaction_history, dead_letters, reversal_view, hold_view TO bank_projector;
GRANT USAGE ON SEQUENCE dead_letters_id_seq TO bank_projector;
-- So the services can tell they run against the schema they were built for.
GRANT SELECT ON _sqlx_migrations TO bank_projector, bank_query, bank_command;
GRANT SELECT
    ON projection_meta, account_view, transaction_history, dead_letters, reversal_view, hold_view TO bank_query, bank_command;
