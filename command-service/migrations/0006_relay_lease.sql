-- Relay leadership as a lease with expiry (issue 16, defect 5). The holder
-- renews it every round; a leader that hangs (SIGSTOP, a stalled host) stops
-- renewing and another instance takes over once it expires. Every take-over
-- raises the epoch, and a relay deletes published outbox rows only while it
-- still holds the lease at its epoch (fencing).
CREATE TABLE relay_lease (
    id         int         PRIMARY KEY CHECK (id = 1),
    holder     text        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);
INSERT INTO relay_lease (id, holder, epoch, expires_at) VALUES (1, 'nobody', 0, '-infinity');
GRANT SELECT, UPDATE ON relay_lease TO bank_command;
