-- Holds and reversals (issue 14).

-- What open holds reserve: available = balance - held.
ALTER TABLE account_view ADD COLUMN held numeric(20, 3) NOT NULL DEFAULT 0;

-- A reversal's entries name the transaction they reverse.
ALTER TABLE transaction_history ADD COLUMN reverses_transaction_id uuid;

-- Original -> reversal, for the other direction of the link: an original's
-- entries stay as they were and are shown with the reversal that undid them.
CREATE TABLE reversal_view (
    generation              int  NOT NULL,
    original_transaction_id uuid NOT NULL,
    reversal_transaction_id uuid NOT NULL,
    PRIMARY KEY (generation, original_transaction_id)
);

-- Every hold and its state (GetBalance lists the open ones).
CREATE TABLE hold_view (
    generation    int         NOT NULL,
    hold_id       uuid        NOT NULL,
    account_id    uuid        NOT NULL,
    to_account_id uuid        NOT NULL,
    currency      text        NOT NULL,
    amount        numeric(20, 3) NOT NULL,
    state         text        NOT NULL,
    captured      numeric(20, 3) NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (generation, hold_id)
);
CREATE INDEX hold_view_open ON hold_view (generation, account_id, expires_at) WHERE state = 'OPEN';
