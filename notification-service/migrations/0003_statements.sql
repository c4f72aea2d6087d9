-- Monthly statements: fetched signed from query-service (this service reads
-- statements as its own service principal, and nothing else there) and
-- delivered like any notification; one per (account, month), however many
-- instances look.
CREATE TABLE monthly_statements (
    account_id       uuid        NOT NULL REFERENCES watched_accounts (account_id),
    period           text        NOT NULL CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    signed_statement text        NOT NULL,
    notification_id  uuid        NOT NULL REFERENCES notifications (id),
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (account_id, period)
);

-- When each account was opened (its AccountOpened's time): a month's
-- statements are for the accounts open by its end. Accounts seen before
-- this column existed have none and are taken as open.
ALTER TABLE watched_accounts ADD COLUMN opened_at timestamptz;

GRANT SELECT, INSERT ON monthly_statements TO bank_notify;
