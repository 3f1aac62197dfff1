-- Kept spend, as sql/012_kept_spend.sql: what each provider and batch has
-- cost, kept by a statement trigger in the transaction that records a
-- cost, so the spend view reads a few rows instead of every job.
-- jobs.cost is what a job has cost over all its runs (the store adds each
-- run's cost); the trigger adds its change. Purge leaves the spend: a
-- budget counts money spent.
CREATE TABLE job_spend (
    provider    TEXT             NOT NULL,
    batch       TEXT             NOT NULL,
    spent       DOUBLE PRECISION NOT NULL,
    jobs_costed BIGINT           NOT NULL,
    PRIMARY KEY (provider, batch)
);

CREATE TABLE job_spend_minutes (
    provider TEXT             NOT NULL,
    batch    TEXT             NOT NULL,
    minute   BIGINT           NOT NULL,
    spent    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (provider, batch, minute)
);

INSERT INTO job_spend (provider, batch, spent, jobs_costed)
SELECT provider, coalesce(batch, ''), sum(cost), count(cost)
FROM jobs WHERE cost IS NOT NULL GROUP BY 1, 2;

INSERT INTO job_spend_minutes (provider, batch, minute, spent)
SELECT provider, coalesce(batch, ''),
       coalesce(finished_at, updated_at) / 60000, sum(cost)
FROM jobs WHERE cost IS NOT NULL GROUP BY 1, 2, 3;

-- One upsert per (provider, batch) and minute a statement changed costs
-- of, in key order (as the counts' triggers).
CREATE FUNCTION sluice_spend_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH d AS (
        SELECT nr.provider, coalesce(nr.batch, '') AS batch,
               nr.updated_at / 60000 AS minute,
               coalesce(nr.cost, 0) - coalesce(o.cost, 0) AS d,
               (nr.cost IS NOT NULL)::int - (o.cost IS NOT NULL)::int
                   AS costed
        FROM new_rows nr JOIN old_rows o ON o.id = nr.id
        WHERE o.cost IS DISTINCT FROM nr.cost
    ), totals AS (
        INSERT INTO job_spend (provider, batch, spent, jobs_costed)
        SELECT provider, batch, sum(d), sum(costed) FROM d
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (provider, batch) DO UPDATE
        SET spent = job_spend.spent + excluded.spent,
            jobs_costed = job_spend.jobs_costed + excluded.jobs_costed
    )
    INSERT INTO job_spend_minutes (provider, batch, minute, spent)
    SELECT provider, batch, minute, sum(d) FROM d
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (provider, batch, minute) DO UPDATE
    SET spent = job_spend_minutes.spent + excluded.spent;
    RETURN NULL;
END $$;

CREATE TRIGGER job_spend_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_spend_update();

-- The same name and columns as before, one row per provider and batch
-- with jobs or a spend; the last hour estimated from the minute buckets.
DROP VIEW spend;
CREATE VIEW spend AS
SELECT k.provider, nullif(k.batch, '') AS batch,
       coalesce(s.spent, 0) AS spent,
       coalesce((SELECT sum(CASE
                     WHEN m.minute = (t.now - 3600000) / 60000
                     THEN m.spent
                          * (1.0 - ((t.now - 3600000) % 60000) / 60000.0)
                     ELSE m.spent END)
                 FROM job_spend_minutes m
                 WHERE m.provider = k.provider AND m.batch = k.batch
                   AND m.minute >= (t.now - 3600000) / 60000), 0)
           AS spent_last_hour,
       coalesce(s.jobs_costed, 0) AS jobs_costed
FROM (SELECT provider, batch FROM job_counts
      GROUP BY provider, batch HAVING sum(n) > 0
      UNION
      SELECT provider, batch FROM job_spend) AS k
     LEFT JOIN job_spend s
         ON s.provider = k.provider AND s.batch = k.batch
     CROSS JOIN (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                        AS now) AS t;
