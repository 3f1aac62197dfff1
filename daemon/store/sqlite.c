/*
 * sqlite: the SQLite backend of the store (backend.h), the embedded
 * default: one file on one host.
 *
 * How it works. store_open applies the embedded sql/ files above PRAGMA
 * user_version (file N is migration N, each in its own transaction with the
 * version bump, so two processes opening a fresh file cannot both apply
 * one), then prepares every statement once; calls bind, step and reset.
 *
 * A claim is one UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING: the
 * write lock makes it atomic across connections and processes, so two
 * daemons never get the same job, and the attempt is charged at claim time
 * (a job that crashes the daemon still runs out of attempts). Waiting jobs
 * due for a poll are leased by a second UPDATE that leaves state and
 * attempts alone.
 *
 * Outcomes are buffered by store_record (strings copied) and written by
 * store_flush in one BEGIN IMMEDIATE transaction: one fsync for hundreds of
 * outcomes. When another connection holds the write lock (an operator in
 * sqlite3, sluicectl enqueue), the flush rolls back, keeps the buffer and
 * returns -EBUSY; the next flush writes everything. Nothing is dropped.
 *
 * Rejected: an outcome per autocommit statement (an fsync per job caps the
 * daemon at a few hundred jobs/s); SELECT then UPDATE for claims (needs an
 * explicit transaction and races between daemons for nothing).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "sluice/clock.h"
#include "sluice/fstype.h"
#include "sluice/jobspec.h"
#include "sluice/log.h"
#include "sluice/permit.h"
#include "sluice/xmalloc.h"

/* Generated from sql/ by cmake/embed_sql.cmake, in file-name order. */
struct sql_file {
    const char *name;
    const char *text;
};
extern const struct sql_file sql_files[];
extern const size_t sql_nfiles;

/* 5 s: long enough to ride out an operator's short write, short enough
 * that sluicectl reports a held lock instead of hanging. */
#define STORE_BUSY_TIMEOUT_MS 5000
/* 64 MiB of page cache: an enqueue of a million jobs touches the table and
 * five indexes; with the 2 MiB default, pages spill to the WAL mid-
 * transaction and inserts slow down several times. */
#define STORE_CACHE_KIB 65536

/* The columns a claim returns, in the order claim_row reads them. The key
 * to send is the derived one when a failed run was retried (send_key). */
#define CLAIM_COLUMNS                                                          \
    "id, provider, batch, custom_id, method, path, body, "                     \
    "COALESCE(send_key, idempotency_key), "                                    \
    "state, attempts, max_attempts, deferrals, remote_id, poll_url, "          \
    "created_at, waiting_since, priority, run_after, idempotency_key"

/* Returning an expired (or a dead owner's) running job to the queue. The
 * attempt stays charged (docs/design.md §3); a job whose every attempt ended in
 * a lost lease has no attempt left and fails here, or it would be claimed
 * beyond max_attempts. ?1 is now. */
#define RECLAIM_RUNNING_SET                                                    \
    "UPDATE jobs SET "                                                         \
    "state = CASE WHEN attempts >= max_attempts THEN 'failed' "                \
    "  ELSE 'queued' END, "                                                    \
    "error_class = CASE WHEN attempts >= max_attempts THEN 'timeout' "         \
    "  ELSE error_class END, "                                                 \
    "error_code = CASE WHEN attempts >= max_attempts "                         \
    "  THEN 'lease_expired' ELSE error_code END, "                             \
    "error_message = CASE WHEN attempts >= max_attempts "                      \
    "  THEN 'claim lease lost with no attempt left (daemon stopped "           \
    "mid-request?)' ELSE error_message END, "                                  \
    "finished_at = CASE WHEN attempts >= max_attempts THEN ?1 "                \
    "  ELSE NULL END, "                                                        \
    "run_after = ?1, lease_until = NULL, lease_owner = NULL, "                 \
    "updated_at = ?1 "

/* A running job of a provider without idempotency whose lease is taken
 * back: its request may have reached the provider, and sending it again
 * could run it twice, so it fails for the operator (docs/design.md §4).
 * Our crash is not the job's fault: the attempt is given back. ?1 is now,
 * ?3 the JSON array of such providers (store_set_unsafe_resend). */
#define RECLAIM_UNKNOWN_SET                                                    \
    "UPDATE jobs SET state = 'failed', attempts = MAX(attempts - 1, 0), "      \
    "error_class = 'unknown_outcome', error_code = 'lease_lost', "             \
    "error_message = 'the request may have reached the provider, which "       \
    "takes no idempotency key: not sent again; check with the provider, "      \
    "then sluicectl retry', http_status = NULL, request_id = NULL, "           \
    "finished_at = ?1, lease_until = NULL, lease_owner = NULL, "               \
    "updated_at = ?1 "                                                         \
    "WHERE provider IN (SELECT value FROM json_each(?3)) "                     \
    "AND state = 'running' "

/* Right-hand sides see the old row: "state" is the state before. A job
 * an operator cancelled meanwhile stays cancelled, but what the
 * provider answered is still kept. Mode ?7: 0 keeps the last failure,
 * 1 records a failure, 2 a success (clears it). ?20: whether ?2 is a
 * terminal state, bound rather than written "?2 IN (…)": an IN list of
 * three or more values costs SQLite an ephemeral table built at every
 * execution, about 2 us a job. The statement is cut in three so that
 * the cost can be left out (ST_UPDATE_JOB_NO_COST). */
#define UPDATE_JOB_SET                                                         \
    "UPDATE jobs SET "                                                         \
    "state = CASE WHEN state = 'cancelled' THEN state ELSE ?2 END, "           \
    "run_after = ?3, "                                                         \
    "attempts = MAX(attempts - ?4, 0), "                                       \
    "deferrals = ?5, "                                                         \
    "send_key = COALESCE(?6, send_key), "                                      \
    "http_status = CASE ?7 WHEN 0 THEN http_status ELSE ?8 END, "              \
    "error_class = CASE ?7 WHEN 0 THEN error_class ELSE ?9 END, "              \
    "error_code = CASE ?7 WHEN 0 THEN error_code ELSE ?10 END, "               \
    "error_message = CASE ?7 WHEN 0 THEN error_message ELSE ?11 END, "         \
    "request_id = CASE ?7 WHEN 0 THEN request_id ELSE ?12 END, "               \
    "fields = CASE ?7 WHEN 0 THEN fields ELSE ?13 END, "                       \
    "result = COALESCE(?14, result), "
#define UPDATE_JOB_COST                                                        \
    "cost = CASE WHEN ?15 IS NULL THEN cost "                                  \
    "  ELSE COALESCE(cost, 0) + ?15 END, "
#define UPDATE_JOB_REST                                                        \
    "remote_id = COALESCE(?16, remote_id), "                                   \
    "poll_url = COALESCE(?17, poll_url), "                                     \
    "waiting_since = CASE WHEN ?2 = 'waiting' "                                \
    "  THEN COALESCE(waiting_since, ?18) "                                     \
    "  WHEN ?2 IN ('queued', 'retrying') THEN NULL "                           \
    "  ELSE waiting_since END, "                                               \
    "finished_at = CASE WHEN state = 'cancelled' "                             \
    "  THEN COALESCE(finished_at, ?18) "                                       \
    "  WHEN ?20 THEN ?18 "                                                     \
    "  ELSE NULL END, "                                                        \
    "lease_until = CASE WHEN state <> 'cancelled' AND ?2 = 'running' "         \
    "  THEN lease_until ELSE NULL END, "                                       \
    "lease_owner = CASE WHEN state <> 'cancelled' AND ?2 = 'running' "         \
    "  THEN lease_owner ELSE NULL END, "                                       \
    "updated_at = ?18 "                                                        \
    "WHERE id = ?1 AND (?19 IS NULL OR lease_owner = ?19 "                     \
    "  OR (state = 'cancelled' AND lease_owner IS NULL))"

/* Lease expiry is for owners that are not registered in daemons (leases
 * from before that table): a registered daemon's leases go only when it is
 * judged dead, never because a wall clock says they expired. */
#define UNREGISTERED_OWNER                                                     \
    "AND (lease_owner IS NULL "                                                \
    "  OR lease_owner NOT IN (SELECT owner FROM daemons))"

/* The filter of struct store_select, by parameter name; select_bind
 * binds the ones a statement has. :states is ",failed,cancelled,". */
#define SELECT_WHERE                                                           \
    "(:states IS NULL OR instr(:states, ',' || state || ',') > 0) "            \
    "AND (:provider IS NULL OR provider = :provider) "                         \
    "AND (:batch IS NULL OR batch = :batch) "                                  \
    "AND (:class IS NULL OR error_class = :class) "                            \
    "AND (:code IS NULL OR error_code = :code) "                               \
    "AND (:since IS NULL OR finished_at >= :since) "                           \
    "AND (:before IS NULL OR finished_at < :before) "

/* Back to the queue as if new, but with its identity and last failure:
 * ?1 is now. remote_id goes too: the submission is sent again. The key to
 * send stays the last one sent (a provider that ran it answers with that
 * result, never twice) unless its run definitively failed (the poll was
 * answered, with the run's failure): the provider caches that failure, so
 * the next derived key goes out, "<key>.N" one past the last
 * (docs/design.md §4).
 * job_derived_key() derives the same way. */
#define RETRY_SET                                                              \
    "UPDATE jobs SET state = 'queued', attempts = 0, deferrals = 0, "          \
    "send_key = CASE WHEN remote_id IS NOT NULL "                              \
    "  AND http_status BETWEEN 200 AND 299 AND error_class IS NOT NULL "       \
    "  AND error_class <> 'protocol' "                                         \
    "  THEN idempotency_key || '.' || (1 + CASE WHEN send_key IS NULL "        \
    "    THEN 1 ELSE CAST(substr(send_key, length(idempotency_key) + 2) "      \
    "    AS INTEGER) END) "                                                    \
    "  ELSE send_key END, "                                                    \
    "run_after = ?1, lease_until = NULL, "                                     \
    "lease_owner = NULL, remote_id = NULL, poll_url = NULL, "                  \
    "waiting_since = NULL, finished_at = NULL, updated_at = ?1 "               \
    "WHERE state IN ('failed', 'cancelled') "

#define CANCEL_SET                                                             \
    "UPDATE jobs SET state = 'cancelled', finished_at = ?1, "                  \
    "lease_until = NULL, lease_owner = NULL, updated_at = ?1 "                 \
    "WHERE state IN (" JOB_UNFINISHED_SQL ") "

/* The priorities of provider ?1's queued and retrying jobs, highest
 * first, as the rows p of "level": each one an index search in jobs_claim
 * (which is ordered by priority first), so a minimum over those jobs
 * costs a search per priority in use, not a walk of the queue. The
 * queued jobs are in no other index (sql/015_state_index_unqueued.sql). */
#define CLAIM_LEVELS                                                           \
    "WITH RECURSIVE level(p) AS ("                                             \
    "  SELECT (SELECT priority FROM jobs WHERE provider = ?1 "                 \
    "    AND state IN ('queued', 'retrying') ORDER BY priority DESC LIMIT 1) " \
    "  UNION ALL SELECT (SELECT priority FROM jobs WHERE provider = ?1 "       \
    "    AND state IN ('queued', 'retrying') AND priority < level.p "          \
    "    ORDER BY priority DESC LIMIT 1) FROM level "                          \
    "  WHERE level.p IS NOT NULL) "

/* The oldest finished jobs purge takes in one transaction; attempts and
 * jobs are deleted by the same subquery in the same transaction, so they
 * see the same rows. Walks jobs_finished. */
#define PURGE_PICK                                                             \
    "(SELECT id FROM jobs WHERE finished_at < :before "                        \
    "  AND state IN (" JOB_TERMINAL_SQL ") "                                   \
    "  AND (:states IS NULL OR instr(:states, ',' || state || ',') > 0) "      \
    "  ORDER BY finished_at, id LIMIT :limit)"

/* Rows per statement of store_insert_jobs: 128 × 10 parameters stays far
 * under SQLite's variable limit, and past ~100 rows the per-statement
 * cost is already noise next to the B-tree work. */
#define STORE_INSERT_ROWS 128
#define INSERT_JOB_HEAD                                                        \
    "INSERT INTO jobs (provider, batch, custom_id, method, path, body, "       \
    "idempotency_key, priority, max_attempts, state, run_after, "              \
    "created_at, updated_at) VALUES "
#define INSERT_JOB_TAIL " ON CONFLICT (provider, idempotency_key) DO NOTHING"

/* incremental_vacuum step of purge: 512 pages (2 MiB at the default page
 * size) per transaction. The first steps after a large delete hold the
 * write lock longest: with 2048-page steps the first took 0.23 s at 2M
 * jobs and 1.4-3 s at 10M (bench/scale); with 512 no vacuum step of the
 * 2M purge held a writer off more than 0.1 s. */
