-- Budgets and spend (version 7, docs/design.md section 13).

-- A batch's spend cap, set by sluicectl enqueue --budget. The daemon
-- holds a batch's jobs once their costs reach it; sluicectl resume --batch
-- lifts it (budget NULL).
CREATE TABLE batches (
    name       TEXT PRIMARY KEY,
    budget     REAL,                        -- NULL: no cap
    state      TEXT    NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'paused')), -- written by the daemon
    reason     TEXT,                        -- 'budget' while paused
    updated_at INTEGER NOT NULL
);

-- What each provider and batch has cost (jobs.cost), in all and over the
-- last hour. A scan of the jobs: for status and watch, not for a loop.
CREATE VIEW spend AS
SELECT provider, batch, total(cost) AS spent,
       total(CASE WHEN finished_at >= now - 3600000 THEN cost END)
           AS spent_last_hour,
       count(cost) AS jobs_costed
FROM jobs,
     (SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
             AS now)
GROUP BY provider, batch;
