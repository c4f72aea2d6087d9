-- Each user's newest standing (status, roles) as auth-service published it
-- (issue 15): checked in every command's transaction, so a suspension or a
-- revoked role stops money at once, whatever the caller's token still says.
CREATE TABLE user_standing (
    user_id uuid   PRIMARY KEY,
    status  text   NOT NULL,
    roles   text[] NOT NULL,
    seq     bigint NOT NULL
);