#define STORE_VACUUM_STEP 512
/* The gap purge leaves between two of its write transactions. SQLite
 * queues nobody for the write lock: a writer waiting in the busy handler
 * (which polls every 100 ms once it has waited a while) could miss every
 * short gap while purge takes the lock again and again (bench/scale saw
 * the daemon's kind of write held off 4 s by steps of 80 ms each). A gap
 * as long as that poll lets every waiter in. */
#define STORE_PURGE_GAP_MS 100

/* Every prepared statement; SQL text in stmt_sql below, same order. */
enum stmt {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_INSERT_JOB,
    ST_COUNT_INSERTED,
    ST_UNKNOWN_EXPIRED,
    ST_UNKNOWN_OWNER,
    ST_RECLAIM_RUNNING,
    ST_RECLAIM_POLLS,
    ST_RECLAIM_OWNER_RUNNING,
    ST_RECLAIM_OWNER_POLLS,
    ST_DAEMON_REGISTER,
    ST_DAEMON_BEAT,
    ST_DAEMONS,
    ST_DAEMON_HEARTBEAT,
    ST_DAEMON_DELETE,
    ST_PERMITS_DELETE,
    ST_PERMIT_VIEW,
    ST_PERMIT_POOL,
    ST_PERMIT_SET,
    ST_BUCKET_GET,
    ST_BUCKET_PUT,
    ST_CLAIM_WAITING,
    ST_CLAIM,
    ST_NEXT_DUE,
    ST_UNFINISHED,
    ST_HAS_UNFINISHED,
    ST_COUNT_WAITING,
    ST_UNFINISHED_BY_PROVIDER,
    ST_COUNTS,
    ST_DATA_VERSION,
    ST_UPDATE_JOB,
    ST_UPDATE_JOB_NO_COST,
    ST_INSERT_ATTEMPT,
    ST_INSERT_ATTEMPT_WRITTEN,
    ST_JOB_STATE,
    ST_PROVIDER_PUT,
    ST_PROVIDER_GET,
    ST_PROVIDER_RESUME,
    ST_STATE_COUNTS,
    ST_BATCHES,
    ST_LANES,
    ST_JOBS,
    ST_JOB_BY_ID,
    ST_ATTEMPTS,
    ST_FAILURES,
    ST_RESOLVE_ID,
    ST_RESOLVE_CUSTOM_ID,
    ST_RETRY_ID,
    ST_RETRY_WHERE,
    ST_CANCEL_ID,
    ST_CANCEL_WHERE,
    ST_EXPORT,
    ST_PURGE_ATTEMPTS,
    ST_PURGE_JOBS,
    ST_AUTO_VACUUM,
    ST_FREELIST,
    ST_PROGRESS_BATCH,
    ST_OLDEST_QUEUED,
    ST_CLAIM_EXCEPT,
    ST_SPEND_PROVIDER,
    ST_SPEND_BATCH,
    ST_BATCH_BUDGET_SET,
    ST_BATCH_BUDGETS,
    ST_SPEND_ROWS,
    ST_BATCH_STATE,
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_INSERT_JOB] =
        "INSERT INTO jobs (provider, batch, custom_id, method, path, body, "
        "idempotency_key, priority, max_attempts, state, run_after, "
        "created_at, updated_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?10, ?10) "
        "ON CONFLICT (provider, idempotency_key) DO NOTHING",
    /* Enqueued jobs are counted here, once per statement of inserts,
     * rather than by a trigger per row (sql/008_counted_enqueue.sql). */
    [ST_COUNT_INSERTED] =
        "INSERT INTO job_counts (provider, batch, state, n) "
        "VALUES (?1, coalesce(?2, ''), 'queued', ?3) "
        "ON CONFLICT (provider, batch, state) DO UPDATE SET n = n + ?3",
    [ST_UNKNOWN_EXPIRED] = RECLAIM_UNKNOWN_SET
        "AND lease_until <= ?1 " UNREGISTERED_OWNER,
    [ST_UNKNOWN_OWNER] = RECLAIM_UNKNOWN_SET
        "AND lease_until IS NOT NULL AND lease_owner = ?2",
    [ST_RECLAIM_RUNNING] = RECLAIM_RUNNING_SET
        "WHERE state = 'running' AND lease_until <= ?1 " UNREGISTERED_OWNER,
    [ST_RECLAIM_POLLS] =
        "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
        "WHERE state = 'waiting' AND lease_until <= ?1 " UNREGISTERED_OWNER,
    [ST_RECLAIM_OWNER_RUNNING] =
        RECLAIM_RUNNING_SET "WHERE state = 'running' "
                            "AND lease_until IS NOT NULL AND lease_owner = ?2",
    [ST_RECLAIM_OWNER_POLLS] =
        "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
        "WHERE state = 'waiting' AND lease_until IS NOT NULL "
        "AND lease_owner = ?2",
    [ST_DAEMON_REGISTER] =
        "INSERT INTO daemons (owner, host, pid, started_at, heartbeat_at) "
        "VALUES (?1, ?2, ?3, ?4, ?4)",
    /* + 1: a beat changes the row even when the wall clock went back. */
    [ST_DAEMON_BEAT] = "UPDATE daemons SET heartbeat_at = "
                       "MAX(?2, heartbeat_at + 1) WHERE owner = ?1",
    [ST_DAEMONS] = "SELECT owner, host, pid, started_at, heartbeat_at "
                   "FROM daemons ORDER BY owner",
    [ST_DAEMON_HEARTBEAT] = "SELECT heartbeat_at FROM daemons WHERE owner = ?1",
    /* ?2 like the lease statements that run beside it (daemon_reap) */
    [ST_DAEMON_DELETE] = "DELETE FROM daemons WHERE owner = ?2",
    [ST_PERMITS_DELETE] = "DELETE FROM permits WHERE owner = ?2",
    [ST_PERMIT_VIEW] =
        "INSERT INTO permits (provider, owner, cap, rate) "
        "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (provider, owner) "
        "DO UPDATE SET cap = excluded.cap, rate = excluded.rate",
    /* Live daemons only: a row whose owner is gone holds nothing. */
    [ST_PERMIT_POOL] =
        "SELECT COALESCE(SUM(CASE WHEN p.owner <> ?2 THEN p.slots END), 0), "
        "MIN(NULLIF(p.cap, 0)), MIN(NULLIF(p.rate, 0)), "
        "COUNT(CASE WHEN p.owner <> ?2 AND (p.slots > 0 OR p.unmet > 0) "
        "  THEN 1 END), "
        "COUNT(CASE WHEN p.owner <> ?2 AND p.unmet > 0 THEN 1 END) "
        "FROM permits p JOIN daemons d ON d.owner = p.owner "
        "WHERE p.provider = ?1",
    [ST_PERMIT_SET] = "UPDATE permits SET slots = ?3, unmet = ?4 "
                      "WHERE provider = ?1 AND owner = ?2",
    [ST_BUCKET_GET] = "SELECT rate_tokens, rate_tokens_at FROM providers "
                      "WHERE name = ?1",
    [ST_BUCKET_PUT] =
        "INSERT INTO providers (name, updated_at, rate_tokens, "
        "rate_tokens_at) VALUES (?1, ?3, ?2, ?3) ON CONFLICT (name) "
        "DO UPDATE SET rate_tokens = excluded.rate_tokens, "
        "rate_tokens_at = excluded.rate_tokens_at",
    /* "state <> 'queued'": jobs_state's own WHERE, which SQLite needs
     * to see before it reads that index (sql/015). */
    [ST_CLAIM_WAITING] =
        "UPDATE jobs SET lease_until = ?1, lease_owner = ?2, updated_at = ?3 "
        "WHERE id IN (SELECT id FROM jobs "
        "  WHERE provider = ?4 AND state = 'waiting' "
        "  AND state <> 'queued' AND run_after <= ?3 "
        "  AND (lease_until IS NULL OR (lease_until <= ?3 "
        "    " UNREGISTERED_OWNER ")) "
        "  ORDER BY run_after, id LIMIT ?5) "
        "RETURNING " CLAIM_COLUMNS,
    [ST_CLAIM] = "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                 "lease_until = ?1, lease_owner = ?2, updated_at = ?3 "
                 "WHERE id IN (SELECT id FROM jobs "
                 "  WHERE provider = ?4 AND state IN ('queued', 'retrying') "
                 "  AND run_after <= ?3 "
                 "  ORDER BY priority DESC, run_after, id LIMIT ?5) "
                 "RETURNING " CLAIM_COLUMNS,
    /* The first due of the queued and retrying jobs, one priority
     * level at a time (CLAIM_LEVELS), and of the unleased waiting ones
     * (jobs_state). */
    [ST_NEXT_DUE] =
        CLAIM_LEVELS "SELECT MIN(due) FROM ("
        "  SELECT (SELECT run_after FROM jobs WHERE provider = ?1 "
        "    AND state IN ('queued', 'retrying') AND priority = level.p "
        "    ORDER BY run_after LIMIT 1) AS due FROM level "
        "  UNION ALL SELECT MIN(run_after) FROM jobs "
        "    WHERE provider = ?1 AND state = 'waiting' "
        "    AND state <> 'queued' "
        "    AND (lease_until IS NULL OR (lease_until <= ?2 "
        "      " UNREGISTERED_OWNER ")))",
    /* The kept counts (sql/006_counts.sql): a few rows, not the queue. */
    [ST_UNFINISHED] =
        "SELECT coalesce(sum(n), 0) FROM job_counts WHERE provider = ?1 "
        "AND state IN (" JOB_UNFINISHED_SQL ")",
    /* EXISTS stops at the first row: the drain check runs four times a
     * second. */
    [ST_HAS_UNFINISHED] =
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE provider = ?1 "
        "  AND state IN ('queued', 'retrying')) "
        "OR EXISTS (SELECT 1 FROM jobs WHERE provider = ?1 "
        "  AND state IN ('running', 'waiting') AND state <> 'queued')",
    [ST_COUNT_WAITING] = "SELECT coalesce(sum(n), 0) FROM job_counts "
                         "WHERE provider = ?1 AND state = 'waiting'",
    [ST_UNFINISHED_BY_PROVIDER] =
        "SELECT provider, sum(n) FROM job_counts "
        "WHERE state IN (" JOB_UNFINISHED_SQL ") "
        "GROUP BY provider HAVING sum(n) > 0 ORDER BY provider",
    [ST_COUNTS] = "SELECT provider, nullif(batch, ''), state, n "
                  "FROM job_counts WHERE n > 0 "
                  "ORDER BY provider, batch, state",
    [ST_DATA_VERSION] = "PRAGMA data_version",
    [ST_UPDATE_JOB] = UPDATE_JOB_SET UPDATE_JOB_COST UPDATE_JOB_REST,
    /* Without cost in the SET list the spend trigger (sql/012) is not
     * even started, for an outcome without a cost (most of them). */
    [ST_UPDATE_JOB_NO_COST] = UPDATE_JOB_SET UPDATE_JOB_REST,
    /* Unless the job was purged: nothing to attach the attempt to. */
    [ST_INSERT_ATTEMPT] =
        "INSERT INTO attempts (job_id, attempt, idempotency_key, started_at, "
        "finished_at, http_status, error_class, error_code, error_message, "
        "request_id, retry_after_ms, is_poll) "
        "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12 "
        "WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)",
    /* The job's row was just updated: it is there, nothing to look up. */
    [ST_INSERT_ATTEMPT_WRITTEN] =
        "INSERT INTO attempts (job_id, attempt, idempotency_key, started_at, "
        "finished_at, http_status, error_class, error_code, error_message, "
        "request_id, retry_after_ms, is_poll) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [ST_JOB_STATE] = "SELECT state FROM jobs WHERE id = ?1",
    [ST_PROVIDER_PUT] =
        "INSERT INTO providers (name, state, reason, concurrency_limit, "
        "in_flight, pause_until, sent, succeeded, failed, throttled, "
        "updated_at, rate_per_s, rate_source, token_limit, "
        "tokens_available) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, "
        "?11, ?12, ?13, ?14, ?15) "
        "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
        "reason = excluded.reason, "
        "concurrency_limit = excluded.concurrency_limit, "
        "in_flight = excluded.in_flight, pause_until = excluded.pause_until, "
        "sent = excluded.sent, succeeded = excluded.succeeded, "
        "failed = excluded.failed, throttled = excluded.throttled, "
        "updated_at = excluded.updated_at, rate_per_s = excluded.rate_per_s, "
        "rate_source = excluded.rate_source, "
        "token_limit = excluded.token_limit, "
        "tokens_available = excluded.tokens_available",
    [ST_PROVIDER_GET] =
        "SELECT concurrency_limit, resume_requested_at FROM providers "
        "WHERE name = ?1",
    [ST_PROVIDER_RESUME] =
        "UPDATE providers SET resume_requested_at = ?2 WHERE name = ?1",
    [ST_STATE_COUNTS] =
        "SELECT provider, state, sum(n) FROM job_counts "
        "GROUP BY provider, state HAVING sum(n) > 0",
    [ST_BATCHES] = "SELECT * FROM batch_progress ORDER BY batch, provider",
    [ST_LANES] = "SELECT * FROM providers ORDER BY name",
    [ST_JOBS] =
        "SELECT id, provider, batch, custom_id, method, path, "
        "idempotency_key, send_key, priority, state, attempts, max_attempts, "
        "deferrals, run_after, lease_until, lease_owner, remote_id, "
        "poll_url, waiting_since, http_status, error_class, error_code, "
        "error_message, request_id, cost, created_at, updated_at, "
        "finished_at FROM jobs "
        "WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR provider = ?2) "
        "AND (?3 IS NULL OR batch = ?3) ORDER BY id DESC LIMIT ?4",
    [ST_JOB_BY_ID] = "SELECT * FROM jobs WHERE id = ?1",
    [ST_ATTEMPTS] = "SELECT * FROM attempts WHERE job_id = ?1 "
                    "ORDER BY attempt, started_at, id",
    /* Read from the failures view, as an operator in sqlite3 would; the
     * samples are the newest failures that carry a request id. */
    [ST_FAILURES] =
        "SELECT provider, error_class, error_code, "
        "max(CASE WHEN rn = 1 THEN http_status END) AS http_status, "
        "count(*) AS count, min(finished_at) AS first_seen, "
        "max(finished_at) AS last_seen, "
        "max(CASE WHEN rn = 1 THEN error_message END) AS message, "
        "json_group_array(request_id) FILTER "
        "  (WHERE rn <= 3 AND request_id IS NOT NULL) "
        "  AS sample_request_ids, "
        "max(CASE WHEN rn = 1 THEN id END) AS sample_job_id "
        "FROM (SELECT *, row_number() OVER ("
        "    PARTITION BY provider, error_class, error_code "
        "    ORDER BY request_id IS NULL, finished_at DESC, id DESC) AS rn "
        "  FROM failures "
        "  WHERE (:provider IS NULL OR provider = :provider) "
        "  AND (:batch IS NULL OR batch = :batch) "
        "  AND (:since IS NULL OR finished_at >= :since)) "
        "GROUP BY provider, error_class, error_code "
        "ORDER BY count DESC, provider, error_class, error_code",
    [ST_RESOLVE_ID] = "SELECT id FROM jobs WHERE id = ?1",
    /* custom_id is unique per provider only: the newest wins. A job's
     * custom_id is its key (found per provider through the unique index;
     * job_counts names every provider with jobs) unless it was enqueued
     * with --unique (in jobs_custom_id, sql/014_custom_id_by_key.sql). */
    [ST_RESOLVE_CUSTOM_ID] =
        "SELECT id FROM ("
        "  SELECT id FROM jobs WHERE provider IN "
        "    (SELECT DISTINCT provider FROM job_counts) "
        "    AND idempotency_key = ?1 AND custom_id = ?1 "
        "  UNION ALL SELECT id FROM jobs WHERE custom_id = ?1 "
        "    AND custom_id IS NOT NULL AND custom_id <> idempotency_key) "
        "ORDER BY id DESC LIMIT 1",
    [ST_RETRY_ID] = RETRY_SET "AND id = ?2",
    [ST_RETRY_WHERE] = RETRY_SET "AND " SELECT_WHERE,
    [ST_CANCEL_ID] = CANCEL_SET "AND id = ?2",
    [ST_CANCEL_WHERE] = CANCEL_SET "AND " SELECT_WHERE,
    [ST_EXPORT] =
        "SELECT id, custom_id, provider, batch, state, http_status, "
        "error_class, error_code, error_message, request_id, result, cost, "
        "finished_at, (SELECT json_group_array(path) FROM outputs "
        "  WHERE outputs.job_id = jobs.id AND outputs.state = 'stored') "
        "  AS outputs "
        "FROM jobs WHERE " SELECT_WHERE "ORDER BY id",
    [ST_PURGE_ATTEMPTS] = "DELETE FROM attempts WHERE job_id IN " PURGE_PICK,
    [ST_PURGE_JOBS] = "DELETE FROM jobs WHERE id IN " PURGE_PICK,
    [ST_AUTO_VACUUM] = "PRAGMA auto_vacuum",
    [ST_FREELIST] = "PRAGMA freelist_count",
    [ST_PROGRESS_BATCH] =
        "SELECT * FROM batch_progress WHERE batch = ?1 ORDER BY provider",
    /* Queued jobs are due from run_after (the enqueue time, or when they
     * were handed back): the first queued job of each priority level,
     * past the retrying ones due earlier at that level. */
    [ST_OLDEST_QUEUED] =
        CLAIM_LEVELS "SELECT MIN((SELECT run_after FROM jobs "
        "  WHERE provider = ?1 AND state IN ('queued', 'retrying') "
        "  AND priority = level.p AND state = 'queued' "
        "  ORDER BY run_after LIMIT 1)) FROM level",
    /* ST_CLAIM but for jobs of the batches in ?6 (a JSON array), held
     * at their budget; jobs without a batch are never held. Its own
     * statement, so the plain claim keeps its covering index. */
    [ST_CLAIM_EXCEPT] =
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
        "lease_until = ?1, lease_owner = ?2, updated_at = ?3 "
        "WHERE id IN (SELECT id FROM jobs "
        "  WHERE provider = ?4 AND state IN ('queued', 'retrying') "
        "  AND run_after <= ?3 AND (batch IS NULL OR batch NOT IN "
        "    (SELECT value FROM json_each(?6))) "
        "  ORDER BY priority DESC, run_after, id LIMIT ?5) "
        "RETURNING " CLAIM_COLUMNS,
    /* Spend of one provider, or one batch, from the kept spend (sql/012):
     * once per capped provider or batch, when the daemon starts to watch
     * it. */
    [ST_SPEND_PROVIDER] = "SELECT total(spent), coalesce(sum(jobs_costed), 0) "
                          "FROM job_spend WHERE provider = ?1",
    [ST_SPEND_BATCH] = "SELECT total(spent), coalesce(sum(jobs_costed), 0) "
                       "FROM job_spend WHERE batch = ?1",
    [ST_BATCH_BUDGET_SET] =
        "INSERT INTO batches (name, budget, updated_at) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (name) DO UPDATE SET budget = excluded.budget, "
        "state = 'active', reason = NULL, updated_at = excluded.updated_at",
    [ST_BATCH_BUDGETS] = "SELECT name, budget FROM batches "
                         "WHERE budget IS NOT NULL ORDER BY name",
    [ST_SPEND_ROWS] =
        "SELECT s.provider, s.batch, s.spent, s.spent_last_hour, "
        "  b.budget AS batch_budget, b.state AS batch_state, "
        "  b.reason AS batch_reason FROM spend s "
        "LEFT JOIN batches b ON b.name = s.batch "
        "WHERE (?1 IS NULL OR s.batch = ?1) "
        "AND (s.jobs_costed > 0 OR b.budget IS NOT NULL) "
        "ORDER BY s.provider, s.batch",
    [ST_BATCH_STATE] = "UPDATE batches SET state = ?2, reason = ?3, "
                       "updated_at = ?4 WHERE name = ?1",
};

