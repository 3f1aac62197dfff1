-- Kept counts (version 6): how many jobs each provider and batch has in
-- each state, and how many finished in each minute, maintained by triggers
-- inside the transaction that moves the jobs. sluicectl status and watch,
-- STATUS= and batch_progress read these few rows instead of counting the
-- queue, so they cost the same with ten million jobs queued as with ten.

-- Jobs per provider, batch ('' for jobs without one) and state. Rows stay
-- when n drops to 0; readers skip them.
CREATE TABLE job_counts (
    provider TEXT    NOT NULL,
    batch    TEXT    NOT NULL,
    state    TEXT    NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (provider, batch, state)
) WITHOUT ROWID;

-- Jobs that reached a final state, per provider, batch and minute
-- (finished_at / 60000), with the first and last finished_at of the
-- minute: the rate over the last minute, last_finished_at and the ETA.
CREATE TABLE job_done_minutes (
    provider TEXT    NOT NULL,
    batch    TEXT    NOT NULL,
    minute   INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    PRIMARY KEY (provider, batch, minute)
) WITHOUT ROWID;

INSERT INTO job_counts (provider, batch, state, n)
SELECT provider, coalesce(batch, ''), state, count(*)
FROM jobs GROUP BY 1, 2, 3;

INSERT INTO job_done_minutes (provider, batch, minute, n, first_at, last_at)
SELECT provider, coalesce(batch, ''), finished_at / 60000, count(*),
       min(finished_at), max(finished_at)
FROM jobs
WHERE finished_at IS NOT NULL
  AND state IN ('succeeded', 'failed', 'cancelled')
GROUP BY 1, 2, 3;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (provider, batch, state, n)
    VALUES (new.provider, coalesce(new.batch, ''), new.state, 1)
    ON CONFLICT (provider, batch, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1
    WHERE provider = old.provider AND batch = coalesce(old.batch, '')
      AND state = old.state;
END;

-- "OF" fires whenever the statement sets a column; WHEN keeps it to rows
-- whose state (or provider or batch, by hand in sqlite3) really changed.
CREATE TRIGGER job_counts_update AFTER UPDATE OF provider, batch, state
ON jobs
WHEN old.state IS NOT new.state OR old.provider IS NOT new.provider
     OR old.batch IS NOT new.batch
BEGIN
    UPDATE job_counts SET n = n - 1
    WHERE provider = old.provider AND batch = coalesce(old.batch, '')
      AND state = old.state;
    INSERT INTO job_counts (provider, batch, state, n)
    VALUES (new.provider, coalesce(new.batch, ''), new.state, 1)
    ON CONFLICT (provider, batch, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_done_minutes_count AFTER UPDATE OF finished_at ON jobs
WHEN new.finished_at IS NOT NULL AND old.finished_at IS NOT new.finished_at
BEGIN
    INSERT INTO job_done_minutes (provider, batch, minute, n, first_at,
                                  last_at)
    VALUES (new.provider, coalesce(new.batch, ''), new.finished_at / 60000,
            1, new.finished_at, new.finished_at)
    ON CONFLICT (provider, batch, minute) DO UPDATE
    SET n = n + 1, first_at = min(first_at, excluded.first_at),
        last_at = max(last_at, excluded.last_at);
END;

-- batch_progress keeps its columns and reads the kept counts. The jobs of
-- the last minute are estimated from the minute buckets: all of the
-- current minute, and the previous minute's count times the share of it
-- that lies in the window (a sliding window over fixed ones). The window
-- starts at the batch's first finished job when that is more recent.
-- first_created_at is the created_at of the batch's lowest id (one index
-- probe; jobs are inserted in creation order).
DROP VIEW batch_progress;
CREATE VIEW batch_progress AS
SELECT batch, provider, total, queued, running, waiting, retrying,
       succeeded, failed, cancelled, first_created_at, last_finished_at,
       done, total - done AS remaining,
       CAST(round(done_last_minute) AS INTEGER) AS done_last_minute,
       round(rate, 2) AS rate_per_s,
       CASE WHEN rate > 0 AND total > done
            THEN CAST((total - done) / rate + 0.5 AS INTEGER)
       END AS eta_s
FROM (
    SELECT batch, provider, total, queued, running, waiting, retrying,
           succeeded, failed, cancelled, first_created_at, last_finished_at,
           done, done_last_minute,
           done_last_minute * 1000.0
               / max(1000, now - max(now - 60000, coalesce(first_done, now)))
               AS rate
    FROM (
        SELECT nullif(c.batch, '') AS batch, c.provider, c.total, c.queued,
               c.running, c.waiting, c.retrying, c.succeeded, c.failed,
               c.cancelled, c.done, t.now,
               CASE WHEN c.batch = ''
                    THEN (SELECT created_at FROM jobs j
                          WHERE j.batch IS NULL AND j.provider = c.provider
                          ORDER BY j.id LIMIT 1)
                    ELSE (SELECT created_at FROM jobs j
                          WHERE j.batch = c.batch AND j.provider = c.provider
                          ORDER BY j.id LIMIT 1)
               END AS first_created_at,
               (SELECT max(last_at) FROM job_done_minutes m
                WHERE m.provider = c.provider AND m.batch = c.batch)
                   AS last_finished_at,
               (SELECT min(first_at) FROM job_done_minutes m
                WHERE m.provider = c.provider AND m.batch = c.batch)
                   AS first_done,
               coalesce((SELECT sum(CASE
                    WHEN m.minute = t.now / 60000 THEN m.n
                    ELSE m.n * (1.0 - (t.now % 60000) / 60000.0) END)
                 FROM job_done_minutes m
                 WHERE m.provider = c.provider AND m.batch = c.batch
                   AND m.minute >= t.now / 60000 - 1), 0)
                   AS done_last_minute
        FROM (
            SELECT provider, batch, sum(n) AS total,
                   sum(CASE state WHEN 'queued' THEN n ELSE 0 END) AS queued,
                   sum(CASE state WHEN 'running' THEN n ELSE 0 END)
                       AS running,
                   sum(CASE state WHEN 'waiting' THEN n ELSE 0 END)
                       AS waiting,
                   sum(CASE state WHEN 'retrying' THEN n ELSE 0 END)
                       AS retrying,
                   sum(CASE state WHEN 'succeeded' THEN n ELSE 0 END)
                       AS succeeded,
                   sum(CASE state WHEN 'failed' THEN n ELSE 0 END) AS failed,
                   sum(CASE state WHEN 'cancelled' THEN n ELSE 0 END)
                       AS cancelled,
                   sum(CASE WHEN state IN ('succeeded', 'failed',
                                           'cancelled')
                            THEN n ELSE 0 END) AS done
            FROM job_counts
            GROUP BY provider, batch
            HAVING sum(n) > 0
        ) c,
        (SELECT CAST((julianday('now') - 2440587.5) * 86400000
                     AS INTEGER) AS now) t
    )
);
