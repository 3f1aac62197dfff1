/*
 * ctl/enqueue.c: sluicectl enqueue, JSONL files into the queue.
 *
 * enqueue streams each file with getline inside one transaction, so a
 * million-line file runs in bounded memory and a bad line leaves nothing
 * of that file behind. Loading a file whole was rejected for that reason.
 * Worker threads parse chunks of lines (jobspec's one-pass reader) while
 * the main thread reads and inserts them in file order, 128 rows per
 * INSERT (store_insert_jobs): ~35k lines/s became over 100k on two cores
 * with jansson, and since the one-pass reader the inserting thread is the
 * limit (bench/README.md).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sysexits.h>
#include <unistd.h>

#include "internal.h"
#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/jobspec.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* enqueue's progress line: refreshed at most every 500 ms (often enough to
 * look alive, rarely enough to cost nothing), and the clock is read only
 * every 4096 lines so that the check itself stays off the profile. */
#define CTL_PROGRESS_MS 500
#define CTL_PROGRESS_LINES 4096

/* enqueue's parse pipeline: chunks of 8192 lines or 1 MiB of text,
 * whichever comes first, a ring of 8 of them (at most a few tens of MiB of
 * text and jobs, whatever the file's size), and no more than 4 parsing
 * threads (past that the single inserting thread is the limit). A chunk is
 * one store_insert_jobs: on PostgreSQL one COPY and two round trips, which
 * on a loaded machine cost more than its rows (a 200k-line file in 1,024-
 * line chunks took twice as long as in 16k-line ones; bench/README.md,
 * postgres); SQLite does not mind either way. */
#define CTL_CHUNK_LINES 8192
#define CTL_CHUNK_BYTES (1u << 20)
#define CTL_SLOTS 8
#define CTL_MAX_WORKERS 4

/* --- enqueue -------------------------------------------------------------- */

struct ctl_enqueue {
    struct jobspec_opts opts;
    bool progress; /* stderr is a TTY */
    long enqueued; /* totals over the files committed so far */
    long duplicates;
    int files_done;
};

/* "\r… 412000 lines, 180000/s" on stderr. */
static void
ctl_progress(const char *name, long lines, int64_t start_ms, int64_t now_ms)
{
    int64_t dt = now_ms - start_ms;
    long rate = dt > 0 ? (long)(lines * 1000.0 / (double)dt) : 0;
    fprintf(stderr, "\r\033[Kenqueue: %s: %ld lines, %ld/s", name, lines, rate);
    fflush(stderr);
}

static bool
ctl_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

/* Why the caller sees a file rejected, and what stays in the queue. */
static void
ctl_enqueue_rejected(const struct ctl_enqueue *e, const char *name)
{
    fprintf(stderr,
            "sluicectl enqueue: %s rejected, nothing of it "
            "enqueued",
            name);
    if (e->files_done > 0)
        fprintf(stderr,
                " (the %d file%s before it stay%s: %ld jobs "
                "enqueued)",
                e->files_done, e->files_done == 1 ? "" : "s",
                e->files_done == 1 ? "s" : "", e->enqueued);
    fputc('\n', stderr);
}

/*
 * The parse pipeline of enqueue. Workers parse chunks of lines (the
 * canonical body, validation, the key) while this thread reads the next
 * ones and inserts the parsed chunks in file order. A ring of CTL_SLOTS
 * chunks bounds memory whatever the file's size. Errors stay exact: a
 * worker stops a chunk at its first bad line, and chunks are inserted in
 * order, so the first bad line reported is the first bad line of the
 * file.
 */
struct ctl_chunk {
    struct buf text; /* the lines, each NUL-terminated */
    size_t *off;     /* start of line i in text */
    size_t *len;     /* its length */
    long first_line; /* file line number of line 0 */
    size_t nlines, cap;
    struct jobspec *specs; /* parsed jobs (blank lines skipped) */
    size_t nspecs;
    long bad_line; /* file line of the first bad line, 0 none */
    char err[512]; /* its message */
    bool parsed;
};

struct ctl_pipe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct ctl_chunk slot[CTL_SLOTS];
    uint64_t head; /* next chunk to insert (reader) */
    uint64_t tail; /* chunks handed out so far (reader) */
    uint64_t next; /* next chunk to parse (workers) */
    bool done;     /* no more chunks: workers exit */
    const struct jobspec_opts *opts;
    pthread_t threads[CTL_MAX_WORKERS];
    int nthreads;
};

static void
ctl_chunk_parse(struct ctl_chunk *k, const struct jobspec_opts *o)
{
    k->nspecs = 0;
    k->bad_line = 0;
    for (size_t i = 0; i < k->nlines; i++) {
        const char *line = k->text.data + k->off[i];
        if (ctl_blank(line, k->len[i]))
            continue;
        if (jobspec_parse(line, k->len[i], o, &k->specs[k->nspecs], k->err,
                          sizeof(k->err)) < 0) {
            k->bad_line = k->first_line + (long)i;
            return;
        }
        k->nspecs++;
    }
}

