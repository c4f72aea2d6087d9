-- The hash of the last event applied to each account, so the projector
-- checks that every next event chains to it (issue 15: chain continuity).
-- NULL for rows projected before this column existed: their next event is
-- taken as the chain's head.
ALTER TABLE account_view ADD COLUMN last_hash bytea;
