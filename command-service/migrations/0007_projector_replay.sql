-- `projector rebuild --from event-store` (issue 16): the projector may read
-- each event's account, version and envelope (what it already receives on the
-- stream) and nothing else of the write model.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO bank_projector', current_database());
END $$;
GRANT SELECT (seq, account_id, version, envelope) ON events TO bank_projector;
