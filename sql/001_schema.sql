-- sluice schema, version 1. Names in docs/contract.md are the stable part;
-- times are unix milliseconds (INTEGER), body/result/fields are JSON text.

-- One row per logical request.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    provider        TEXT    NOT NULL,
    batch           TEXT,
    custom_id       TEXT,
    method          TEXT    NOT NULL DEFAULT 'POST',
    path            TEXT    NOT NULL,          -- under base_url, or full URL
    body            TEXT,                      -- canonical JSON, or NULL
    idempotency_key TEXT    NOT NULL,          -- the job's identity
    send_key        TEXT,                      -- derived key to send, NULL =
                                               -- send idempotency_key
    priority        INTEGER NOT NULL DEFAULT 0,
    state           TEXT    NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'waiting', 'retrying',
                         'succeeded', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0, -- charged at claim
    max_attempts    INTEGER NOT NULL DEFAULT 5,
    deferrals       INTEGER NOT NULL DEFAULT 0, -- throttles, not attempts
    run_after       INTEGER NOT NULL DEFAULT 0, -- not claimable before
    lease_until     INTEGER,                    -- NULL = no lease
    lease_owner     TEXT,                       -- "host:pid" of the holder
    remote_id       TEXT,                       -- async run id
    poll_url        TEXT,
    waiting_since   INTEGER,                    -- async run accepted at
    http_status     INTEGER,                    -- last failure ...
    error_class     TEXT,
    error_code      TEXT,
    error_message   TEXT,
    request_id      TEXT,
    fields          TEXT,                       -- per-field messages (JSON)
    result          TEXT,                       -- success body
    cost            REAL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER,                    -- terminal states only
    UNIQUE (provider, idempotency_key)
);

-- The claim: due queued/retrying jobs of one provider in claim order. Partial,
-- so finished jobs cost nothing here.
CREATE INDEX jobs_claim ON jobs (provider, priority DESC, run_after, id)
    WHERE state IN ('queued', 'retrying');
-- Counts per provider and state, the earliest run_after per state (next
-- due) and the poll claim of waiting jobs.
CREATE INDEX jobs_state ON jobs (provider, state, run_after);
-- Expired leases (reclaim); queued jobs have none and are not indexed.
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX jobs_custom_id ON jobs (custom_id) WHERE custom_id IS NOT NULL;
CREATE INDEX jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;

-- One row per request actually sent (submissions, and polls that failed).
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,           -- jobs.attempts when sent
    idempotency_key TEXT,                       -- key sent, NULL for polls
    is_poll         INTEGER NOT NULL DEFAULT 0,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER NOT NULL,
    http_status     INTEGER,                    -- 0 = no HTTP answer
    error_class     TEXT,                       -- NULL on success
    error_code      TEXT,
    error_message   TEXT,
    request_id      TEXT,
    retry_after_ms  INTEGER
);
CREATE INDEX attempts_job ON attempts (job_id, attempt);

-- The daemon's live view of each provider, written about once a second.
CREATE TABLE providers (
    name                TEXT PRIMARY KEY,
    state               TEXT    NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'paused', 'open', 'parked')),
    reason              TEXT,
    concurrency_limit   INTEGER NOT NULL DEFAULT 0,
    in_flight           INTEGER NOT NULL DEFAULT 0,
    pause_until         INTEGER,
    sent                INTEGER NOT NULL DEFAULT 0,
    succeeded           INTEGER NOT NULL DEFAULT 0,
    failed              INTEGER NOT NULL DEFAULT 0,
    throttled           INTEGER NOT NULL DEFAULT 0,
    resume_requested_at INTEGER,                -- sluicectl resume
    updated_at          INTEGER NOT NULL
);