/* The statements of the outputs table (docs/design.md §13), prepared with the
 * others. A download's lease is its claim: a row is fetched by one daemon
 * at a time, and a lease that outlives its daemon is freed like a job's. */
enum ostmt {
    OS_INSERT,
    OS_CLAIM,
    OS_RECORD,
    OS_NEXT_DUE,
    OS_COUNTS,
    OS_LIST,
    OS_RETRY,
    OS_RELEASE_EXPIRED,
    OS_RELEASE_OWNER,
    OS_COUNT
};

static const char *const ostmt_sql[OS_COUNT] = {
    /* Only for a job that did succeed: an operator's cancel that raced
     * the answer keeps the job cancelled, and its outputs unfetched. */
    [OS_INSERT] =
        "INSERT INTO outputs (job_id, url, run_after, created_at) "
        "SELECT ?1, ?2, ?3, ?3 WHERE EXISTS (SELECT 1 FROM jobs "
        "  WHERE id = ?1 AND state = 'succeeded') "
        "ON CONFLICT (job_id, url) DO NOTHING",
    [OS_CLAIM] =
        "UPDATE outputs SET attempts = attempts + 1, lease_until = ?1, "
        "lease_owner = ?2 "
        "WHERE id IN (SELECT id FROM outputs WHERE state = 'pending' "
        "  AND run_after <= ?3 AND (lease_until IS NULL OR lease_until <= ?3) "
        "  ORDER BY run_after, id LIMIT ?4) "
        "RETURNING id, job_id, url, attempts, "
        "(SELECT provider FROM jobs WHERE jobs.id = outputs.job_id)",
    [OS_RECORD] =
        "UPDATE outputs SET state = ?2, path = ?3, sha256 = ?4, bytes = ?5, "
        "content_type = ?6, error = ?7, "
        "fetched_at = CASE WHEN ?2 = 'pending' THEN fetched_at ELSE ?8 END, "
        "run_after = ?9, attempts = MAX(attempts - ?10, 0), "
        "lease_until = NULL, lease_owner = NULL "
        "WHERE id = ?1 AND lease_owner = ?11",
    [OS_NEXT_DUE] =
        "SELECT MIN(CASE WHEN lease_until > run_after THEN lease_until "
        "  ELSE run_after END) FROM outputs WHERE state = 'pending'",
    [OS_COUNTS] = "SELECT state, COUNT(*) FROM outputs GROUP BY state",
    [OS_LIST] =
        "SELECT o.id, o.job_id, j.custom_id, j.provider, j.batch, o.url, "
        "o.state, o.path, o.sha256, o.bytes, o.content_type, o.error, "
        "o.attempts, o.fetched_at FROM outputs o JOIN jobs j "
        "ON j.id = o.job_id "
        "WHERE (?1 IS NULL OR j.batch = ?1) AND (?2 IS NULL OR o.state = ?2) "
        "ORDER BY o.job_id, o.id",
    [OS_RETRY] =
        "UPDATE outputs SET state = 'pending', attempts = 0, run_after = ?1, "
        "fetched_at = NULL "
        "WHERE state = 'failed' AND (?2 IS NULL OR job_id IN "
        "  (SELECT id FROM jobs WHERE batch = ?2))",
    [OS_RELEASE_EXPIRED] =
        "UPDATE outputs SET lease_until = NULL, lease_owner = NULL "
        "WHERE lease_until <= ?1",
    [OS_RELEASE_OWNER] =
        "UPDATE outputs SET lease_until = NULL, lease_owner = NULL "
        "WHERE lease_until IS NOT NULL AND lease_owner = ?1",
};

struct sqlite_store {
    struct store base; /* first: the dispatcher's view */
    sqlite3 *db;
    char *path;
    sqlite3_stmt *st[ST_COUNT];
    sqlite3_stmt *ost[OS_COUNT];
    sqlite3_stmt *insert_many; /* STORE_INSERT_ROWS rows of INSERT_JOB */
    char *load_sql;            /* store_load: the last INSERT prepared */
    sqlite3_stmt *load_st;
    char *unsafe_json;         /* store_set_unsafe_resend, JSON array */
    /* sqlite_fail's memory of the last error it logged */
    int last_err;
    int64_t last_logged_ms;
    long repeats;
};

static struct sqlite_store *
sq(struct store *base)
{
    return (struct sqlite_store *)base;
}

/* SQLite result codes as negative errno values. */
static int
sqlite_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    case SQLITE_CANTOPEN:
        return -ENOENT;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_CONSTRAINT:
        return -EEXIST;
    case SQLITE_TOOBIG:
        return -E2BIG;
    case SQLITE_MISMATCH:
        return -EDOM;
    case SQLITE_RANGE:
        return -ERANGE;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
        return -EPROTO;
    default:
        return -EIO;
    }
}

/* Logs a failed call (busy at debug level: callers retry it) and returns
 * the errno. The same failure again within STORE_ERROR_REPEAT_MS, of any
 * call, is counted, not logged: a full disk fails every retry of a flush,
 * every claim and every heartbeat, and one line a minute says it. */
