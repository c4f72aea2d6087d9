-- Issue 17: an outbox row references its event instead of copying the
-- envelope (the relay reads it from the events table), which takes the
-- envelope's bytes out of every transfer's WAL a second time. Rows written
-- before this migration keep their copy, and the relay prefers it.
ALTER TABLE outbox ALTER COLUMN envelope DROP NOT NULL;
