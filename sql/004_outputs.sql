-- Downloaded outputs of succeeded jobs (docs/design.md section 13). Version 4.

-- One row per output URL of a succeeded job of a provider with
-- outputs = download, written in the same transaction as the job's
-- success. pending: to fetch (again at run_after); stored: the bytes are
-- in path; failed: given up, error says why (sluicectl outputs --retry).
-- The job stays succeeded whatever happens here.
CREATE TABLE outputs (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    url          TEXT    NOT NULL,
    path         TEXT,                       -- outputs_dir/ab/abcdef... (stored)
    sha256       TEXT,                       -- hex SHA-256 of the bytes
    bytes        INTEGER,
    content_type TEXT,                       -- as the server sent it
    state        TEXT    NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'stored', 'failed')),
    error        TEXT,                       -- last failure, NULL once stored
    fetched_at   INTEGER,                    -- stored or given up at
    attempts     INTEGER NOT NULL DEFAULT 0, -- fetches started
    run_after    INTEGER NOT NULL DEFAULT 0, -- not fetched before
    lease_until  INTEGER,                    -- a daemon is fetching it
    lease_owner  TEXT,                       -- "host:pid" of that daemon
    created_at   INTEGER NOT NULL,
    UNIQUE (job_id, url)
);
-- The download claim and the drain check: pending rows by due time.
CREATE INDEX outputs_pending ON outputs (run_after) WHERE state = 'pending';
-- Counts by state (status, watch) and sluicectl outputs --state.
CREATE INDEX outputs_state ON outputs (state);