static int
sqlite_fail(struct sqlite_store *s, int rc, const char *what)
{
    int err = sqlite_errno(rc);
    int64_t now = clock_now_ms();

    if (err == -EBUSY) {
        log_debug("store: %s: %s", what, sqlite3_errmsg(s->db));
        return err;
    }
    if (err == s->last_err && now - s->last_logged_ms < STORE_ERROR_REPEAT_MS) {
        s->repeats++;
        log_debug("store: %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
        return err;
    }
    if (s->repeats > 0)
        log_error("store: %s: %s: %s (and %ld failures like it since the "
                  "last such line)",
                  s->path, what, sqlite3_errmsg(s->db), s->repeats);
    else
        log_error("store: %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
    s->last_err = err;
    s->last_logged_ms = now;
    s->repeats = 0;
    return err;
}

/* A prepared statement, reset and unbound, ready for new bindings. */
static sqlite3_stmt *
stmt(struct sqlite_store *s, enum stmt id)
{
    sqlite3_stmt *st = s->st[id];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

/* The same for a statement of the outputs table. */
static sqlite3_stmt *
ostmt(struct sqlite_store *s, enum ostmt id)
{
    sqlite3_stmt *st = s->ost[id];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

static void
bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Binds 0 as NULL: "none" for times and statuses. */
static void
bind_int64_or_null(sqlite3_stmt *st, int i, int64_t v)
{
    if (v)
        sqlite3_bind_int64(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

static char *
column_strdup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? xstrdup((const char *)t) : NULL;
}

/* Runs a statement that returns no rows. */
static int
exec_stmt(struct sqlite_store *s, enum stmt id, const char *what)
{
    sqlite3_stmt *st = stmt(s, id);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, what);
}

/* --- open and migrate --------------------------------------------------- */

static int
read_user_version(struct sqlite_store *s, int *v)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "user_version");
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "user_version");
}

/* Applies migration n (1-based) unless someone else did meanwhile. */
static int
migrate_one(struct sqlite_store *s, int n)
{
    const char *name = sql_files[n - 1].name;
    char *err = NULL, *bump;
    int rc, v;

    rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "migration: begin");
    if ((rc = read_user_version(s, &v)) < 0)
        goto fail;
    if (v >= n) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return 0;
    }
    bump = xasprintf("PRAGMA user_version = %d", n);
    rc = sqlite3_exec(s->db, sql_files[n - 1].text, NULL, NULL, &err);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, bump, NULL, NULL, &err);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, &err);
    free(bump);
    if (rc != SQLITE_OK) {
        log_error("store: %s: migration %s: %s", s->path, name,
                  err ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
        rc = sqlite_errno(rc);
        goto fail;
    }
    log_info("store: %s: applied migration %s", s->path, name);
    return 0;
fail:
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int
migrate(struct sqlite_store *s)
{
    int v, rc;

    if ((rc = read_user_version(s, &v)) < 0)
        return rc;
    if (v > (int)sql_nfiles) {
        log_error("store: %s: schema version %d is newer than this build "
                  "knows (%zu)",
                  s->path, v, sql_nfiles);
        return -EPROTO;
    }
    for (int n = v + 1; n <= (int)sql_nfiles; n++) {
        if ((rc = migrate_one(s, n)) < 0)
            return rc;
    }
    return 0;
}

/* The multi-row INSERT of store_insert_jobs: row r binds ?(10r+1) to
 * ?(10r+10) in the order of ST_INSERT_JOB, now included. */
static int
prepare_insert_many(struct sqlite_store *s)
{
    struct buf b = {0};
    int rc;

    buf_appendf(&b, "%s", INSERT_JOB_HEAD);
    for (int r = 0; r < STORE_INSERT_ROWS; r++) {
        int p = 10 * r;
        buf_appendf(&b,
                    "%s(?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, ?%d, "
                    "'queued', ?%d, ?%d, ?%d)",
                    r ? ", " : "", p + 1, p + 2, p + 3, p + 4, p + 5, p + 6,
                    p + 7, p + 8, p + 9, p + 10, p + 10, p + 10);
    }
    buf_appendf(&b, "%s", INSERT_JOB_TAIL);
    rc = sqlite3_prepare_v3(s->db, b.data, -1, SQLITE_PREPARE_PERSISTENT,
                            &s->insert_many, NULL);
    buf_free(&b);
    return rc == SQLITE_OK ? 0 : sqlite_fail(s, rc, "prepare bulk insert");
}

static void sqlite_close(struct store *base);

/* Whether path names a file (not ":memory:", "" or a "file:" URI). */
static bool
is_plain_file(const char *path)
{
    return path[0] != '\0' && strcmp(path, ":memory:") != 0 &&
           strncmp(path, "file:", 5) != 0;
}

/* Refuses a database on a network filesystem: WAL keeps its index in
 * shared memory that must be one host's (docs/design.md §12). */
static int
check_local(const char *path)
{
    char type[64];

    if (!is_plain_file(path) || fstype_of(path, NULL, type, sizeof(type)) < 0 ||
        !fstype_is_network(type))
        return 0;
    log_error("store: %s: on a network filesystem (%s): SQLite's "
              "write-ahead log needs one host's shared memory and would "
              "corrupt or lose jobs; keep the database on a local disk, or "
              "share a queue between hosts with PostgreSQL (database = "
              "postgresql://…)",
              path, type);
    return -EREMOTE;
}

static int
prepare_all(struct sqlite_store *s)
{
    int rc;

    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1,
                                SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK)
            return sqlite_fail(s, rc, stmt_sql[i]);
    }
    for (int i = 0; i < OS_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, ostmt_sql[i], -1,
                                SQLITE_PREPARE_PERSISTENT, &s->ost[i], NULL);
        if (rc != SQLITE_OK)
            return sqlite_fail(s, rc, ostmt_sql[i]);
    }
    return prepare_insert_many(s);
}

/* Read-write (settings, migrations) or read-only (nothing written: no
 * journal mode switch, no migration, query_only on; a schema behind this
 * build is opened unprepared, for store_schema_version only). */
static int
open_mode(const char *path, bool readonly, struct store **out)
{
    struct sqlite_store *s = xcalloc(1, sizeof(*s));
    char *pragmas;
    int rc, v;

    s->path = xstrdup(path);
    if ((rc = check_local(path)) < 0)
        goto fail;
    rc = sqlite3_open_v2(path, &s->db,
                         (readonly ? SQLITE_OPEN_READONLY
                                   : SQLITE_OPEN_READWRITE |
                                         SQLITE_OPEN_CREATE) |
                             SQLITE_OPEN_NOMUTEX,
                         NULL);
    if (rc != SQLITE_OK) {
        log_error("store: %s: open: %s", path,
                  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        rc = sqlite_errno(rc);
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    /* The timeout first: switching to WAL takes a lock too. */
    sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    /* auto_vacuum first: it only takes on a file with no table yet (a new
     * database), and WAL mode would write the header before it. Existing
     * files keep theirs; purge copes with both. */
    if (readonly)
        pragmas = xasprintf("PRAGMA query_only = ON; "
                            "PRAGMA foreign_keys = ON; "
                            "PRAGMA cache_size = -%d",
                            STORE_CACHE_KIB);
    else
        pragmas = xasprintf("PRAGMA auto_vacuum = INCREMENTAL; "
                            "PRAGMA journal_mode = WAL; "
                            "PRAGMA synchronous = NORMAL; "
                            "PRAGMA foreign_keys = ON; "
                            "PRAGMA cache_size = -%d",
                            STORE_CACHE_KIB);
    rc = sqlite3_exec(s->db, pragmas, NULL, NULL, NULL);
    free(pragmas);
    if (rc != SQLITE_OK) {
        rc = sqlite_fail(s, rc, "pragmas");
        goto fail;
    }
    if (!readonly) {
        if ((rc = migrate(s)) < 0)
            goto fail;
    } else {
        if ((rc = read_user_version(s, &v)) < 0)
            goto fail;
        if (v > (int)sql_nfiles) {
            log_error("store: %s: schema version %d is newer than this "
                      "build knows (%zu)",
                      path, v, sql_nfiles);
            rc = -EPROTO;
            goto fail;
        }
        if (v < (int)sql_nfiles) {
            *out = &s->base;
            return 0;
        }
    }
    if ((rc = prepare_all(s)) < 0)
        goto fail;
    *out = &s->base;
    return 0;
fail:
    sqlite_close(&s->base);
    return rc;
}

static int
sqlite_open(const char *path, struct store **out)
{
    return open_mode(path, false, out);
}

static int
sqlite_open_readonly(const char *path, struct store **out)
{
    return open_mode(path, true, out);
}

static void
sqlite_set_busy_timeout(struct store *base, int ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_busy_timeout(s->db, ms);
}

static void
sqlite_close(struct store *base)
{
    struct sqlite_store *s = sq(base);

    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    for (int i = 0; i < OS_COUNT; i++)
        sqlite3_finalize(s->ost[i]);
    sqlite3_finalize(s->insert_many);
    free(s->unsafe_json);
    sqlite3_finalize(s->load_st);
    free(s->load_sql);
    sqlite3_close_v2(s->db);
    free(s->path);
    free(s);
}

static int
sqlite_schema_version(struct store *base)
{
    struct sqlite_store *s = sq(base);
    int v = -1;
    read_user_version(s, &v);
    return v;
}

static int
sqlite_schema_latest(void)
{
    return (int)sql_nfiles;
}

/* --- enqueue ------------------------------------------------------------ */

static int
sqlite_begin(struct store *base)
{
    struct sqlite_store *s = sq(base);
    return exec_stmt(s, ST_BEGIN, "begin");
}

static int
sqlite_commit(struct store *base)
{
    struct sqlite_store *s = sq(base);
    return exec_stmt(s, ST_COMMIT, "commit");
}

static void
sqlite_rollback(struct store *base)
{
    struct sqlite_store *s = sq(base);
    if (!sqlite3_get_autocommit(s->db))
        exec_stmt(s, ST_ROLLBACK, "rollback");
}

static void
bind_jobspec(sqlite3_stmt *st, int at, const struct jobspec *j, int64_t now_ms)
{
    bind_text(st, at + 1, j->provider);
    bind_text(st, at + 2, j->batch);
    bind_text(st, at + 3, j->custom_id);
    bind_text(st, at + 4, j->method);
    bind_text(st, at + 5, j->path);
    bind_text(st, at + 6, j->body);
    bind_text(st, at + 7, j->idempotency_key);
    sqlite3_bind_int(st, at + 8, j->priority);
    sqlite3_bind_int(st, at + 9, j->max_attempts);
    sqlite3_bind_int64(st, at + 10, now_ms);
}

/* Adds n new queued jobs of provider and batch to the kept counts. */
static int
count_inserted(struct sqlite_store *s, const char *provider,
               const char *batch, int64_t n)
{
    sqlite3_stmt *st;
    int rc;

    if (n == 0)
        return 0;
    st = stmt(s, ST_COUNT_INSERTED);
    bind_text(st, 1, provider);
    bind_text(st, 2, batch);
    sqlite3_bind_int64(st, 3, n);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "count jobs");
}

static int
sqlite_insert_job(struct store *base, const struct jobspec *j, int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_INSERT_JOB);
    int rc;

    bind_jobspec(st, 0, j, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "insert job");
    if (sqlite3_changes(s->db) == 0)
        return 1;
    return (rc = count_inserted(s, j->provider, j->batch, 1)) < 0 ? rc : 0;
}

static bool
same_text(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Whether jobs[0..n) share one provider and batch: then the statement's
 * changes() is their count. */
static bool
one_count_key(const struct jobspec *jobs, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (!same_text(jobs[i].provider, jobs[0].provider) ||
            !same_text(jobs[i].batch, jobs[0].batch))
            return false;
    }
    return true;
}

static int
sqlite_insert_jobs(struct store *base, const struct jobspec *jobs, size_t n,
                   int64_t now_ms, size_t *inserted)
{
    struct sqlite_store *s = sq(base);
    size_t i = 0;
    int rc;

    *inserted = 0;
    /* Whole statements of STORE_INSERT_ROWS rows; changes() counts the
     * rows ON CONFLICT DO NOTHING let through, duplicates within the
     * statement included, and count_inserted adds them to the kept
     * counts. The tail, and statements mixing providers or batches, go
     * row by row. */
    for (; i + STORE_INSERT_ROWS <= n; i += STORE_INSERT_ROWS) {
        sqlite3_stmt *st = s->insert_many;
        const struct jobspec *row = &jobs[i];
        if (!one_count_key(row, STORE_INSERT_ROWS))
            break; /* mixed: row by row, each counted */
        for (int r = 0; r < STORE_INSERT_ROWS; r++)
            bind_jobspec(st, 10 * r, &row[r], now_ms);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, "insert jobs");
        int64_t k = sqlite3_changes(s->db);
        if ((rc = count_inserted(s, row->provider, row->batch, k)) < 0)
            return rc;
        *inserted += (size_t)k;
    }
    for (; i < n; i++) {
        if ((rc = sqlite_insert_job(&s->base, &jobs[i], now_ms)) < 0)
            return rc;
        *inserted += rc == 0;
    }
    return 0;
}