static void *
ctl_pipe_worker(void *arg)
{
    struct ctl_pipe *p = arg;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->next == p->tail && !p->done)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->next == p->tail)
            break;
        struct ctl_chunk *k = &p->slot[p->next++ % CTL_SLOTS];
        pthread_mutex_unlock(&p->mu);
        ctl_chunk_parse(k, p->opts);
        pthread_mutex_lock(&p->mu);
        k->parsed = true;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Workers: one per CPU but one (this thread reads and inserts), at least
 * one, at most CTL_MAX_WORKERS. */
static void
ctl_pipe_start(struct ctl_pipe *p, const struct jobspec_opts *o)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cpus > 1 ? (int)cpus : 1;

    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->opts = o;
    for (int i = 0; i < CTL_SLOTS; i++)
        p->slot[i].specs = xcalloc(CTL_CHUNK_LINES, sizeof(struct jobspec));
    if (n > CTL_MAX_WORKERS)
        n = CTL_MAX_WORKERS;
    for (int i = 0; i < n; i++) {
        if (pthread_create(&p->threads[p->nthreads], NULL, ctl_pipe_worker,
                           p) == 0)
            p->nthreads++;
    }
}

/* The chunk the reader fills next; NULL while the ring is full. */
static struct ctl_chunk *
ctl_pipe_fill_slot(struct ctl_pipe *p)
{
    if (p->tail - p->head == CTL_SLOTS)
        return NULL;
    return &p->slot[p->tail % CTL_SLOTS];
}

static void
ctl_chunk_add(struct ctl_chunk *k, const char *line, size_t len, long lineno)
{
    if (k->nlines == 0)
        k->first_line = lineno;
    if (k->nlines == k->cap) {
        k->cap = k->cap ? 2 * k->cap : CTL_CHUNK_LINES;
        k->off = xrealloc(k->off, k->cap * sizeof(*k->off));
        k->len = xrealloc(k->len, k->cap * sizeof(*k->len));
    }
    k->off[k->nlines] = k->text.len;
    k->len[k->nlines++] = len;
    buf_append(&k->text, line, len);
    buf_append(&k->text, "", 1);
}

