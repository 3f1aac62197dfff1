-- Permits: one provider's limits shared by the daemons of one database
-- (docs/design.md section 6: several daemons on one database). Version 9.

-- What each live daemon holds and knows of each provider: slots are its
-- requests in flight plus waiting runs (set at every take), unmet what its
-- last take asked for and did not get (while another daemon waits, none
-- takes beyond its fair share of the cap), cap its concurrency_max, rate
-- the rate it knows (configured or advertised, 0 none). The pool's cap and
-- rate are the lowest of the views; a dead daemon's rows go with its
-- daemons row, in one transaction.
CREATE TABLE permits (
    provider  TEXT    NOT NULL,
    owner     TEXT    NOT NULL,             -- daemons.owner
    slots     INTEGER NOT NULL DEFAULT 0,
    unmet     INTEGER NOT NULL DEFAULT 0,
    cap       INTEGER NOT NULL DEFAULT 0,   -- 0 = none
    rate      REAL    NOT NULL DEFAULT 0,   -- requests/s, 0 = none
    PRIMARY KEY (provider, owner)
);

-- The shared token bucket of each provider: tokens left as of
-- rate_tokens_at (unix ms), refilled at the pool's rate by each taker.
ALTER TABLE providers ADD COLUMN rate_tokens REAL;
ALTER TABLE providers ADD COLUMN rate_tokens_at INTEGER;