/* --- the daemon ----------------------------------------------------------- */

static void
sqlite_set_unsafe_resend(struct store *base, const char *const *providers,
                         size_t n)
{
    struct sqlite_store *s = sq(base);
    json_t *arr = json_array();

    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(providers[i]));
    char *text = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    free(s->unsafe_json);
    s->unsafe_json = text ? xstrdup(text) : NULL;
    free(text);
}

/* Fails the running jobs of unsafe providers among those a reclaim takes
 * back (RECLAIM_UNKNOWN_SET); owner NULL: expired leases. Adds to *n. */
static int
reclaim_unknown(struct sqlite_store *s, const char *owner, int64_t now_ms,
                long *n)
{
    if (s->unsafe_json == NULL)
        return 0;
    sqlite3_stmt *st = stmt(s, owner ? ST_UNKNOWN_OWNER : ST_UNKNOWN_EXPIRED);
    sqlite3_bind_int64(st, 1, now_ms);
    bind_text(st, 2, owner);
    bind_text(st, 3, s->unsafe_json);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "fail unknown outcomes");
    long k = sqlite3_changes(s->db);
    if (k > 0)
        log_warnx("store: %ld running jobs of providers without idempotency "
                  "taken back: failed as unknown_outcome, not sent again",
                  k);
    *n += k;
    return 0;
}

static int
sqlite_reclaim_expired(struct store *base, int64_t now_ms, long *n)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int rc;
    long unknown = 0;

    *n = 0;
    if ((rc = reclaim_unknown(s, NULL, now_ms, &unknown)) < 0)
        return rc;
    st = stmt(s, ST_RECLAIM_RUNNING);
    sqlite3_bind_int64(st, 1, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "reclaim expired leases");
    *n = sqlite3_changes(s->db) + unknown;
    st = stmt(s, ST_RECLAIM_POLLS);
    sqlite3_bind_int64(st, 1, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "free expired poll leases");
    st = ostmt(s, OS_RELEASE_EXPIRED);
    sqlite3_bind_int64(st, 1, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "free expired download leases");
    return 0;
}

/* --- daemons and their liveness ------------------------------------------ */

static int
sqlite_daemon_register(struct store *base, const struct daemon_row *d)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DAEMON_REGISTER);

    bind_text(st, 1, d->owner);
    bind_text(st, 2, d->host);
    sqlite3_bind_int64(st, 3, d->pid);
    sqlite3_bind_int64(st, 4, d->started_at);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "register daemon");
}

static int
sqlite_daemon_beat(struct store *base, const char *owner, int64_t now_ms,
                   bool *present)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DAEMON_BEAT);

    *present = true;
    bind_text(st, 1, owner);
    sqlite3_bind_int64(st, 2, now_ms);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "heartbeat");
    *present = sqlite3_changes(s->db) == 1;
    return 0;
}

static int
sqlite_daemons(struct store *base, struct daemon_row **rows, size_t *n)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DAEMONS);
    struct daemon_row *v = NULL;
    size_t cap = 0;
    int rc;

    *n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 4;
            v = xrealloc(v, cap * sizeof(*v));
        }
        struct daemon_row *d = &v[(*n)++];
        d->owner = column_strdup(st, 0);
        d->host = column_strdup(st, 1);
        d->pid = (long)sqlite3_column_int64(st, 2);
        d->started_at = sqlite3_column_int64(st, 3);
        d->heartbeat_at = sqlite3_column_int64(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_daemons_free(v, *n);
        *n = 0;
        *rows = NULL;
        return sqlite_fail(s, rc, "daemons");
    }
    *rows = v;
    return 0;
}

/* Runs a statement about owner's row or leases: ?1 now, ?2 owner. */
static int
owner_stmt(struct sqlite_store *s, enum stmt id, const char *owner,
           int64_t now, const char *what)
{
    sqlite3_stmt *st = stmt(s, id);

    sqlite3_bind_int64(st, 1, now);
    bind_text(st, 2, owner);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, what);
}

static int
sqlite_daemon_reap(struct store *base, const char *owner, int64_t seen,
                   int64_t now_ms, long *n)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int rc;

    *n = 0;
    if ((rc = exec_stmt(s, ST_BEGIN, "reap: begin")) < 0)
        return rc;
    if (seen != 0) {
        /* The verdict was "no beat since seen": checked again under the
         * write lock, so a beat that raced it wins. */
        st = stmt(s, ST_DAEMON_HEARTBEAT);
        bind_text(st, 1, owner);
        rc = sqlite3_step(st);
        int64_t hb = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            rc = sqlite_fail(s, rc, "reap: heartbeat");
            goto fail;
        }
        if (rc == SQLITE_ROW && hb != seen) {
            rc = -ESTALE;
            goto fail;
        }
    }
    long unknown = 0;
    if ((rc = owner_stmt(s, ST_DAEMON_DELETE, owner, now_ms,
                         "reap: daemon row")) < 0 ||
        (rc = owner_stmt(s, ST_PERMITS_DELETE, owner, now_ms,
                         "reap: permits")) < 0 ||
        (rc = reclaim_unknown(s, owner, now_ms, &unknown)) < 0 ||
        (rc = owner_stmt(s, ST_RECLAIM_OWNER_RUNNING, owner, now_ms,
                         "reap: running jobs")) < 0)
        goto fail;
    *n = sqlite3_changes(s->db) + unknown;
    if ((rc = owner_stmt(s, ST_RECLAIM_OWNER_POLLS, owner, now_ms,
                         "reap: poll leases")) < 0)
        goto fail;
    st = ostmt(s, OS_RELEASE_OWNER);
    bind_text(st, 1, owner);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        rc = sqlite_fail(s, rc, "reap: download leases");
        goto fail;
    }
    if ((rc = exec_stmt(s, ST_COMMIT, "reap: commit")) < 0)
        goto fail;
    return 0;
fail:
    *n = 0;
    sqlite_rollback(&s->base);
    return rc;
}

/* --- permits shared by the daemons of one database ----------------------- */

/* Reads the pool of provider as owner sees it (p->tokens, p->tokens_at
 * from the providers row) inside the caller's transaction. */
static int
permit_pool_read(struct sqlite_store *s, const char *provider,
                 const char *owner, struct permit_pool *p)
{
    sqlite3_stmt *st = stmt(s, ST_PERMIT_POOL);
    int rc;

    *p = (struct permit_pool){0};
    bind_text(st, 1, provider);
    bind_text(st, 2, owner);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        p->others = sqlite3_column_int(st, 0);
        p->cap = sqlite3_column_int(st, 1);
        p->rate = sqlite3_column_double(st, 2);
        p->active = sqlite3_column_int(st, 3);
        p->waiting = sqlite3_column_int(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW)
        return sqlite_fail(s, rc, "permits: pool");
    st = stmt(s, ST_BUCKET_GET);
    bind_text(st, 1, provider);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        p->tokens = sqlite3_column_double(st, 0);
        p->tokens_at = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "permits: bucket");
}

static int
permit_slots_set(struct sqlite_store *s, const char *provider,
                 const char *owner, int slots, int unmet)
{
    sqlite3_stmt *st = stmt(s, ST_PERMIT_SET);
    bind_text(st, 1, provider);
    bind_text(st, 2, owner);
    sqlite3_bind_int(st, 3, slots);
    sqlite3_bind_int(st, 4, unmet);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "permits: slots");
}

static int
permit_bucket_put(struct sqlite_store *s, const char *provider,
                  const struct permit_pool *p)
{
    sqlite3_stmt *st = stmt(s, ST_BUCKET_PUT);
    bind_text(st, 1, provider);
    sqlite3_bind_double(st, 2, p->tokens);
    sqlite3_bind_int64(st, 3, p->tokens_at);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "permits: bucket");
}

static int
sqlite_permit_take(struct store *base, const char *provider,
                   const char *owner, const struct permit_view *view,
                   int in_flight, int want, int64_t now_ms, int *granted,
                   int64_t *wake_ms)
{
    struct sqlite_store *s = sq(base);
    struct permit_pool pool;
    sqlite3_stmt *st;
    int rc;

    *granted = 0;
    *wake_ms = 0;
    if ((rc = exec_stmt(s, ST_BEGIN, "permits: begin")) < 0)
        return rc;
    st = stmt(s, ST_PERMIT_VIEW);
    bind_text(st, 1, provider);
    bind_text(st, 2, owner);
    sqlite3_bind_int(st, 3, view->cap);
    sqlite3_bind_double(st, 4, view->rate);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        rc = sqlite_fail(s, rc, "permits: view");
        goto fail;
    }
    if ((rc = permit_pool_read(s, provider, owner, &pool)) < 0)
        goto fail;
    int n = permit_grant(&pool, in_flight, want, now_ms, wake_ms);
    if ((rc = permit_slots_set(s, provider, owner, in_flight + n,
                               want - n)) < 0 ||
        (pool.rate > 0 && (rc = permit_bucket_put(s, provider, &pool)) < 0) ||
        (rc = exec_stmt(s, ST_COMMIT, "permits: commit")) < 0)
        goto fail;
    *granted = n;
    return 0;
fail:
    *wake_ms = 0;
    sqlite_rollback(&s->base);
    return rc;
}

static int
sqlite_permit_put(struct store *base, const char *provider,
                  const char *owner, int slots, int tokens)
{
    struct sqlite_store *s = sq(base);
    struct permit_pool pool;
    int rc;

    if (tokens <= 0)
        return permit_slots_set(s, provider, owner, slots, 0);
    if ((rc = exec_stmt(s, ST_BEGIN, "permits: begin")) < 0)
        return rc;
    if ((rc = permit_pool_read(s, provider, owner, &pool)) < 0 ||
        (rc = permit_slots_set(s, provider, owner, slots, 0)) < 0)
        goto fail;
    if (permit_return(&pool, tokens) &&
        (rc = permit_bucket_put(s, provider, &pool)) < 0)
        goto fail;
    if ((rc = exec_stmt(s, ST_COMMIT, "permits: commit")) < 0)
        goto fail;
    return 0;
fail:
    sqlite_rollback(&s->base);
    return rc;
}

static struct job *
claim_row(sqlite3_stmt *st)
{
    struct job *j = xcalloc(1, sizeof(*j));
    const char *state = (const char *)sqlite3_column_text(st, 8);

    j->id = sqlite3_column_int64(st, 0);
    j->provider = column_strdup(st, 1);
    j->batch = column_strdup(st, 2);
    j->custom_id = column_strdup(st, 3);
    j->method = column_strdup(st, 4);
    j->path = column_strdup(st, 5);
    j->body = column_strdup(st, 6);
    j->idempotency_key = column_strdup(st, 7);
    if (state == NULL || job_state_parse(state, &j->state) < 0)
        j->state = JOB_RUNNING;
    j->attempts = sqlite3_column_int(st, 9);
    j->max_attempts = sqlite3_column_int(st, 10);
    j->deferrals = sqlite3_column_int(st, 11);
    j->remote_id = column_strdup(st, 12);
    j->poll_url = column_strdup(st, 13);
    j->created_at = sqlite3_column_int64(st, 14);
    j->waiting_since = sqlite3_column_int64(st, 15);
    j->base_key = column_strdup(st, 18);
    return j;
}

/* Runs one claim statement; appends up to max jobs to out + *nout. */
static int
claim_run(struct sqlite_store *s, enum stmt id, const char *provider, int max,
          int64_t now_ms, int64_t lease_ms, const char *owner, struct job **out,
          int *nout, const char *except)
{
    sqlite3_stmt *st = stmt(s, id);
    struct backend_claimed *c = xcalloc((size_t)max, sizeof(*c));
    int n = 0, rc;

    sqlite3_bind_int64(st, 1, now_ms + lease_ms);
    bind_text(st, 2, owner);
    sqlite3_bind_int64(st, 3, now_ms);
    bind_text(st, 4, provider);
    sqlite3_bind_int(st, 5, max);
    if (except != NULL)
        bind_text(st, 6, except);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < max) {
        c[n].job = claim_row(st);
        c[n].priority = sqlite3_column_int(st, 16);
        c[n].run_after = sqlite3_column_int64(st, 17);
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        /* The UPDATE is one statement: on error nothing was claimed. */
        for (int i = 0; i < n; i++)
            job_free(c[i].job);
        free(c);
        return sqlite_fail(s, rc, "claim");
    }
    backend_claimed_sort(c, n);
    for (int i = 0; i < n; i++)
        out[(*nout)++] = c[i].job;
    free(c);
    return 0;
}

