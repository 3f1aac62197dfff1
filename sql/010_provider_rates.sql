-- What each lane paces at (version 10): the request rate and where it came
-- from (configured, advertised by the provider, or learned from what it
-- delivered when it refused), and the token budget per minute with what
-- the gate holds now. NULL when the lane has none.
ALTER TABLE providers ADD COLUMN rate_per_s REAL;
ALTER TABLE providers ADD COLUMN rate_source TEXT;
ALTER TABLE providers ADD COLUMN token_limit INTEGER;
ALTER TABLE providers ADD COLUMN tokens_available INTEGER;
