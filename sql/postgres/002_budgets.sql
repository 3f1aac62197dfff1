-- Budgets and spend, as sql/007_budgets.sql (DESIGN section 13).

CREATE TABLE batches (
    name       TEXT PRIMARY KEY,
    budget     DOUBLE PRECISION,            -- NULL: no cap
    state      TEXT   NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'paused')), -- written by the daemon
    reason     TEXT,                        -- 'budget' while paused
    updated_at BIGINT NOT NULL
);

-- What each provider and batch has cost, in all and over the last hour.
-- A scan of the jobs: for status and watch, not for a loop.
CREATE VIEW spend AS
SELECT provider, batch, coalesce(sum(cost), 0) AS spent,
       coalesce(sum(cost) FILTER (WHERE finished_at >= now - 3600000), 0)
           AS spent_last_hour,
       count(cost) AS jobs_costed
FROM jobs,
     (SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)
             AS now) t
GROUP BY provider, batch;
