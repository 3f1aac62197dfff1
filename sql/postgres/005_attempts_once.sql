-- An attempt row is written once. A group commit whose acknowledgement is
-- lost with the connection is sent again after the reconnect (the daemon
-- cannot tell it arrived); its attempt rows then meet this key and are
-- skipped (ON CONFLICT DO NOTHING), and so are its job updates (the store
-- writes a job's outcome only while its attempt row is new).
-- One request of one job is named by its attempt number, its kind (send
-- or poll) and its times; an attempt given back (a deferral) is sent again
-- under the same number, later.
-- Rows written twice before this migration go first, the first one kept.
DELETE FROM attempts a USING attempts b
WHERE a.job_id = b.job_id AND a.attempt = b.attempt
  AND a.is_poll = b.is_poll AND a.started_at = b.started_at
  AND a.finished_at = b.finished_at AND a.id > b.id;

-- Replaces attempts_job (job_id, attempt): same leading columns, so what
-- read by job still finds it, and no second index to maintain.
DROP INDEX attempts_job;
CREATE UNIQUE INDEX attempts_job
    ON attempts (job_id, attempt, is_poll, started_at, finished_at);
