-- What each lane paces at (sql/010_provider_rates.sql): the request rate
-- and where it came from, the token budget per minute and what the gate
-- holds now. NULL when the lane has none.
ALTER TABLE providers ADD COLUMN rate_per_s DOUBLE PRECISION;
ALTER TABLE providers ADD COLUMN rate_source TEXT;
ALTER TABLE providers ADD COLUMN token_limit BIGINT;
ALTER TABLE providers ADD COLUMN tokens_available BIGINT;
