-- Triage views, so that sqlite3 users get the answers sluicectl gives.

-- The last failure of every failed job (copied onto the job row).
CREATE VIEW failures AS
SELECT id, provider, batch, custom_id, http_status, error_class, error_code,
       error_message, request_id, attempts, finished_at
FROM jobs
WHERE state = 'failed';

-- Failed jobs grouped by provider, class and code; the sample is the most
-- recent failure that carries a request id (to send to the provider).
CREATE VIEW error_summary AS
SELECT provider, error_class, error_code, count(*) AS count,
       min(finished_at) AS first_seen, max(finished_at) AS last_seen,
       max(CASE WHEN rn = 1 THEN request_id END) AS sample_request_id,
       max(CASE WHEN rn = 1 THEN error_message END) AS sample_message
FROM (
    SELECT provider, error_class, error_code, error_message, request_id,
           finished_at,
           row_number() OVER (
               PARTITION BY provider, error_class, error_code
               ORDER BY request_id IS NULL, finished_at DESC, id DESC) AS rn
    FROM jobs
    WHERE state = 'failed'
)
GROUP BY provider, error_class, error_code;

-- Progress per batch and provider.
CREATE VIEW batch_progress AS
SELECT batch, provider, count(*) AS total,
       sum(state = 'queued') AS queued,
       sum(state = 'running') AS running,
       sum(state = 'waiting') AS waiting,
       sum(state = 'retrying') AS retrying,
       sum(state = 'succeeded') AS succeeded,
       sum(state = 'failed') AS failed,
       sum(state = 'cancelled') AS cancelled,
       min(created_at) AS first_created_at,
       max(finished_at) AS last_finished_at
FROM jobs
GROUP BY batch, provider;
