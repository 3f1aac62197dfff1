-- Kept spend (version 12, docs/design.md section 13): what each provider
-- and batch has cost, kept like the counts of version 6, by a trigger in
-- the transaction that records a cost. The spend view of version 7 summed
-- jobs.cost over every job: sluicectl status and watch took 12 s at ten
-- million jobs. It now reads these few rows.
--
-- jobs.cost is what a job has cost over all its runs (the store adds each
-- run's cost to it): a job retried after a costed run and costed again has
-- cost twice. The trigger adds the change of jobs.cost, so without purge
-- the kept spend is the sum of jobs.cost. Purge deletes jobs and leaves
-- the spend: a budget counts money spent, and a purge does not give it
-- back. A job inserted by hand (sqlite3) with a cost is not counted.

-- Spend and jobs costed per provider and batch ('' for jobs without one).
CREATE TABLE job_spend (
    provider    TEXT    NOT NULL,
    batch       TEXT    NOT NULL,
    spent       REAL    NOT NULL,
    jobs_costed INTEGER NOT NULL,
    PRIMARY KEY (provider, batch)
) WITHOUT ROWID;

-- Spend per provider, batch and minute the cost was recorded in
-- (updated_at / 60000): the spend of the last hour.
CREATE TABLE job_spend_minutes (
    provider TEXT    NOT NULL,
    batch    TEXT    NOT NULL,
    minute   INTEGER NOT NULL,
    spent    REAL    NOT NULL,
    PRIMARY KEY (provider, batch, minute)
) WITHOUT ROWID;

INSERT INTO job_spend (provider, batch, spent, jobs_costed)
SELECT provider, coalesce(batch, ''), total(cost), count(cost)
FROM jobs WHERE cost IS NOT NULL GROUP BY 1, 2;

-- Costs recorded before this version: at the job's finish, as the spend
-- view of version 7 counted them.
INSERT INTO job_spend_minutes (provider, batch, minute, spent)
SELECT provider, coalesce(batch, ''),
       coalesce(finished_at, updated_at) / 60000, total(cost)
FROM jobs WHERE cost IS NOT NULL GROUP BY 1, 2, 3;

CREATE TRIGGER job_spend_cost AFTER UPDATE OF cost ON jobs
WHEN old.cost IS NOT new.cost
BEGIN
    INSERT INTO job_spend (provider, batch, spent, jobs_costed)
    VALUES (new.provider, coalesce(new.batch, ''),
            coalesce(new.cost, 0) - coalesce(old.cost, 0),
            (new.cost IS NOT NULL) - (old.cost IS NOT NULL))
    ON CONFLICT (provider, batch) DO UPDATE
    SET spent = spent + excluded.spent,
        jobs_costed = jobs_costed + excluded.jobs_costed;
    INSERT INTO job_spend_minutes (provider, batch, minute, spent)
    VALUES (new.provider, coalesce(new.batch, ''), new.updated_at / 60000,
            coalesce(new.cost, 0) - coalesce(old.cost, 0))
    ON CONFLICT (provider, batch, minute) DO UPDATE
    SET spent = spent + excluded.spent;
END;

-- The same name and columns as version 7, one row per provider and batch
-- with jobs or a spend (a purged batch keeps its row). The last hour is
-- estimated from the minute buckets as batch_progress estimates its last
-- minute: the minutes inside the window, and the oldest one by the share
-- of it the window covers.
DROP VIEW spend;
CREATE VIEW spend AS
SELECT k.provider, nullif(k.batch, '') AS batch,
       coalesce(s.spent, 0.0) AS spent,
       coalesce((SELECT total(CASE
                     WHEN m.minute = (t.now - 3600000) / 60000
                     THEN m.spent
                          * (1.0 - ((t.now - 3600000) % 60000) / 60000.0)
                     ELSE m.spent END)
                 FROM job_spend_minutes m
                 WHERE m.provider = k.provider AND m.batch = k.batch
                   AND m.minute >= (t.now - 3600000) / 60000), 0.0)
           AS spent_last_hour,
       coalesce(s.jobs_costed, 0) AS jobs_costed
FROM (SELECT provider, batch FROM job_counts
      GROUP BY provider, batch HAVING sum(n) > 0
      UNION
      SELECT provider, batch FROM job_spend) k
     LEFT JOIN job_spend s
         ON s.provider = k.provider AND s.batch = k.batch,
     (SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
             AS now) t;
