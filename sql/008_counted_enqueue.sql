-- Enqueue counted per statement (version 8). The store adds the jobs an
-- INSERT of up to 128 rows let through to job_counts in one statement, in
-- the same transaction, instead of a trigger running an upsert for every
-- row: the trigger cost enqueue about a tenth of its time. Every other
-- change (claims, outcomes, retry, cancel, purge, reclaims) is still
-- counted by the triggers of version 6. A row inserted into jobs by hand
-- (sqlite3) is not counted; sluicectl enqueue is the way in.
DROP TRIGGER job_counts_insert;