static int
sqlite_claim(struct store *base, enum store_claim_kind kind,
             const char *provider, int max, int64_t now_ms, int64_t lease_ms,
             const char *owner, struct job **out, int *nout)
{
    return claim_run(sq(base),
                     kind == STORE_CLAIM_POLLS ? ST_CLAIM_WAITING : ST_CLAIM,
                     provider, max, now_ms, lease_ms, owner, out, nout, NULL);
}

static int
sqlite_claim_except(struct store *base, const char *provider, int max,
                    int64_t now_ms, int64_t lease_ms, const char *owner,
                    const char *held_json, struct job **out, int *nout)
{
    return claim_run(sq(base), ST_CLAIM_EXCEPT, provider, max, now_ms,
                     lease_ms, owner, out, nout, held_json);
}

/* Runs a one-row, one-column query about provider (and now_ms when the
 * statement takes it as ?2) into *out. */
static int
provider_scalar(struct sqlite_store *s, enum stmt id, const char *provider,
                const int64_t *now_ms, int64_t *out, const char *what)
{
    sqlite3_stmt *st = stmt(s, id);
    int rc;

    *out = 0;
    bind_text(st, 1, provider);
    if (now_ms != NULL)
        sqlite3_bind_int64(st, 2, *now_ms);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, what);
}

static int
sqlite_next_due(struct store *base, const char *provider, int64_t now_ms,
                int64_t *due_ms)
{
    struct sqlite_store *s = sq(base);
    return provider_scalar(s, ST_NEXT_DUE, provider, &now_ms, due_ms,
                           "next due");
}

static int
sqlite_pending_count(struct store *base, const char *provider, long *unfinished)
{
    struct sqlite_store *s = sq(base);
    int64_t n;
    int rc = provider_scalar(s, ST_UNFINISHED, provider, NULL, &n,
                             "unfinished count");
    *unfinished = (long)n;
    return rc;
}

static int
sqlite_unfinished_by_provider(struct store *base,
                              void (*cb)(const char *provider, long n,
                                         void *data),
                              void *data)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_UNFINISHED_BY_PROVIDER);
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        cb(name ? name : "", (long)sqlite3_column_int64(st, 1), data);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "unfinished by provider");
}

static int
sqlite_count_waiting(struct store *base, const char *provider, long *n)
{
    struct sqlite_store *s = sq(base);
    int64_t v;
    int rc = provider_scalar(s, ST_COUNT_WAITING, provider, NULL, &v,
                             "waiting count");
    *n = (long)v;
    return rc;
}

static int
sqlite_oldest_queued(struct store *base, const char *provider,
                     int64_t *since_ms)
{
    return provider_scalar(sq(base), ST_OLDEST_QUEUED, provider, NULL,
                           since_ms, "oldest queued");
}

static int
sqlite_spend(struct store *base, const char *provider, const char *batch,
             double *spent, long *costed)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, provider ? ST_SPEND_PROVIDER : ST_SPEND_BATCH);
    int rc;

    *spent = 0;
    *costed = 0;
    bind_text(st, 1, provider ? provider : batch);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *spent = sqlite3_column_double(st, 0);
        *costed = (long)sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "spend");
}

static int
sqlite_batch_budget_set(struct store *base, const char *batch, double budget,
                        int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_BATCH_BUDGET_SET);
    int rc;

    bind_text(st, 1, batch);
    if (budget > 0)
        sqlite3_bind_double(st, 2, budget);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_int64(st, 3, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "batch budget");
}

static int
sqlite_batch_pause(struct store *base, const char *batch, bool paused,
                   int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_BATCH_STATE);
    int rc;

    bind_text(st, 1, batch);
    bind_text(st, 2, paused ? "paused" : "active");
    bind_text(st, 3, paused ? "budget" : NULL);
    sqlite3_bind_int64(st, 4, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "batch state");
}

static int
sqlite_batch_budgets(struct store *base,
                     void (*cb)(const char *batch, double budget, void *data),
                     void *data)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_BATCH_BUDGETS);
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        cb((const char *)sqlite3_column_text(st, 0),
           sqlite3_column_double(st, 1), data);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "batch budgets");
}

static int
sqlite_has_unfinished(struct store *base, const char *provider, bool *any)
{
    struct sqlite_store *s = sq(base);
    int64_t n;
    int rc = provider_scalar(s, ST_HAS_UNFINISHED, provider, NULL, &n,
                             "unfinished check");
    *any = n != 0;
    return rc;
}

/* No push from SQLite: the dispatcher polls sqlite_data_version. */
static int
sqlite_watch(struct store *base, struct uv_loop_s *loop,
             void (*cb)(void *arg), void *arg)
{
    (void)base, (void)loop, (void)cb, (void)arg;
    return -ENOTSUP;
}

static int
sqlite_counts(struct store *base, store_count_fn cb, void *arg)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_COUNTS);
    int rc, stop = 0;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *provider = (const char *)sqlite3_column_text(st, 0);
        const char *batch = (const char *)sqlite3_column_text(st, 1);
        const char *state = (const char *)sqlite3_column_text(st, 2);
        enum job_state js;
        /* a state this build does not know (a newer schema) is skipped */
        if (state == NULL || job_state_parse(state, &js) < 0)
            continue;
        stop = cb(provider ? provider : "", batch, js,
                  (long)sqlite3_column_int64(st, 3), arg);
        if (stop != 0)
            break;
    }
    sqlite3_reset(st);
    if (stop != 0)
        return stop;
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "job counts");
}

static int
sqlite_data_version(struct store *base, int64_t *v)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_DATA_VERSION);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *v = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "data_version");
}

/* Binds "" as NULL: the outcome's empty code or request id means none. */
static void
bind_text_or_null(sqlite3_stmt *st, int i, const char *v)
{
    bind_text(st, i, v && *v ? v : NULL);
}

/* Writes one buffered update inside the flush transaction. */
static int
flush_one(struct sqlite_store *s, const struct store_pending *p,
          size_t *dropped)
{
    const struct job_update *u = &p->u;
    sqlite3_stmt *st =
        stmt(s, u->has_cost ? ST_UPDATE_JOB : ST_UPDATE_JOB_NO_COST);
    bool failed = u->cls != ERR_NONE;
    int mode = failed ? 1 : u->state == JOB_SUCCEEDED ? 2 : 0;
    int rc;

    sqlite3_bind_int64(st, 1, u->job_id);
    bind_text(st, 2, job_state_name(u->state));
    sqlite3_bind_int64(st, 3, u->run_after);
    sqlite3_bind_int(st, 4, u->uncharge && !u->is_poll);
    sqlite3_bind_int(st, 5, u->deferrals);
    bind_text(st, 6, u->new_key);
    sqlite3_bind_int(st, 7, mode);
    bind_int64_or_null(st, 8, u->http_status);
    if (failed) {
        bind_text(st, 9, err_class_name(u->cls));
        bind_text_or_null(st, 10, u->code);
        bind_text_or_null(st, 11, u->message);
        bind_text(st, 13, u->fields);
    }
    bind_text_or_null(st, 12, u->request_id);
    /* A value over SQLite's length limit fails its bind, not the step:
     * caught here, or the row would be written without it. */
    if (u->result && (rc = sqlite3_bind_text(st, 14, u->result, -1,
                                             SQLITE_STATIC)) != SQLITE_OK)
        return sqlite_fail(s, rc, "update job");
    if (u->has_cost)
        sqlite3_bind_double(st, 15, u->cost);
    bind_text(st, 16, u->remote_id);
    bind_text(st, 17, u->poll_url);
    sqlite3_bind_int64(st, 18, p->at);
    bind_text(st, 19, u->owner);
    sqlite3_bind_int(st, 20, job_state_terminal(u->state));
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "update job");
    /* 0: purged, or its lease went to another owner meanwhile: the
     * outputs are the new holder's to record */
    bool written = sqlite3_changes(s->db) > 0;
    if (!written)
        (*dropped)++;
    for (size_t i = 0; written && i < u->noutput_urls; i++) {
        st = ostmt(s, OS_INSERT);
        sqlite3_bind_int64(st, 1, u->job_id);
        bind_text(st, 2, u->output_urls[i]);
        sqlite3_bind_int64(st, 3, p->at);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, "insert output");
    }
    if (!u->has_attempt)
        return 0;

    st = stmt(s, written ? ST_INSERT_ATTEMPT_WRITTEN : ST_INSERT_ATTEMPT);
    sqlite3_bind_int64(st, 1, u->job_id);
    sqlite3_bind_int(st, 2, u->attempt);
    bind_text(st, 3, u->key_sent);
    sqlite3_bind_int64(st, 4, u->started_at);
    sqlite3_bind_int64(st, 5, u->finished_at);
    bind_int64_or_null(st, 6, u->http_status);
    if (failed) {
        bind_text(st, 7, err_class_name(u->cls));
        bind_text_or_null(st, 8, u->code);
        bind_text_or_null(st, 9, u->message);
    }
    bind_text_or_null(st, 10, u->request_id);
    bind_int64_or_null(st, 11, u->retry_after_ms);
    sqlite3_bind_int(st, 12, u->is_poll);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "insert attempt");
}

/* One transaction over the whole buffer; on failure *bad is the index of
 * the update that failed (nbuf when it was the transaction itself). */
static int
flush_all(struct sqlite_store *s, size_t *bad, size_t *dropped, char *why,
          size_t whylen)
{
    struct store *base = &s->base;
    int rc;

    *bad = base->nbuf;
    *dropped = 0;
    if ((rc = exec_stmt(s, ST_BEGIN, "flush: begin")) < 0)
        return rc;
    for (size_t i = 0; i < base->nbuf; i++) {
        if ((rc = flush_one(s, &base->buf[i], dropped)) < 0) {
            *bad = i;
            goto fail;
        }
    }
    if ((rc = exec_stmt(s, ST_COMMIT, "flush: commit")) < 0)
        goto fail;
    return 0;
fail:
    /* All or nothing: the buffer is kept and written by a later flush. */
    snprintf(why, whylen, "%s", sqlite3_errmsg(s->db));
    sqlite_rollback(&s->base);
    return rc;
}

/* A row the database refuses for its content must not hold back the
 * others: its update becomes the job's failure (protocol, unstorable) and
 * the flush goes again; if even that is refused (an operator's trigger),
 * the update is dropped: the job stays leased and is taken back later. */
static int
sqlite_flush(struct store *base)
{
    struct sqlite_store *s = sq(base);
    size_t dropped, bad;
    char why[256];
    int rc;

    while ((rc = flush_all(s, &bad, &dropped, why, sizeof(why))) < 0) {
        if (!backend_row_error(rc) || bad >= base->nbuf)
            return rc;
        backend_pending_refused(base, bad, why);
        if (base->nbuf == 0)
            return 0;
    }
    if (dropped > 0)
        log_info("store: %zu outcomes not written: job purged, or taken "
                 "back from this daemon meanwhile",
                 dropped);
    return 0;
}

static int
sqlite_cancelled(struct store *base, const int64_t *ids, int n, int64_t *out,
                 int *nout)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = s->st[ST_JOB_STATE];
    int rc = SQLITE_DONE;

    *nout = 0;
    for (int i = 0; i < n; i++) {
        st = stmt(s, ST_JOB_STATE);
        sqlite3_bind_int64(st, 1, ids[i]);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const char *state = (const char *)sqlite3_column_text(st, 0);
            if (state && strcmp(state, "cancelled") == 0)
                out[(*nout)++] = ids[i];
        } else if (rc != SQLITE_DONE) {
            break;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "cancelled jobs");
}

static int
sqlite_provider_put(struct store *base, const struct provider_row *p,
                    int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_PROVIDER_PUT);
    int rc;

    bind_text(st, 1, p->name);
    bind_text(st, 2, p->state ? p->state : "active");
    bind_text(st, 3, p->reason);
    sqlite3_bind_int(st, 4, p->concurrency_limit);
    sqlite3_bind_int(st, 5, p->in_flight);
    bind_int64_or_null(st, 6, p->pause_until);
    sqlite3_bind_int64(st, 7, p->sent);
    sqlite3_bind_int64(st, 8, p->succeeded);
    sqlite3_bind_int64(st, 9, p->failed);
    sqlite3_bind_int64(st, 10, p->throttled);
    sqlite3_bind_int64(st, 11, now_ms);
    if (p->rate_per_s > 0) {
        sqlite3_bind_double(st, 12, p->rate_per_s);
        bind_text(st, 13, p->rate_source);
    } else {
        sqlite3_bind_null(st, 12);
        sqlite3_bind_null(st, 13);
    }
    bind_int64_or_null(st, 14, p->token_limit);
    if (p->token_limit > 0)
        sqlite3_bind_int64(st, 15, p->tokens_available);
    else
        sqlite3_bind_null(st, 15);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "provider row");
}

