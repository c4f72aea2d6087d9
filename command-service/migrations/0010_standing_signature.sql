-- A standing takes effect from auth-service's signature, not from columns
-- anyone with the runtime password could rewrite: the signed standing (a
-- JWS) is kept, and command-service reads status, roles and sequence from it
-- after checking the signature. A row whose JWS does not verify (or has
-- none, as rows from before this migration) locks its user out of the money
-- path and is reported; the feed writes it again (`jws IS NULL` rows are
-- replaced whatever their sequence).
ALTER TABLE user_standing ADD COLUMN jws text;
