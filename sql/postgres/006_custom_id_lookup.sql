-- One index fewer written per enqueued row. When a line has a custom_id
-- it is usually the job's idempotency key too, so jobs_custom_id held the
-- same text as the unique key: it now holds only the jobs whose custom_id
-- differs from their key (sluicectl enqueue --unique), and a lookup by
-- custom_id reads the unique key, which leads with idempotency_key for
-- that (the constraint keeps its name and its columns; ON CONFLICT
-- (provider, idempotency_key) still finds it). Enqueue's COPY spent about
-- a fifth of the server's time on the index dropped here
-- (bench/README.md, postgres). Both indexes are rebuilt once, under the
-- migration's lock: on a queue of many millions of rows, minutes.
ALTER TABLE jobs DROP CONSTRAINT jobs_provider_idempotency_key_key;
ALTER TABLE jobs ADD CONSTRAINT jobs_provider_idempotency_key_key
    UNIQUE (idempotency_key, provider);
DROP INDEX jobs_custom_id;
CREATE INDEX jobs_custom_id ON jobs (custom_id)
    WHERE custom_id <> idempotency_key;