static int
sqlite_provider_get(struct store *base, const char *name, int *limit,
                    int64_t *resume_requested_at)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_PROVIDER_GET);
    int rc;

    *limit = 0;
    *resume_requested_at = 0;
    bind_text(st, 1, name);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *limit = sqlite3_column_int(st, 0);
        *resume_requested_at = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "provider row");
}

static int
sqlite_provider_request_resume(struct store *base, const char *name,
                               int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_PROVIDER_RESUME);
    int rc;

    bind_text(st, 1, name);
    sqlite3_bind_int64(st, 2, now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "resume request");
    return sqlite3_changes(s->db) == 1 ? 0 : -ENOENT;
}

/* --- operator queries ----------------------------------------------------- */

/* The current row as an object keyed by column name. */
static json_t *
row_json(sqlite3_stmt *st)
{
    json_t *o = json_object();
    int n = sqlite3_column_count(st);

    for (int i = 0; i < n; i++) {
        const char *name = sqlite3_column_name(st, i);
        json_t *v;

        switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER:
            v = json_integer(sqlite3_column_int64(st, i));
            break;
        case SQLITE_FLOAT:
            v = json_real(sqlite3_column_double(st, i));
            break;
        case SQLITE_NULL:
            v = json_null();
            break;
        default: {
            const char *t = (const char *)sqlite3_column_text(st, i);
            size_t len = (size_t)sqlite3_column_bytes(st, i);
            v = backend_text_json(name, t, len);
            break;
        }
        }
        json_object_set_new(o, name, v);
    }
    return o;
}

/* Steps st to the end, appending each row to arr. */
static int
rows_json(struct sqlite_store *s, sqlite3_stmt *st, json_t *arr,
          const char *what)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(arr, row_json(st));
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, what);
}

static int
status_providers(struct sqlite_store *s, json_t *providers, json_t *lanes)
{
    sqlite3_stmt *st = stmt(s, ST_STATE_COUNTS);
    int rc;

    /* Every provider the daemon knows, even with no jobs yet. */
    backend_status_lanes(providers, lanes);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        backend_status_count(providers,
                             (const char *)sqlite3_column_text(st, 0),
                             (const char *)sqlite3_column_text(st, 1),
                             sqlite3_column_int64(st, 2));
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "status counts");
}

static int sqlite_outputs_counts(struct store *base, long *pending,
                                 long *stored, long *failed);

static json_t *
sqlite_status_json(struct store *base)
{
    struct sqlite_store *s = sq(base);
    json_t *providers, *batches, *lanes;
    json_t *status = backend_status_new(&providers, &batches, &lanes);
    long pending, stored, failed;
    if (rows_json(s, stmt(s, ST_LANES), lanes, "status lanes") < 0 ||
        status_providers(s, providers, lanes) < 0 ||
        rows_json(s, stmt(s, ST_BATCHES), batches, "status batches") < 0 ||
        sqlite_outputs_counts(base, &pending, &stored, &failed) < 0) {
        json_decref(status);
        return NULL;
    }
    backend_status_outputs(status, pending, stored, failed);
    return status;
}

static json_t *
sqlite_jobs_json(struct store *base, const struct store_filter *f)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_JOBS);
    json_t *arr = json_array();

    bind_text(st, 1, f ? f->state : NULL);
    bind_text(st, 2, f ? f->provider : NULL);
    bind_text(st, 3, f ? f->batch : NULL);
    /* LIMIT -1: no limit */
    sqlite3_bind_int64(st, 4, f && f->limit > 0 ? f->limit : -1);
    if (rows_json(s, st, arr, "jobs") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The id of the job that key names: an id (all digits), else a custom_id
 * (a numeric custom_id is looked up as one when no id matches); 0 if
 * none. */
static int
sqlite_resolve_one(struct store *base, const char *key, int64_t *id)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int64_t asid;
    int rc;

    *id = 0;
    if (backend_ref_is_id(key, &asid)) {
        st = stmt(s, ST_RESOLVE_ID);
        sqlite3_bind_int64(st, 1, asid);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *id = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        if (rc == SQLITE_ROW)
            return 0;
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, "resolve job id");
    }
    st = stmt(s, ST_RESOLVE_CUSTOM_ID);
    bind_text(st, 1, key);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *id = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE
               ? 0
               : sqlite_fail(s, rc, "resolve custom_id");
}

/* Finds the job row by id or custom_id (as resolve_one); -ENOENT if none. */
static int
job_find(struct sqlite_store *s, const char *key, json_t **out)
{
    sqlite3_stmt *st;
    int64_t id;
    int rc;

    *out = NULL;
    if ((rc = sqlite_resolve_one(&s->base, key, &id)) < 0)
        return rc;
    if (id == 0)
        return -ENOENT;
    st = stmt(s, ST_JOB_BY_ID);
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = row_json(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    return rc == SQLITE_DONE ? -ENOENT : sqlite_fail(s, rc, "job");
}

static json_t *
sqlite_job_json(struct store *base, const char *id_or_custom_id)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    json_t *job, *attempts;

    if (job_find(s, id_or_custom_id, &job) < 0)
        return NULL;
    st = stmt(s, ST_ATTEMPTS);
    sqlite3_bind_int64(st, 1, json_integer_value(json_object_get(job, "id")));
    attempts = json_array();
    /* "attempts" becomes the rows; the column's count is kept apart. */
    backend_job_set_attempts(job, attempts);
    if (rows_json(s, st, attempts, "attempts") < 0) {
        json_decref(job);
        return NULL;
    }
    return job;
}

/* --- operator commands ---------------------------------------------------- */

static void
bind_named_text(sqlite3_stmt *st, const char *name, const char *v)
{
    int i = sqlite3_bind_parameter_index(st, name);
    if (i > 0)
        bind_text(st, i, v);
}

static void
bind_named_int64(sqlite3_stmt *st, const char *name, int64_t v)
{
    int i = sqlite3_bind_parameter_index(st, name);
    if (i > 0)
        bind_int64_or_null(st, i, v);
}

/* Binds the parameters of SELECT_WHERE (and PURGE_PICK) that st has.
 * states_text receives ",a,b," for :states; it must outlive the step. */
static void
select_bind(sqlite3_stmt *st, const struct store_select *sel,
            char states_text[128])
{
    states_text[0] = '\0';
    if (sel == NULL)
        return;
    backend_states_text(sel->states, states_text);
    bind_named_text(st, ":states", states_text[0] ? states_text : NULL);
    bind_named_text(st, ":provider", sel->provider);
    bind_named_text(st, ":batch", sel->batch);
    bind_named_text(st, ":class", sel->error_class);
    bind_named_text(st, ":code", sel->error_code);
    bind_named_int64(st, ":since", sel->finished_since);
    bind_named_int64(st, ":before", sel->finished_before);
}

static json_t *
sqlite_failures_json(struct store *base, const struct store_select *sel)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_FAILURES);
    json_t *arr = json_array();
    char states[128];

    select_bind(st, sel, states);
    if (rows_json(s, st, arr, "failures") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* Runs the by-id statement for each id, or the filtered one once; ?1 is
 * now in both, ?2 the id. */
static int
update_jobs(struct sqlite_store *s, enum stmt by_id, enum stmt where,
            const int64_t *ids, size_t n, const struct store_select *sel,
            int64_t now_ms, long *changed, const char *what)
{
    sqlite3_stmt *st;
    char states[128];
    int rc;

    *changed = 0;
    if (ids == NULL) {
        st = stmt(s, where);
        sqlite3_bind_int64(st, 1, now_ms);
        select_bind(st, sel, states);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, what);
        *changed = sqlite3_changes(s->db);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        st = stmt(s, by_id);
        sqlite3_bind_int64(st, 1, now_ms);
        sqlite3_bind_int64(st, 2, ids[i]);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlite_fail(s, rc, what);
        *changed += sqlite3_changes(s->db);
    }
    return 0;
}

static int
sqlite_retry(struct store *base, const int64_t *ids, size_t n,
             const struct store_select *sel, int64_t now_ms, long *changed)
{
    struct sqlite_store *s = sq(base);
    return update_jobs(s, ST_RETRY_ID, ST_RETRY_WHERE, ids, n, sel, now_ms,
                       changed, "retry");
}

static int
sqlite_cancel(struct store *base, const int64_t *ids, size_t n,
              const struct store_select *sel, int64_t now_ms, long *changed)
{
    struct sqlite_store *s = sq(base);
    return update_jobs(s, ST_CANCEL_ID, ST_CANCEL_WHERE, ids, n, sel, now_ms,
                       changed, "cancel");
}

static int
sqlite_export(struct store *base, const struct store_select *sel,
              store_row_fn fn, void *arg)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_EXPORT);
    char states[128];
    int rc, stop = 0;

    select_bind(st, sel, states);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *row = row_json(st);
        stop = fn(row, arg);
        json_decref(row);
        if (stop != 0)
            break;
    }
    sqlite3_reset(st);
    if (stop != 0)
        return stop;
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "export");
}

/* The single integer a PRAGMA statement returns. */
static int
pragma_int(struct sqlite_store *s, enum stmt id, int64_t *v)
{
    sqlite3_stmt *st = stmt(s, id);
    int rc = sqlite3_step(st);
    *v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "pragma");
}

/* One bounded purge step in its own transaction: *njobs deleted. */
static int
purge_step(struct sqlite_store *s, const struct store_select *sel, long limit,
           long *njobs, long *nattempts)
{
    static const enum stmt steps[2] = {ST_PURGE_ATTEMPTS, ST_PURGE_JOBS};
    char states[128];
    int rc;

    if ((rc = sqlite_begin(&s->base)) < 0)
        return rc;
    for (int k = 0; k < 2; k++) {
        sqlite3_stmt *st = stmt(s, steps[k]);
        select_bind(st, sel, states);
        sqlite3_bind_int64(st, sqlite3_bind_parameter_index(st, ":limit"),
                           limit);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            rc = sqlite_fail(s, rc, "purge");
            sqlite_rollback(&s->base);
            return rc;
        }
        if (k == 0)
            *nattempts = sqlite3_changes(s->db);
        else
            *njobs = sqlite3_changes(s->db);
    }
    if ((rc = sqlite_commit(&s->base)) < 0)
        sqlite_rollback(&s->base);
    return rc;
}

/* Sleeps STORE_PURGE_GAP_MS between two write transactions of purge. */
static void
purge_gap(void)
{
    struct timespec ts = {0, STORE_PURGE_GAP_MS * 1000000L};
    nanosleep(&ts, NULL);
}

/* Gives freed pages back: incremental_vacuum in steps when the file
 * allows it, then the WAL truncated. */
static int
purge_reclaim(struct sqlite_store *s, long *freed)
{
    int64_t mode = 0, before = 0, after = 0;
    int rc;

    *freed = 0;
    if ((rc = pragma_int(s, ST_AUTO_VACUUM, &mode)) < 0 ||
        (rc = pragma_int(s, ST_FREELIST, &before)) < 0)
        return rc;
    /* 2 = incremental; 1 (full) already shrank at each commit. */
    if (mode == 2) {
        char *sql =
            xasprintf("PRAGMA incremental_vacuum(%d)", STORE_VACUUM_STEP);
        for (int64_t left = before; left > 0;) {
            int64_t now_left;
            rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
            if (rc != SQLITE_OK) {
                rc = sqlite_fail(s, rc, "incremental_vacuum");
                break;
            }
            if ((rc = pragma_int(s, ST_FREELIST, &now_left)) < 0)
                break;
            if (now_left >= left)
                break; /* nothing more to give back */
            left = now_left;
            if (left > 0)
                purge_gap();
        }
        free(sql);
        if (rc < 0)
            return rc;
    }
    if ((rc = pragma_int(s, ST_FREELIST, &after)) < 0)
        return rc;
    *freed = (long)(before - after);
    /* PASSIVE first: it copies the WAL back without keeping writers out,
     * so the TRUNCATE after it (which does keep them out while pending)
     * has almost nothing left to copy. A reader (the daemon) may keep
     * part of the WAL alive: SQLITE_BUSY here only means the file shrinks
     * at a later checkpoint. */
    rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                   NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_wal_checkpoint_v2(s->db, NULL,
                                       SQLITE_CHECKPOINT_TRUNCATE, NULL,
                                       NULL);
    if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
        return sqlite_fail(s, rc, "wal_checkpoint");
    return 0;
}

