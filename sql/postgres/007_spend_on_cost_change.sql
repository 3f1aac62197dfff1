-- The kept spend's trigger, restricted to what changes a cost. As a
-- statement trigger with transition tables (004_kept_spend.sql) it ran on
-- every UPDATE of jobs: every claim, poll claim, reclaim and lease, none
-- of which touches a cost, paid for its join of the old and new rows.
-- A statement trigger with transition tables cannot name columns, and a
-- cost changes only in the store's outcome update, one job per
-- statement: so a row trigger on UPDATE OF cost, WHEN the cost differs,
-- does the same upserts there and is not even called anywhere else
-- (bench/pg_triggers).
DROP TRIGGER job_spend_update ON jobs;
DROP FUNCTION sluice_spend_update();

CREATE FUNCTION sluice_spend_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_spend (provider, batch, spent, jobs_costed)
    VALUES (NEW.provider, coalesce(NEW.batch, ''),
            coalesce(NEW.cost, 0) - coalesce(OLD.cost, 0),
            (NEW.cost IS NOT NULL)::int - (OLD.cost IS NOT NULL)::int)
    ON CONFLICT (provider, batch) DO UPDATE
    SET spent = job_spend.spent + excluded.spent,
        jobs_costed = job_spend.jobs_costed + excluded.jobs_costed;
    INSERT INTO job_spend_minutes (provider, batch, minute, spent)
    VALUES (NEW.provider, coalesce(NEW.batch, ''), NEW.updated_at / 60000,
            coalesce(NEW.cost, 0) - coalesce(OLD.cost, 0))
    ON CONFLICT (provider, batch, minute) DO UPDATE
    SET spent = job_spend_minutes.spent + excluded.spent;
    RETURN NULL;
END $$;

CREATE TRIGGER job_spend_update AFTER UPDATE OF cost ON jobs
    FOR EACH ROW WHEN (OLD.cost IS DISTINCT FROM NEW.cost)
    EXECUTE FUNCTION sluice_spend_row();
