-- Permits, as sql/009: what each live daemon holds and knows of each
-- provider, and the provider's shared token bucket in its row. A taker
-- locks the providers row (FOR UPDATE) before it reads the pool, so two
-- daemons' takes of one provider run one after the other.
CREATE TABLE permits (
    provider  TEXT             NOT NULL,
    owner     TEXT             NOT NULL,
    slots     INTEGER          NOT NULL DEFAULT 0,
    unmet     INTEGER          NOT NULL DEFAULT 0,
    cap       INTEGER          NOT NULL DEFAULT 0,
    rate      DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, owner)
);

ALTER TABLE providers ADD COLUMN rate_tokens DOUBLE PRECISION;
ALTER TABLE providers ADD COLUMN rate_tokens_at BIGINT;
