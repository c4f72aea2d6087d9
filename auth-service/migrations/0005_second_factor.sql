-- The second factor (TOTP, RFC 6238). A seed per user, sealed under
-- auth-service's own key (TOTP_SECRETS_KEY) and bound to the user; confirmed
-- once a code from it was shown; and the newest time step a code was taken
-- for, so each code is good once.
CREATE TABLE second_factors (
    user_id      uuid        PRIMARY KEY REFERENCES users (id),
    seed         text        NOT NULL,
    confirmed_at timestamptz,
    last_step    bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Recovery codes, as digests; each is spent once.
CREATE TABLE recovery_codes (
    user_id   uuid        NOT NULL REFERENCES users (id),
    code_hash bytea       NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- How a session was started, kept with its refresh tokens: an access token
-- from a refresh says the same (`amr`) and keeps when the user last proved
-- it (`auth_time`), so a refresh is never a fresh second factor.
ALTER TABLE refresh_tokens
    ADD COLUMN amr text[] NOT NULL DEFAULT '{pwd}',
    ADD COLUMN auth_time timestamptz NOT NULL DEFAULT now();

GRANT SELECT, INSERT, UPDATE, DELETE ON second_factors, recovery_codes TO bank_auth;