/* Hands the filled chunk to the workers (parsed here without any). */
static void
ctl_pipe_push(struct ctl_pipe *p)
{
    if (p->nthreads == 0) {
        ctl_chunk_parse(&p->slot[p->tail % CTL_SLOTS], p->opts);
        p->slot[p->tail % CTL_SLOTS].parsed = true;
        p->tail++;
        p->next = p->tail;
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->tail++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* The oldest chunk once parsed, or NULL when none is out. */
static struct ctl_chunk *
ctl_pipe_oldest(struct ctl_pipe *p)
{
    struct ctl_chunk *k;

    if (p->head == p->tail)
        return NULL;
    k = &p->slot[p->head % CTL_SLOTS];
    pthread_mutex_lock(&p->mu);
    while (!k->parsed)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return k;
}

/* Empties the oldest chunk for reuse. */
static void
ctl_pipe_pop(struct ctl_pipe *p)
{
    struct ctl_chunk *k = &p->slot[p->head++ % CTL_SLOTS];
    for (size_t i = 0; i < k->nspecs; i++)
        jobspec_clear(&k->specs[i]);
    k->nspecs = 0;
    k->nlines = 0;
    k->parsed = false;
    buf_reset(&k->text);
}

/* Waits out every chunk still out, stops the workers, frees the ring. */
static void
ctl_pipe_stop(struct ctl_pipe *p)
{
    while (ctl_pipe_oldest(p))
        ctl_pipe_pop(p);
    pthread_mutex_lock(&p->mu);
    p->done = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    for (int i = 0; i < CTL_SLOTS; i++) {
        buf_free(&p->slot[i].text);
        free(p->slot[i].off);
        free(p->slot[i].len);
        free(p->slot[i].specs);
    }
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

/* Inserts the oldest chunk (waiting for its parse). Returns 0 or the
 * exit code, message printed. */
static int
ctl_pipe_insert(struct ctl *c, struct ctl_pipe *p, const char *name,
                long *added, long *dup, bool *shown)
{
    struct ctl_chunk *k = ctl_pipe_oldest(p);
    size_t inserted = 0;
    int rc;

    if (k->bad_line) {
        if (*shown)
            fputs("\r\033[K", stderr);
        *shown = false;
        fprintf(stderr, "%s:%ld: %s\n", name, k->bad_line, k->err);
        return EX_DATAERR;
    }
    rc = store_insert_jobs(c->store, k->specs, k->nspecs, clock_now_ms(),
                           &inserted);
    if (rc < 0) {
        fprintf(stderr, "%s:%ld-%ld: database: %s\n", name, k->first_line,
                k->first_line + (long)k->nlines - 1, strerror(-rc));
        return 1;
    }
    *added += (long)inserted;
    *dup += (long)(k->nspecs - inserted);
    ctl_pipe_pop(p);
    return 0;
}

/* One file in one transaction. Returns 0 or the exit code. */
static int
ctl_enqueue_file(struct ctl *c, struct ctl_enqueue *e, const char *path)
{
    bool is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "<stdin>" : path;
    FILE *f = is_stdin ? stdin : fopen(path, "r");
    struct ctl_pipe *p;
    struct ctl_chunk *k;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, n = 0, dup = 0;
    bool shown = false;
    int64_t start = clock_now_ms(), last = start;
    int code = 0;

    if (!f) {
        fprintf(stderr, "sluicectl enqueue: %s: %s\n", name, strerror(errno));
        ctl_enqueue_rejected(e, name);
        return EX_NOINPUT;
    }
    if (store_begin(c->store) < 0) {
        fprintf(stderr, "sluicectl enqueue: %s: cannot begin a transaction\n",
                name);
        ctl_enqueue_rejected(e, name);
        if (!is_stdin)
            fclose(f);
        return 1;
    }
    p = xmalloc(sizeof(*p));
    ctl_pipe_start(p, &e->opts);
    errno = 0;
    while (code == 0 && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (e->progress && lineno % CTL_PROGRESS_LINES == 0) {
            int64_t now = clock_now_ms();
            if (now - last >= CTL_PROGRESS_MS) {
                ctl_progress(name, lineno, start, now);
                last = now;
                shown = true;
            }
        }
        while ((k = ctl_pipe_fill_slot(p)) == NULL)
            if ((code = ctl_pipe_insert(c, p, name, &n, &dup, &shown)) != 0)
                break;
        if (code != 0)
            break;
        ctl_chunk_add(k, line, (size_t)len, lineno);
        if (k->nlines == CTL_CHUNK_LINES || k->text.len >= CTL_CHUNK_BYTES)
            ctl_pipe_push(p);
        errno = 0;
    }
    if (code == 0 && ferror(f)) {
        fprintf(stderr, "sluicectl enqueue: %s: %s\n", name,
                strerror(errno ? errno : EIO));
        code = EX_NOINPUT;
    }
    if (code == 0 && (k = ctl_pipe_fill_slot(p)) && k->nlines > 0)
        ctl_pipe_push(p);
    while (code == 0 && p->head != p->tail)
        code = ctl_pipe_insert(c, p, name, &n, &dup, &shown);
    ctl_pipe_stop(p);
    free(p);
    if (shown)
        fputs("\r\033[K", stderr);
    if (code != 0) {
        store_rollback(c->store);
        goto out;
    }
    if (store_commit(c->store) < 0) {
        fprintf(stderr, "sluicectl enqueue: %s: commit failed\n", name);
        store_rollback(c->store);
        code = 1;
        goto out;
    }
    printf("%s: %ld enqueued, %ld duplicates skipped\n", name, n, dup);
    e->enqueued += n;
    e->duplicates += dup;
    e->files_done++;
out:
    if (code != 0)
        ctl_enqueue_rejected(e, name);
    free(line);
    if (!is_stdin)
        fclose(f);
    return code;
}

int
ctl_enqueue(struct ctl *c, int argc, char **argv)
{
    const char *provider = NULL, *batch = NULL, *budget_arg = NULL;
    bool unique = false;
    double budget = 0;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--provider", &provider, NULL},
        {"--batch", &batch, NULL},
        {"--unique", NULL, &unique},
        {"--budget", &budget_arg, NULL},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_parse_args("enqueue", argc, argv, opts, &npos)) != 0)
        return rc;
    if (npos == 0)
        return ctl_usage_error("enqueue", "no FILE given (- for stdin)");
    if (budget_arg && !batch)
        return ctl_usage_error("enqueue", "--budget caps a batch: give "
                                          "--batch too");
    if (budget_arg && (rc = ctl_amount("enqueue", "--budget", budget_arg,
                                       &budget)) != 0)
        return rc;
    if ((rc = ctl_open(c, "enqueue", true, true)) != 0)
        return rc;
    /* The cap goes in before the jobs: the daemon never sees them
     * without it. */
    if (budget_arg &&
        store_batch_budget_set(c->store, batch, budget, clock_now_ms()) < 0) {
        fprintf(stderr, "sluicectl enqueue: batch %s: cannot set its budget\n",
                batch);
        return 1;
    }
    if (provider && !config_provider(c->config, provider)) {
        fprintf(stderr,
                "sluicectl enqueue: --provider %s: not a provider "
                "of %s\n",
                provider, c->config_path);
        return EX_USAGE;
    }

    struct ctl_enqueue e = {
        .opts = {.config = c->config,
                 .provider = provider,
                 .batch = batch,
                 .unique = unique},
        .progress = isatty(STDERR_FILENO) == 1,
    };
    for (int i = 0; i < npos; i++) {
        if ((rc = ctl_enqueue_file(c, &e, argv[i])) != 0)
            return rc;
    }
    printf("%ld enqueued, %ld duplicates skipped\n", e.enqueued, e.duplicates);
    if (budget_arg)
        printf("batch %s: budget %.2f\n", batch, budget);
    return 0;
}
