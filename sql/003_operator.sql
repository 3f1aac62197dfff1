-- Operator queries (sluicectl failures, watch, purge). Version 3.

-- Finished jobs by age: purge deletes the oldest first and failures
-- --since reads the newest. Partial: queued and running jobs (NULL) are
-- not in it, so enqueue and claims pay nothing for it.
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE finished_at IS NOT NULL;

-- batch_progress keeps its columns and gains what a progress bar needs:
-- done, remaining, the finishing rate over the last minute (or since the
-- first job finished, when that is more recent) and an ETA in seconds at
-- that rate (NULL when nothing finished lately). "now" is read when the
-- view is queried.
DROP VIEW batch_progress;
CREATE VIEW batch_progress AS
SELECT batch, provider, total, queued, running, waiting, retrying,
       succeeded, failed, cancelled, first_created_at, last_finished_at,
       done, total - done AS remaining, done_last_minute,
       round(rate, 2) AS rate_per_s,
       CASE WHEN rate > 0 AND total > done
            THEN CAST((total - done) / rate + 0.5 AS INTEGER)
       END AS eta_s
FROM (
    SELECT batch, provider, count(*) AS total,
           sum(state = 'queued') AS queued,
           sum(state = 'running') AS running,
           sum(state = 'waiting') AS waiting,
           sum(state = 'retrying') AS retrying,
           sum(state = 'succeeded') AS succeeded,
           sum(state = 'failed') AS failed,
           sum(state = 'cancelled') AS cancelled,
           min(created_at) AS first_created_at,
           max(finished_at) AS last_finished_at,
           sum(state IN ('succeeded', 'failed', 'cancelled')) AS done,
           sum(finished_at >= now - 60000) AS done_last_minute,
           -- jobs per second over the window; the window is at least 1 s
           sum(finished_at >= now - 60000) * 1000.0
               / max(1000, now - max(now - 60000,
                                     coalesce(min(finished_at), now)))
               AS rate
    FROM jobs,
         (SELECT CAST((julianday('now') - 2440587.5) * 86400000
                      AS INTEGER) AS now)
    GROUP BY batch, provider
);
