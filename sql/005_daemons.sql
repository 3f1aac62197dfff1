-- Daemons and their liveness (docs/design.md section 11). Version 5.

-- One row per running sluiced: owner is the random token its leases carry
-- (jobs.lease_owner), never host:pid (PID namespaces repeat pids). The
-- daemon writes heartbeat_at every second and only ever increases it (a
-- wall clock stepped back still changes it), so another daemon judges
-- liveness by watching it change on its own monotonic clock, never by
-- comparing it with its wall clock. A clean stop deletes the row; a daemon
-- judged dead has its row deleted and its leases taken back in one
-- transaction.
CREATE TABLE daemons (
    owner        TEXT    PRIMARY KEY,   -- random token, 32 hex digits
    host         TEXT    NOT NULL,      -- gethostname(), for operators
    pid          INTEGER NOT NULL,      -- in its own PID namespace
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);

