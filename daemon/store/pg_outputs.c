/*
 * pg_outputs: the outputs table on PostgreSQL (docs/design.md §13;
 * postgres.c): downloads claimed with a lease as jobs are, recorded
 * under the lease owner, listed and retried by the operator.
 */
#include <errno.h>

#include "pg.h"

/* Statements prepared on every connection (pg_conn.c). */
const char *const pg_outputs_sql[P_COUNT] = {
    /* The outputs table (docs/design.md §13), as sqlite_outputs.c's OS_*
     * statements; a download's lease is its claim. */
    [P_OUT_CLAIM] =
        "UPDATE outputs SET attempts = attempts + 1, "
        "lease_until = $1::bigint, lease_owner = $2::text "
        "WHERE id IN (SELECT id FROM outputs WHERE state = 'pending' "
        "  AND run_after <= $3::bigint "
        "  AND (lease_until IS NULL OR lease_until <= $3::bigint) "
        "  ORDER BY run_after, id LIMIT $4::int FOR UPDATE SKIP LOCKED) "
        "RETURNING id, job_id, url, attempts, "
        "(SELECT provider FROM jobs WHERE jobs.id = outputs.job_id)",
    [P_OUT_RECORD] =
        "UPDATE outputs SET state = $2::text, path = $3::text, "
        "sha256 = $4::text, bytes = $5::bigint, content_type = $6::text, "
        "error = $7::text, fetched_at = CASE WHEN $2::text = 'pending' "
        "  THEN fetched_at ELSE $8::bigint END, "
        "run_after = $9::bigint, "
        "attempts = GREATEST(attempts - $10::int, 0), "
        "lease_until = NULL, lease_owner = NULL WHERE id = $1::bigint "
        "AND lease_owner = $11::text",
    [P_OUT_NEXT_DUE] =
        "SELECT MIN(CASE WHEN lease_until > run_after THEN lease_until "
        "  ELSE run_after END) FROM outputs WHERE state = 'pending'",
    [P_OUT_COUNTS] = "SELECT state, COUNT(*) FROM outputs GROUP BY state",
    [P_OUT_LIST] =
        "SELECT o.id, o.job_id, j.custom_id, j.provider, j.batch, o.url, "
        "o.state, o.path, o.sha256, o.bytes, o.content_type, o.error, "
        "o.attempts, o.fetched_at FROM outputs o JOIN jobs j "
        "ON j.id = o.job_id "
        "WHERE ($1::text IS NULL OR j.batch = $1::text) "
        "AND ($2::text IS NULL OR o.state = $2::text) "
        "ORDER BY o.job_id, o.id",
    [P_OUT_RETRY] = "UPDATE outputs SET state = 'pending', attempts = 0, "
                    "run_after = $1::bigint, fetched_at = NULL "
                    "WHERE state = 'failed' AND ($2::text IS NULL OR job_id IN "
                    "  (SELECT id FROM jobs WHERE batch = $2::text))",
};

int
pg_outputs_claim(struct store *base, int max, int64_t now_ms, int64_t lease_ms,
                 const char *owner, struct output_claim *out, int *nout)
{
    struct params p = {0};
    PGresult *r;
    int err;

    *nout = 0;
    p_int(&p, now_ms + lease_ms);
    p_text(&p, owner);
    p_int(&p, now_ms);
    p_int(&p, max);
    if ((r = pg_run(pq(base), P_OUT_CLAIM, &p, "claim outputs", &err)) == NULL)
        return err; /* one statement: nothing was claimed */
    for (int i = 0; i < PQntuples(r) && *nout < max; i++) {
        struct output_claim *c = &out[(*nout)++];
        c->id = value_int(r, i, 0);
        c->job_id = value_int(r, i, 1);
        c->url = value_strdup(r, i, 2);
        c->attempts = (int)value_int(r, i, 3);
        c->provider = value_strdup(r, i, 4);
    }
    PQclear(r);
    return 0;
}

int
pg_output_record(struct store *base, const struct output_result *o,
                 int64_t now_ms)
{
    struct params p = {0};

    p_int(&p, o->id);
    p_text(&p, o->state);
    p_text(&p, o->path);
    p_text(&p, o->sha256);
    if (o->path != NULL)
        p_int(&p, o->bytes);
    else
        p_text(&p, NULL);
    p_text(&p, o->content_type);
    p_text(&p, o->error);
    p_int(&p, now_ms);
    p_int(&p, o->run_after);
    p_int(&p, o->uncharge);
    p_text(&p, o->owner);
    long changed = 0;
    int rc =
        pg_run_changes(pq(base), P_OUT_RECORD, &p, "record output", &changed);
    if (rc < 0)
        return rc;
    return changed == 1 ? 0 : -ESTALE;
}

int
pg_outputs_next_due(struct store *base, int64_t *due_ms)
{
    return pg_run_int(pq(base), P_OUT_NEXT_DUE, NULL, "next output due",
                      due_ms);
}

int
pg_outputs_counts(struct store *base, long *pending, long *stored, long *failed)
{
    int err;
    PGresult *r = pg_run(pq(base), P_OUT_COUNTS, NULL, "output counts", &err);

    *pending = *stored = *failed = 0;
    if (r == NULL)
        return err;
    for (int i = 0; i < PQntuples(r); i++)
        backend_outputs_count(PQgetvalue(r, i, 0), (long)value_int(r, i, 1),
                              pending, stored, failed);
    PQclear(r);
    return 0;
}

json_t *
pg_outputs_json(struct store *base, const char *batch, const char *state)
{
    struct params p = {0};

    p_text(&p, batch);
    p_text(&p, state);
    return pg_array_json(pq(base), P_OUT_LIST, &p, "outputs");
}

int
pg_outputs_retry(struct store *base, const char *batch, int64_t now_ms,
                 long *changed)
{
    struct params p = {0};

    *changed = 0;
    p_int(&p, now_ms);
    p_text(&p, batch);
    return pg_run_changes(pq(base), P_OUT_RETRY, &p, "retry outputs", changed);
}
