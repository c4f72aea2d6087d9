-- What auth-service may do at run time (issue 15). The schema belongs to the
-- migration role that runs this file; the service runs as bank_auth, which
-- can reach this database only, change no schema and no trigger, and delete
-- nothing but the standings already published. Both roles are provisioned
-- outside the service (deploy/postgres/provision.sql).
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO bank_auth', current_database());
END $$;
GRANT SELECT, INSERT, UPDATE ON users TO bank_auth;
GRANT SELECT, INSERT, UPDATE ON refresh_tokens TO bank_auth;
-- The trigger on users writes here; the feed deletes what it published.
GRANT SELECT, INSERT, DELETE ON user_changes TO bank_auth;
GRANT USAGE ON SEQUENCE user_standing_seq TO bank_auth;
-- So the service can tell it runs against the schema it was built for.
GRANT SELECT ON _sqlx_migrations TO bank_auth;
