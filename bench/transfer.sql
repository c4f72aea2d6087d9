-- One transfer exactly as command-service runs it (store.rs): the same
-- statements in the same transaction, one round trip each — claim the
-- idempotency key, lock both rows in id order, then one statement that
-- updates both balances, appends both events, their postings (checked to
-- balance at COMMIT by the deferred trigger) and outbox rows, and stores the
-- response. Accounts are 1..:naccounts (ids derived from the number);
-- :hot = 1 draws every transfer from account 1. Run with -M prepared.
\if :hot
\set src 1
\else
\set src random(1, :naccounts)
\endif
\set dst 1 + (:src + random(0, :naccounts - 2)) % :naccounts
BEGIN;
INSERT INTO idempotency (caller_id, key, request_hash) VALUES ('00000000-0000-7000-8000-000000000000', gen_random_uuid()::text, '\x8f3a1c') ON CONFLICT DO NOTHING RETURNING key \gset
SELECT id, owner_id, kind, currency, balance, status, version, last_hash, opened_at FROM accounts WHERE id = ANY(ARRAY[('00000000-0000-7000-8000-' || lpad(:src::text, 12, '0'))::uuid, ('00000000-0000-7000-8000-' || lpad(:dst::text, 12, '0'))::uuid]) ORDER BY id FOR UPDATE;
WITH t AS (SELECT gen_random_uuid() AS tx), u(id, delta, kind) AS (VALUES (('00000000-0000-7000-8000-' || lpad(:src::text, 12, '0'))::uuid, -0.01::numeric, 'TransferDebited'), (('00000000-0000-7000-8000-' || lpad(:dst::text, 12, '0'))::uuid, 0.01::numeric, 'TransferCredited')), changed AS (UPDATE accounts a SET balance = a.balance + u.delta, version = a.version + 1, last_hash = sha256(a.last_hash) FROM u WHERE a.id = u.id RETURNING a.id, a.version, a.balance, a.last_hash, u.delta, u.kind), new_events AS (INSERT INTO events (event_id, account_id, version, transaction_id, kind, actor, occurred_at, delta, balance_after, envelope, hash) SELECT gen_random_uuid(), c.id, c.version, t.tx, c.kind, '00000000-0000-7000-8000-000000000000', now(), c.delta, c.balance, decode(repeat('5a', 260), 'hex'), c.last_hash FROM changed c, t RETURNING event_id, account_id, transaction_id, delta, envelope), new_postings AS (INSERT INTO postings (event_id, transaction_id, account_id, currency, amount) SELECT e.event_id, e.transaction_id, e.account_id, 'USD', e.delta FROM new_events e WHERE e.delta <> 0), new_outbox AS (INSERT INTO outbox (event_id, subject) SELECT e.event_id, 'bench.events.0.' || e.account_id::text FROM new_events e), responses AS (UPDATE idempotency i SET response = r.response FROM UNNEST(ARRAY['00000000-0000-7000-8000-000000000000']::uuid[], ARRAY[:key]::text[], ARRAY[decode(repeat('7e', 120), 'hex')]::bytea[]) AS r(caller_id, key, response) WHERE i.caller_id = r.caller_id AND i.key = r.key), refusals AS (UPDATE idempotency i SET refusal_reason = r.reason, refusal_message = r.message FROM UNNEST('{}'::uuid[], '{}'::text[], '{}'::text[], '{}'::text[]) AS r(caller_id, key, reason, message) WHERE i.caller_id = r.caller_id AND i.key = r.key), released AS (DELETE FROM idempotency i USING UNNEST('{}'::uuid[], '{}'::text[]) AS r(caller_id, key) WHERE i.caller_id = r.caller_id AND i.key = r.key) INSERT INTO audit_log (actor, command, account_id, reason, detail) SELECT * FROM UNNEST('{}'::uuid[], '{}'::text[], '{}'::uuid[], '{}'::text[], '{}'::text[]);
COMMIT;
