-- Email: each user's address and whether they want it, and an outbox of
-- messages (one per notification) the mailer works through like webhooks.
CREATE TABLE notification_preferences (
    user_id uuid PRIMARY KEY,
    email text,
    email_enabled boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL,
    CHECK (NOT email_enabled OR email IS NOT NULL)
);

CREATE TABLE email_deliveries (
    id uuid PRIMARY KEY,
    notification_id uuid NOT NULL UNIQUE REFERENCES notifications (id),
    to_address text NOT NULL,
    subject text NOT NULL,
    body text NOT NULL,
    state text NOT NULL CHECK (state IN ('PENDING', 'SENT', 'DEAD')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    leased_until timestamptz,
    last_error text,
    created_at timestamptz NOT NULL,
    sent_at timestamptz
);
CREATE INDEX email_deliveries_due ON email_deliveries (next_attempt_at) WHERE state = 'PENDING';

GRANT SELECT, INSERT, UPDATE ON notification_preferences, email_deliveries TO bank_notify;
