-- Users and refresh tokens. Owned by auth-service only.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- Stored lower-cased: one account per address whatever the case.
    email         text        NOT NULL UNIQUE CHECK (email = lower(email)),
    full_name     text        NOT NULL,
    password_hash text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('PENDING_KYC', 'ACTIVE', 'SUSPENDED')),
    roles         text[]      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Only a SHA-256 of each opaque refresh token is kept. A family is one login
-- session: rotation adds tokens to it; reuse of a spent one revokes it all.
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    family_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL REFERENCES users (id),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