static int
sqlite_purge(struct store *base, const struct store_select *sel,
             long batch_rows, long *jobs, long *attempts, long *freed_pages)
{
    struct sqlite_store *s = sq(base);
    long nj, na;
    int rc;

    do {
        nj = na = 0;
        if ((rc = purge_step(s, sel, batch_rows, &nj, &na)) < 0)
            return rc;
        *jobs += nj;
        *attempts += na;
        if (nj == batch_rows)
            purge_gap();
    } while (nj == batch_rows);
    return purge_reclaim(s, freed_pages);
}

static json_t *
sqlite_progress_json(struct store *base, const char *batch)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, batch ? ST_PROGRESS_BATCH : ST_BATCHES);
    json_t *arr = json_array();

    if (batch)
        bind_text(st, 1, batch);
    if (rows_json(s, st, arr, "batch progress") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

static json_t *
sqlite_providers_json(struct store *base)
{
    struct sqlite_store *s = sq(base);
    json_t *arr = json_array();

    if (rows_json(s, stmt(s, ST_LANES), arr, "providers") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* --- outputs ------------------------------------------------------------- */

static int
sqlite_outputs_claim(struct store *base, int max, int64_t now_ms,
                    int64_t lease_ms, const char *owner,
                    struct output_claim *out, int *nout)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_CLAIM);
    int rc, n = 0;

    *nout = 0;
    sqlite3_bind_int64(st, 1, now_ms + lease_ms);
    bind_text(st, 2, owner);
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_int(st, 4, max);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < max) {
        struct output_claim *c = &out[n++];
        c->id = sqlite3_column_int64(st, 0);
        c->job_id = sqlite3_column_int64(st, 1);
        c->url = column_strdup(st, 2);
        c->attempts = sqlite3_column_int(st, 3);
        c->provider = column_strdup(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        /* The UPDATE rolled back: nothing was claimed. */
        for (int i = 0; i < n; i++)
            output_claim_clear(&out[i]);
        return sqlite_fail(s, rc, "claim outputs");
    }
    *nout = n;
    return 0;
}

static int
sqlite_output_record(struct store *base, const struct output_result *r,
                    int64_t now_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_RECORD);
    int rc;

    sqlite3_bind_int64(st, 1, r->id);
    bind_text(st, 2, r->state);
    bind_text(st, 3, r->path);
    bind_text(st, 4, r->sha256);
    if (r->path != NULL)
        sqlite3_bind_int64(st, 5, r->bytes);
    bind_text(st, 6, r->content_type);
    bind_text(st, 7, r->error);
    sqlite3_bind_int64(st, 8, now_ms);
    sqlite3_bind_int64(st, 9, r->run_after);
    sqlite3_bind_int(st, 10, r->uncharge);
    bind_text(st, 11, r->owner);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "record output");
    return sqlite3_changes(s->db) == 1 ? 0 : -ESTALE;
}

static int
sqlite_outputs_next_due(struct store *base, int64_t *due_ms)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_NEXT_DUE);
    int rc = sqlite3_step(st);

    *due_ms = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "next output due");
}

static int
sqlite_outputs_counts(struct store *base, long *pending, long *stored,
                     long *failed)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_COUNTS);
    int rc;

    *pending = *stored = *failed = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        backend_outputs_count((const char *)sqlite3_column_text(st, 0),
                              (long)sqlite3_column_int64(st, 1), pending,
                              stored, failed);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "output counts");
}

static json_t *
sqlite_outputs_json(struct store *base, const char *batch, const char *state)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_LIST);
    json_t *arr = json_array();

    bind_text(st, 1, batch);
    bind_text(st, 2, state);
    if (rows_json(s, st, arr, "outputs") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

static int
sqlite_outputs_retry(struct store *base, const char *batch, int64_t now_ms,
                    long *changed)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = ostmt(s, OS_RETRY);
    int rc;

    *changed = 0;
    sqlite3_bind_int64(st, 1, now_ms);
    bind_text(st, 2, batch);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_fail(s, rc, "retry outputs");
    *changed = sqlite3_changes(s->db);
    return 0;
}

static json_t *
sqlite_spend_json(struct store *base, const char *batch)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st = stmt(s, ST_SPEND_ROWS);
    json_t *arr = json_array();

    bind_text(st, 1, batch);
    if (rows_json(s, st, arr, "spend") < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* --- moving a queue ------------------------------------------------------- */

static int
sqlite_is_empty(struct store *base, bool *empty)
{
    struct sqlite_store *s = sq(base);
    sqlite3_stmt *st;
    int rc;

    *empty = false;
    rc = sqlite3_prepare_v2(
        s->db,
        "SELECT NOT (EXISTS (SELECT 1 FROM jobs) "
        "OR EXISTS (SELECT 1 FROM providers) "
        "OR EXISTS (SELECT 1 FROM batches) "
        "OR EXISTS (SELECT 1 FROM outputs) "
        "OR EXISTS (SELECT 1 FROM daemons))",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "empty check");
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *empty = sqlite3_column_int(st, 0) != 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : sqlite_fail(s, rc, "empty check");
}

/* The current row with text verbatim (no JSON parsing): what a load
 * writes back. */
static json_t *
row_raw_json(sqlite3_stmt *st)
{
    json_t *o = json_object();

    for (int i = 0; i < sqlite3_column_count(st); i++) {
        json_t *v;
        switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER:
            v = json_integer(sqlite3_column_int64(st, i));
            break;
        case SQLITE_FLOAT:
            v = json_real(sqlite3_column_double(st, i));
            break;
        case SQLITE_NULL:
            v = json_null();
            break;
        default:
            v = json_stringn((const char *)sqlite3_column_text(st, i),
                             (size_t)sqlite3_column_bytes(st, i));
            if (v == NULL) /* not UTF-8: JSON cannot carry it */
                v = json_string("");
            break;
        }
        json_object_set_new(o, sqlite3_column_name(st, i), v);
    }
    return o;
}

static int
sqlite_dump(struct store *base, const char *table, store_row_fn fn, void *arg)
{
    struct sqlite_store *s = sq(base);
    char *sql = xasprintf("SELECT * FROM %s ORDER BY rowid", table);
    sqlite3_stmt *st;
    int rc, stop = 0;

    rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    free(sql);
    if (rc != SQLITE_OK)
        return sqlite_fail(s, rc, "dump");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *row = row_raw_json(st);
        stop = fn(row, arg);
        json_decref(row);
        if (stop != 0)
            break;
    }
    sqlite3_finalize(st);
    if (stop != 0)
        return stop;
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "dump");
}

static int
sqlite_load(struct store *base, const char *table, const json_t *row)
{
    struct sqlite_store *s = sq(base);
    struct buf b = {0};
    const char *key;
    json_t *v;
    int i = 0, rc;

    buf_appendf(&b, "INSERT INTO %s (", table);
    json_object_foreach((json_t *)row, key, v)
        buf_appendf(&b, "%s%s", i++ ? ", " : "", key);
    buf_appendf(&b, ") VALUES (");
    for (int k = 0; k < i; k++)
        buf_appendf(&b, "%s?", k ? ", " : "");
    buf_appendf(&b, ")");
    /* Rows of one table share their columns: prepared once per table. */
    if (s->load_sql == NULL || strcmp(s->load_sql, b.data) != 0) {
        sqlite3_finalize(s->load_st);
        free(s->load_sql);
        s->load_sql = buf_steal(&b);
        rc = sqlite3_prepare_v2(s->db, s->load_sql, -1, &s->load_st, NULL);
        if (rc != SQLITE_OK) {
            s->load_st = NULL;
            free(s->load_sql);
            s->load_sql = NULL;
            return sqlite_fail(s, rc, "load");
        }
    }
    buf_free(&b);
    sqlite3_reset(s->load_st);
    sqlite3_clear_bindings(s->load_st);
    i = 0;
    json_object_foreach((json_t *)row, key, v)
    {
        i++;
        if (json_is_integer(v))
            sqlite3_bind_int64(s->load_st, i, json_integer_value(v));
        else if (json_is_real(v))
            sqlite3_bind_double(s->load_st, i, json_real_value(v));
        else if (json_is_string(v))
            sqlite3_bind_text(s->load_st, i, json_string_value(v),
                              (int)json_string_length(v), SQLITE_STATIC);
        else if (json_is_boolean(v))
            sqlite3_bind_int(s->load_st, i, json_is_true(v));
    }
    rc = sqlite3_step(s->load_st);
    sqlite3_reset(s->load_st);
    return rc == SQLITE_DONE ? 0 : sqlite_fail(s, rc, "load");
}

/* The kept counts and spend from the jobs, as sql/006 and sql/012 first
 * filled them (the spend of jobs purged before the move stays behind). */
static int
sqlite_load_done(struct store *base)
{
    struct sqlite_store *s = sq(base);
    int rc = sqlite3_exec(
        s->db,
        "DELETE FROM job_counts; "
        "INSERT INTO job_counts (provider, batch, state, n) "
        "SELECT provider, coalesce(batch, ''), state, count(*) "
        "FROM jobs GROUP BY 1, 2, 3; "
        "DELETE FROM job_done_minutes; "
        "INSERT INTO job_done_minutes (provider, batch, minute, n, "
        "first_at, last_at) "
        "SELECT provider, coalesce(batch, ''), finished_at / 60000, "
        "count(*), min(finished_at), max(finished_at) FROM jobs "
        "WHERE finished_at IS NOT NULL AND state IN (" JOB_TERMINAL_SQL ") "
        "GROUP BY 1, 2, 3; "
        "DELETE FROM job_spend; "
        "INSERT INTO job_spend (provider, batch, spent, jobs_costed) "
        "SELECT provider, coalesce(batch, ''), total(cost), count(cost) "
        "FROM jobs WHERE cost IS NOT NULL GROUP BY 1, 2; "
        "DELETE FROM job_spend_minutes; "
        "INSERT INTO job_spend_minutes (provider, batch, minute, spent) "
        "SELECT provider, coalesce(batch, ''), "
        "coalesce(finished_at, updated_at) / 60000, total(cost) FROM jobs "
        "WHERE cost IS NOT NULL GROUP BY 1, 2, 3",
        NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : sqlite_fail(s, rc, "load: kept counts");
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sqlite_open,
    .open_readonly = sqlite_open_readonly,
    .close = sqlite_close,
    .schema_version = sqlite_schema_version,
    .schema_latest = sqlite_schema_latest,
    .set_busy_timeout = sqlite_set_busy_timeout,
    .begin = sqlite_begin,
    .commit = sqlite_commit,
    .rollback = sqlite_rollback,
    .insert_job = sqlite_insert_job,
    .insert_jobs = sqlite_insert_jobs,
    .set_unsafe_resend = sqlite_set_unsafe_resend,
    .reclaim_expired = sqlite_reclaim_expired,
    .daemon_register = sqlite_daemon_register,
    .daemon_beat = sqlite_daemon_beat,
    .daemons = sqlite_daemons,
    .daemon_reap = sqlite_daemon_reap,
    .permit_take = sqlite_permit_take,
    .permit_put = sqlite_permit_put,
    .claim = sqlite_claim,
    .next_due = sqlite_next_due,
    .pending_count = sqlite_pending_count,
    .unfinished_by_provider = sqlite_unfinished_by_provider,
    .count_waiting = sqlite_count_waiting,
    .has_unfinished = sqlite_has_unfinished,
    .counts = sqlite_counts,
    .oldest_queued = sqlite_oldest_queued,
    .claim_except = sqlite_claim_except,
    .spend = sqlite_spend,
    .batch_budget_set = sqlite_batch_budget_set,
    .batch_budgets = sqlite_batch_budgets,
    .batch_pause = sqlite_batch_pause,
    .spend_json = sqlite_spend_json,
    .data_version = sqlite_data_version,
    .watch = sqlite_watch,
    .flush = sqlite_flush,
    .cancelled = sqlite_cancelled,
    .provider_put = sqlite_provider_put,
    .provider_get = sqlite_provider_get,
    .provider_request_resume = sqlite_provider_request_resume,
    .status_json = sqlite_status_json,
    .jobs_json = sqlite_jobs_json,
    .job_json = sqlite_job_json,
    .failures_json = sqlite_failures_json,
    .resolve_one = sqlite_resolve_one,
    .retry = sqlite_retry,
    .cancel = sqlite_cancel,
    .export = sqlite_export,
    .purge = sqlite_purge,
    .progress_json = sqlite_progress_json,
    .providers_json = sqlite_providers_json,
    .is_empty = sqlite_is_empty,
    .dump = sqlite_dump,
    .load = sqlite_load,
    .load_done = sqlite_load_done,
    .outputs_claim = sqlite_outputs_claim,
    .output_record = sqlite_output_record,
    .outputs_next_due = sqlite_outputs_next_due,
    .outputs_counts = sqlite_outputs_counts,
    .outputs_json = sqlite_outputs_json,
    .outputs_retry = sqlite_outputs_retry,
};
