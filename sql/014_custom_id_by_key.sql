-- custom_id lookups through the key (version 14). A job's idempotency key
-- is its custom_id unless it was enqueued with --unique (docs/design.md,
-- section 4), so the unique index on (provider, idempotency_key) already
-- finds the jobs of almost every custom_id: jobs_custom_id now holds only
-- the jobs whose custom_id is not their key, and `sluicectl show
-- CUSTOM_ID` looks in both (ST_RESOLVE_CUSTOM_ID in
-- daemon/store/sqlite_query.c). Enqueue writes one B-tree fewer per job with a
-- custom_id, and the file holds one index entry fewer per such job
-- (bench/README.md).
DROP INDEX jobs_custom_id;
CREATE INDEX jobs_custom_id ON jobs (custom_id)
    WHERE custom_id IS NOT NULL AND custom_id <> idempotency_key;
