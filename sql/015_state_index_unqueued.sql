-- jobs_state without the queued jobs (version 15). Every enqueued job
-- was written into jobs_state and into jobs_claim, which holds the queued
-- and retrying jobs already; now jobs_state holds the others, and the
-- queued minima (next due, oldest queued) walk jobs_claim one priority at
-- a time. SQLite uses a partial index only for a query that repeats its
-- WHERE term, so the statements that read jobs_state say
-- "state <> 'queued'" (daemon/store/sqlite_claim.c). Enqueue writes one B-tree
-- fewer per job, and the file holds one index entry fewer per queued job
-- (bench/README.md).
DROP INDEX jobs_state;
CREATE INDEX jobs_state ON jobs (provider, state, run_after)
    WHERE state <> 'queued';
