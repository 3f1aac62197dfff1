/*
 * ctl: sluicectl, the operator's tool. It works on the database alone (the
 * daemon need not run) through the store API; no SQL text lives here.
 *
 * Commands are rows of one table {name, fn, usage}: a new command is one
 * function and one row. Global options (-c, --db) come before the command;
 * each command parses its own options with ctl_parse_opts, which accepts
 * options and operands in any order ("show 42 --json"), "--name=value" and
 * "--" to end options. Usage errors are reported before the config or the
 * database is touched.
 *
 * Config: -c, else $SLUICE_CONFIG, else the default path. A file named on
 * purpose (-c or the environment) must load; the default path may be
 * missing, in which case every command but enqueue still works with --db
 * (enqueue must know the providers to validate lines).
 *
 * enqueue streams each file with getline inside one transaction, so a
 * million-line file runs in bounded memory and a bad line leaves nothing
 * of that file behind. Loading a file whole was rejected for that reason.
 * Parsing (jansson) costs more than the insert, so worker threads parse
 * chunks of lines while the main thread reads and inserts them in file
 * order, 128 rows per INSERT (store_insert_jobs): ~35k lines/s became
 * over 100k on two cores.
 *
 * Output: human tables whose column widths are computed from the cells,
 * times as ISO-8601 UTC; --json prints the store's JSON document as is.
 * Exit codes follow sysexits (CONTRACT.md).
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "sluice/clock.h"
#include "sluice/config.h"
#include "sluice/job.h"
#include "sluice/jobspec.h"
#include "sluice/log.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* What one run of sluicectl works with; filled lazily by ctl_open. */
struct ctl {
    const char *config_flag; /* -c value, or NULL */
    const char *db_flag;     /* --db value, or NULL */
    const char *config_path; /* the path tried (flag, env or default) */
    struct config *config;   /* NULL when the default file is absent */
    struct store *store;     /* open database */
};

typedef int (*ctl_cmd_fn)(struct ctl *c, int argc, char **argv);

struct ctl_cmd {
    const char *name;
    ctl_cmd_fn fn;
    const char *usage; /* operands and options after the name */
    const char *help;  /* one line for the command list */
};

/* Returned by ctl_parse_opts for --help: print usage on stdout, exit 0. */
#define CTL_HELP (-1)

/* enqueue's progress line: refreshed at most every 500 ms (often enough to
 * look alive, rarely enough to cost nothing), and the clock is read only
 * every 4096 lines so that the check itself stays off the profile. */
#define CTL_PROGRESS_MS 500
#define CTL_PROGRESS_LINES 4096

/* enqueue's parse pipeline: chunks of 1024 lines (eight of store's
 * multi-row statements; ~200 KiB of text and jobs), a ring of 8 of them
 * (a few MiB, whatever the file's size), and no more than 4 parsing
 * threads (past that the single inserting thread is the limit). */
#define CTL_CHUNK_LINES 1024
#define CTL_SLOTS 8
#define CTL_MAX_WORKERS 4

/* jobs without --limit: one screenful or two for a human; --json has no
 * default limit since scripts want everything. */
#define CTL_JOBS_DEFAULT_LIMIT 50

static const struct ctl_cmd *ctl_find(const char *name);
static void ctl_usage(FILE *f);
static void ctl_cmd_usage(FILE *f, const struct ctl_cmd *cmd);

/* --- options ------------------------------------------------------------ */

struct ctl_opt {
    const char *name; /* "--state" */
    const char **val; /* set to the argument; NULL for a flag */
    bool *flag;       /* set true when present; for flags */
};

/*
 * Parses argv[1..argc) (argv[0] is the command) against opts. Operands are
 * moved to argv[0..*npos) in order. Returns 0, CTL_HELP, or EX_USAGE with
 * the problem printed on stderr.
 */
static int
ctl_parse_opts(const char *cmd, int argc, char **argv,
               const struct ctl_opt *opts, int *npos)
{
    bool only_operands = false;
    int n = 0;

    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (only_operands || arg[0] != '-' || strcmp(arg, "-") == 0) {
            argv[n++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_operands = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return CTL_HELP;
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        const struct ctl_opt *o = NULL;
        for (const struct ctl_opt *p = opts; p && p->name; p++) {
            if (strlen(p->name) == len && strncmp(p->name, arg, len) == 0) {
                o = p;
                break;
            }
        }
        if (!o) {
            fprintf(stderr, "sluicectl %s: unknown option '%.*s'\n", cmd,
                    (int)len, arg);
            return EX_USAGE;
        }
        if (!o->val) {
            if (eq) {
                fprintf(stderr, "sluicectl %s: %s takes no value\n", cmd,
                        o->name);
                return EX_USAGE;
            }
            *o->flag = true;
            continue;
        }
        if (eq) {
            *o->val = eq + 1;
        } else if (i + 1 < argc) {
            *o->val = argv[++i];
        } else {
            fprintf(stderr, "sluicectl %s: %s needs a value\n", cmd, o->name);
            return EX_USAGE;
        }
    }
    *npos = n;
    return 0;
}

/* Runs ctl_parse_opts and turns its verdict into the command's exit code:
 * returns -1 to go on, or the code to exit with (usage printed). */
static int
ctl_options(const char *cmd, int argc, char **argv, const struct ctl_opt *opts,
            int *npos)
{
    int rc = ctl_parse_opts(cmd, argc, argv, opts, npos);
    if (rc == 0)
        return -1;
    if (rc == CTL_HELP) {
        ctl_cmd_usage(stdout, ctl_find(cmd));
        return 0;
    }
    ctl_cmd_usage(stderr, ctl_find(cmd));
    return rc;
}

static int
ctl_usage_error(const char *cmd, const char *what)
{
    fprintf(stderr, "sluicectl %s: %s\n", cmd, what);
    ctl_cmd_usage(stderr, ctl_find(cmd));
    return EX_USAGE;
}

/* --- config and database ------------------------------------------------- */

/*
 * Loads the config and opens the database. need_config: the command cannot
 * work without the providers (enqueue). create_db: a missing database file
 * may be created (enqueue); the read-only commands report it instead of
 * leaving an empty file behind. Returns 0 or the exit code, message printed.
 */
static int
ctl_open(struct ctl *c, const char *cmd, bool need_config, bool create_db)
{
    char err[512];
    bool chosen = c->config_flag || getenv("SLUICE_CONFIG");

    c->config_path = config_default_path(c->config_flag);
    bool absent =
        !chosen && access(c->config_path, F_OK) < 0 && errno == ENOENT;
    if (!absent) {
        err[0] = '\0';
        if (config_load(c->config_path, &c->config, err, sizeof(err)) < 0) {
            c->config = NULL;
            if (err[0])
                fprintf(stderr, "sluicectl: %s\n", err);
            else
                fprintf(stderr, "sluicectl: config %s: invalid\n",
                        c->config_path);
            return EX_CONFIG;
        }
    } else if (need_config) {
        fprintf(stderr,
                "sluicectl: %s: no config (%s: %s): "
                "providers unknown\n",
                cmd, c->config_path, strerror(ENOENT));
        return EX_CONFIG;
    }

    const char *db = c->db_flag  ? c->db_flag
                     : c->config ? c->config->database
                                 : NULL;
    if (!db) {
        fprintf(stderr,
                "sluicectl: %s: no database: %s names none and "
                "no --db given\n",
                cmd, c->config_path);
        return EX_CONFIG;
    }
    if (!create_db && strcmp(db, ":memory:") != 0 && access(db, F_OK) < 0) {
        fprintf(stderr, "sluicectl: %s: database %s: %s\n", cmd, db,
                strerror(errno));
        return EX_NOINPUT;
    }
    if (store_open(db, &c->store) < 0) {
        c->store = NULL;
        fprintf(stderr, "sluicectl: %s: cannot open database %s\n", cmd, db);
        return 1;
    }
    return 0;
}

/* --- formatting ---------------------------------------------------------- */

/* ISO-8601 UTC of unix ms, seconds precision: "2026-11-21T10:00:00Z". */
static void
ctl_iso_time(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !gmtime_r(&t, &tm)) {
        strcpy(out, "-");
        return;
    }
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Columns holding unix ms (CONTRACT.md: every *_at, and these). */
static bool
ctl_is_time_key(const char *key)
{
    size_t n = strlen(key);
    return (n > 3 && strcmp(key + n - 3, "_at") == 0) ||
           strcmp(key, "run_after") == 0 || strcmp(key, "lease_until") == 0 ||
           strcmp(key, "pause_until") == 0 || strcmp(key, "waiting_since") == 0;
}

/* A new string for a table cell; key decides whether integers are times. */
static char *
ctl_cell(const char *key, const json_t *v)
{
    char when[32];

    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_string_length(v) ? xstrdup(json_string_value(v))
                                     : xstrdup("-");
    case JSON_INTEGER:
        if (key && ctl_is_time_key(key)) {
            ctl_iso_time(json_integer_value(v), when);
            return xstrdup(when);
        }
        return xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL:
        return xasprintf("%g", json_real_value(v));
    case JSON_TRUE:
        return xstrdup("true");
    case JSON_FALSE:
        return xstrdup("false");
    case JSON_OBJECT:
    case JSON_ARRAY: {
        char *s = json_dumps(v, JSON_COMPACT);
        char *copy = xstrdup(s ? s : "?");
        free(s);
        return copy;
    }
    case JSON_NULL:
    default:
        return xstrdup("-");
    }
}

/* Display width of UTF-8 text: code points (no wide-glyph tables here). */
static size_t
ctl_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

static bool
ctl_is_number(const char *s)
{
    if (*s == '-')
        s++;
    if (!*s)
        return false;
    for (; *s; s++)
        if ((*s < '0' || *s > '9') && *s != '.')
            return false;
    return true;
}

/* A table of owned strings: row 0 is the header. */
struct ctl_table {
    size_t ncols;
    size_t nrows;
    size_t cap;
    char **cells; /* nrows × ncols */
};

static void
ctl_table_init(struct ctl_table *t, size_t ncols)
{
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
}

/* Appends a row; takes ownership of the ncols strings of row. */
static void
ctl_table_add(struct ctl_table *t, char **row)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 16;
        t->cells = xrealloc(t->cells, t->cap * t->ncols * sizeof(char *));
    }
    memcpy(t->cells + t->nrows * t->ncols, row, t->ncols * sizeof(char *));
    t->nrows++;
}

/* Prints with two spaces between columns; a column of numbers (and "-"
 * for none, with at least one number) right-aligned; no trailing blanks.
 * Frees the table. */
static void
ctl_table_print(struct ctl_table *t, FILE *f)
{
    size_t *width = xcalloc(t->ncols, sizeof(size_t));
    bool *right = xcalloc(t->ncols, sizeof(bool));

    for (size_t j = 0; j < t->ncols; j++) {
        bool numbers = true, some = false;
        for (size_t i = 0; i < t->nrows; i++) {
            const char *s = t->cells[i * t->ncols + j];
            size_t w = ctl_width(s);
            if (w > width[j])
                width[j] = w;
            if (i == 0 || strcmp(s, "-") == 0)
                continue;
            if (ctl_is_number(s))
                some = true;
            else
                numbers = false;
        }
        right[j] = numbers && some;
    }
    for (size_t i = 0; i < t->nrows; i++) {
        for (size_t j = 0; j < t->ncols; j++) {
            const char *s = t->cells[i * t->ncols + j];
            int pad = (int)(width[j] - ctl_width(s));
            bool last = j + 1 == t->ncols;
            if (j > 0)
                fputs("  ", f);
            if (right[j])
                fprintf(f, "%*s%s", pad, "", s);
            else
                fprintf(f, "%s%*s", s, last ? 0 : pad, "");
        }
        fputc('\n', f);
    }
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(width);
    free(right);
}

/* A column of an object table: the key and its header. */
struct ctl_col {
    const char *key;
    const char *head;
};

static char *
ctl_header_of(const char *key)
{
    char *h = xstrdup(key);
    for (char *p = h; *p; p++)
        *p = *p == '_' ? ' ' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    return h;
}

/*
 * Prints an array of objects as a table. The columns are cols that occur
 * in some row, in that order, then (unless only_cols) every other key in
 * the order first seen. Absent or null cells print "-".
 */
static void
ctl_print_objects(FILE *f, const json_t *rows, const struct ctl_col *cols,
                  size_t ncols, bool only_cols)
{
    const char **keys = xcalloc(ncols + 1, sizeof(char *));
    char **heads = xcalloc(ncols + 1, sizeof(char *));
    size_t nkeys = 0, cap = ncols + 1;
    size_t i;
    json_t *row;

    for (size_t k = 0; k < ncols; k++) {
        json_array_foreach(rows, i, row)
        {
            if (json_object_get(row, cols[k].key)) {
                keys[nkeys] = cols[k].key;
                heads[nkeys++] = xstrdup(cols[k].head);
                break;
            }
        }
    }
    if (!only_cols) {
        json_array_foreach(rows, i, row)
        {
            const char *key;
            json_t *v;
            json_object_foreach(row, key, v)
            {
                size_t k = 0;
                while (k < nkeys && strcmp(keys[k], key) != 0)
                    k++;
                if (k < nkeys)
                    continue;
                if (nkeys == cap) {
                    cap *= 2;
                    keys = xrealloc(keys, cap * sizeof(char *));
                    heads = xrealloc(heads, cap * sizeof(char *));
                }
                keys[nkeys] = key;
                heads[nkeys++] = ctl_header_of(key);
            }
        }
    }
    if (nkeys == 0) {
        free(keys);
        free(heads);
        return;
    }

    struct ctl_table t;
    ctl_table_init(&t, nkeys);
    ctl_table_add(&t, heads);
    char **cells = xcalloc(nkeys, sizeof(char *));
    json_array_foreach(rows, i, row)
    {
        for (size_t k = 0; k < nkeys; k++) {
            json_t *v = json_object_get(row, keys[k]);
            cells[k] = v ? ctl_cell(keys[k], v) : xstrdup("-");
        }
        ctl_table_add(&t, cells);
    }
    ctl_table_print(&t, f);
    free(cells);
    free(keys);
    free(heads);
}

/* One JSON document on stdout, as CONTRACT.md's --json promises. */
static int
ctl_print_json(const json_t *v)
{
    if (json_dumpf(v, stdout, JSON_INDENT(2)) < 0 || fputc('\n', stdout) < 0)
        return 1;
    return 0;
}

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
 * The parse pipeline of enqueue. Parsing a line (jansson, validation, the
 * canonical body, the key) costs more than inserting it, so workers parse
 * chunks of lines while this thread reads the next ones and inserts the
 * parsed chunks in file order. A ring of CTL_SLOTS chunks bounds memory
 * whatever the file's size. Errors stay exact: a worker stops a chunk at
 * its first bad line, and chunks are inserted in order, so the first bad
 * line reported is the first bad line of the file.
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
        if (k->nlines == CTL_CHUNK_LINES)
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

static int
ctl_enqueue(struct ctl *c, int argc, char **argv)
{
    const char *provider = NULL, *batch = NULL;
    bool unique = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--provider", &provider, NULL},
        {"--batch", &batch, NULL},
        {"--unique", NULL, &unique},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("enqueue", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos == 0)
        return ctl_usage_error("enqueue", "no FILE given (- for stdin)");
    if ((rc = ctl_open(c, "enqueue", true, true)) != 0)
        return rc;
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
    return 0;
}

/* --- status --------------------------------------------------------------- */

static void
ctl_status_providers(const json_t *providers)
{
    struct ctl_table t;
    char **row = xcalloc(JOB_STATE_COUNT + 2, sizeof(char *));
    const char *name;
    json_t *counts;

    ctl_table_init(&t, JOB_STATE_COUNT + 2);
    row[0] = xstrdup("PROVIDER");
    for (int s = 0; s < JOB_STATE_COUNT; s++)
        row[s + 1] = ctl_header_of(job_state_name((enum job_state)s));
    row[JOB_STATE_COUNT + 1] = xstrdup("TOTAL");
    ctl_table_add(&t, row);
    json_object_foreach((json_t *)providers, name, counts)
    {
        json_int_t total = 0;
        row[0] = xstrdup(name);
        for (int s = 0; s < JOB_STATE_COUNT; s++) {
            json_int_t k = json_integer_value(
                json_object_get(counts, job_state_name((enum job_state)s)));
            total += k;
            row[s + 1] = xasprintf("%" JSON_INTEGER_FORMAT, k);
        }
        row[JOB_STATE_COUNT + 1] = xasprintf("%" JSON_INTEGER_FORMAT, total);
        ctl_table_add(&t, row);
    }
    ctl_table_print(&t, stdout);
    free(row);
}

static int
ctl_status(struct ctl *c, int argc, char **argv)
{
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };
    static const struct ctl_col batch_cols[] = {
        {"batch", "BATCH"},         {"provider", "PROVIDER"},
        {"queued", "QUEUED"},       {"running", "RUNNING"},
        {"waiting", "WAITING"},     {"retrying", "RETRYING"},
        {"succeeded", "SUCCEEDED"}, {"failed", "FAILED"},
        {"cancelled", "CANCELLED"}, {"total", "TOTAL"},
        {"rate_per_s", "RATE/S"},   {"eta_s", "ETA S"},
    };
    static const struct ctl_col lane_cols[] = {
        {"name", "PROVIDER"},       {"state", "STATE"},
        {"reason", "REASON"},       {"concurrency_limit", "LIMIT"},
        {"in_flight", "IN FLIGHT"}, {"pause_until", "PAUSED UNTIL"},
        {"updated_at", "UPDATED"},
    };

    if ((rc = ctl_options("status", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("status", "takes no operand");
    if ((rc = ctl_open(c, "status", false, false)) != 0)
        return rc;
    json_t *st = store_status_json(c->store);
    if (!st) {
        fprintf(stderr, "sluicectl status: cannot read the database\n");
        return 1;
    }
    if (json) {
        rc = ctl_print_json(st);
        json_decref(st);
        return rc;
    }

    json_t *providers = json_object_get(st, "providers");
    json_t *batches = json_object_get(st, "batches");
    json_t *lanes = json_object_get(st, "lanes");
    if (json_object_size(providers) == 0)
        printf("no jobs\n");
    else
        ctl_status_providers(providers);
    if (json_array_size(batches) > 0) {
        printf("\nbatches\n");
        ctl_print_objects(stdout, batches, batch_cols,
                          sizeof(batch_cols) / sizeof(batch_cols[0]), true);
    }
    if (json_array_size(lanes) > 0) {
        printf("\nlanes\n");
        ctl_print_objects(stdout, lanes, lane_cols,
                          sizeof(lane_cols) / sizeof(lane_cols[0]), false);
    }
    json_decref(st);
    return 0;
}

/* --- jobs ----------------------------------------------------------------- */

static int
ctl_bad_state(const char *cmd, const char *state)
{
    fprintf(stderr, "sluicectl %s: unknown state '%s'; valid:", cmd, state);
    for (int s = 0; s < JOB_STATE_COUNT; s++)
        fprintf(stderr, " %s", job_state_name((enum job_state)s));
    fputc('\n', stderr);
    return EX_USAGE;
}

/* A count option: a non-negative decimal. Returns 0 or -EINVAL. */
static int
ctl_parse_count(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0)
        return -EINVAL;
    *out = v;
    return 0;
}

static int
ctl_jobs(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL, *limit_arg = NULL;
    struct store_filter flt = {0};
    bool json = false;
    enum job_state st;
    long limit;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--state", &state, NULL},     {"--provider", &flt.provider, NULL},
        {"--batch", &flt.batch, NULL}, {"--limit", &limit_arg, NULL},
        {"--json", NULL, &json},       {NULL, NULL, NULL},
    };
    static const struct ctl_col cols[] = {
        {"id", "ID"},
        {"provider", "PROVIDER"},
        {"batch", "BATCH"},
        {"custom_id", "CUSTOM ID"},
        {"state", "STATE"},
        {"attempts", "ATTEMPTS"},
        {"http_status", "HTTP"},
        {"error_class", "CLASS"},
        {"error_code", "CODE"},
        {"updated_at", "UPDATED"},
    };

    if ((rc = ctl_options("jobs", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("jobs", "takes no operand");
    if (state && job_state_parse(state, &st) < 0)
        return ctl_bad_state("jobs", state);
    limit = json ? 0 : CTL_JOBS_DEFAULT_LIMIT;
    if (limit_arg && ctl_parse_count(limit_arg, &limit) < 0)
        return ctl_usage_error("jobs", "--limit: not a count");
    if ((rc = ctl_open(c, "jobs", false, false)) != 0)
        return rc;

    flt.state = state;
    /* One row more than shown tells a human that the list was cut. */
    flt.limit = json || limit == 0 ? limit : limit + 1;
    json_t *rows = store_jobs_json(c->store, &flt);
    if (!rows) {
        fprintf(stderr, "sluicectl jobs: cannot read the database\n");
        return 1;
    }
    if (json) {
        rc = ctl_print_json(rows);
        json_decref(rows);
        return rc;
    }
    bool cut = limit > 0 && json_array_size(rows) > (size_t)limit;
    if (cut)
        json_array_remove(rows, (size_t)limit);
    if (json_array_size(rows) == 0)
        printf("no jobs\n");
    else
        ctl_print_objects(stdout, rows, cols, sizeof(cols) / sizeof(cols[0]),
                          true);
    if (cut)
        fprintf(stderr, "(first %ld shown; --limit N or --limit 0 for all)\n",
                limit);
    json_decref(rows);
    return 0;
}

/* --- show ----------------------------------------------------------------- */

/* Job keys printed in their own sections rather than in the field list.
 * "attempts" is both a column (a count) and, in store_job_json, possibly
 * the array of attempt rows: only the array has its own section. */
static bool
ctl_show_sectioned(const char *key, const json_t *v)
{
    static const char *const keys[] = {
        "body",       "result",        "http_status", "error_class",
        "error_code", "error_message", "request_id",
    };
    if (strcmp(key, "attempts") == 0)
        return json_is_array(v);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(key, keys[i]) == 0)
            return true;
    return false;
}

/* body and result are JSON text in the database (or already JSON values):
 * printed indented under their heading; text that is not JSON as is. */
static void
ctl_show_json_field(const char *head, const json_t *v)
{
    json_t *parsed = NULL;
    char *text;

    if (!v || json_is_null(v))
        return;
    if (json_is_string(v))
        parsed = json_loads(json_string_value(v), JSON_DECODE_ANY, NULL);
    printf("\n%s:\n", head);
    if (json_is_string(v) && !parsed) {
        printf("  %s\n", json_string_value(v));
        return;
    }
    text = json_dumps(parsed ? parsed : v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (text) {
        for (char *p = text, *nl; p && *p; p = nl ? nl + 1 : NULL) {
            nl = strchr(p, '\n');
            printf("  %.*s\n", (int)(nl ? nl - p : (long)strlen(p)), p);
        }
    }
    free(text);
    json_decref(parsed);
}

/* "key: value" lines with the values aligned. */
static void
ctl_show_fields(const json_t *job, const char *const *keys, size_t nkeys)
{
    size_t w = 0;
    for (size_t i = 0; i < nkeys; i++)
        if (json_object_get(job, keys[i]) && strlen(keys[i]) > w)
            w = strlen(keys[i]);
    for (size_t i = 0; i < nkeys; i++) {
        json_t *v = json_object_get(job, keys[i]);
        if (!v)
            continue;
        char *cell = ctl_cell(keys[i], v);
        printf("%s:%*s %s\n", keys[i], (int)(w - strlen(keys[i])), "", cell);
        free(cell);
    }
}

static void
ctl_show_attempts(const json_t *attempts)
{
    struct ctl_table t;
    static const char *const heads[] = {
        "ATTEMPT", "STARTED", "MS",         "HTTP",
        "CLASS",   "CODE",    "REQUEST ID", "KEY SENT",
    };
    static const char *const keys[] = {
        "attempt",     "started_at", NULL,         "http_status",
        "error_class", "error_code", "request_id", "idempotency_key",
    };
    enum { NCOLS = sizeof(heads) / sizeof(heads[0]) };
    char *row[NCOLS];
    size_t i;
    json_t *a;

    ctl_table_init(&t, NCOLS);
    for (size_t k = 0; k < NCOLS; k++)
        row[k] = xstrdup(heads[k]);
    ctl_table_add(&t, row);
    json_array_foreach(attempts, i, a)
    {
        for (size_t k = 0; k < NCOLS; k++) {
            json_t *v = keys[k] ? json_object_get(a, keys[k]) : NULL;
            row[k] = v ? ctl_cell(keys[k], v) : xstrdup("-");
        }
        json_t *s = json_object_get(a, "started_at");
        json_t *f = json_object_get(a, "finished_at");
        if (json_is_integer(s) && json_is_integer(f)) {
            free(row[2]);
            row[2] = xasprintf("%" JSON_INTEGER_FORMAT,
                               json_integer_value(f) - json_integer_value(s));
        }
        ctl_table_add(&t, row);
    }
    ctl_table_print(&t, stdout);
}

static int
ctl_show(struct ctl *c, int argc, char **argv)
{
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };
    static const char *const failure_keys[] = {
        "http_status",   "error_class", "error_code",
        "error_message", "request_id",
    };

    if ((rc = ctl_options("show", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos != 1)
        return ctl_usage_error("show", "needs exactly one ID or CUSTOM_ID");
    if ((rc = ctl_open(c, "show", false, false)) != 0)
        return rc;
    json_t *job = store_job_json(c->store, argv[0]);
    if (!job) {
        fprintf(stderr, "sluicectl show: no job '%s'\n", argv[0]);
        return 1;
    }
    if (json) {
        rc = ctl_print_json(job);
        json_decref(job);
        return rc;
    }

    size_t nkeys = 0;
    const char **keys = xcalloc(json_object_size(job) + 1, sizeof(char *));
    const char *key;
    json_t *v;
    json_object_foreach(job, key, v)
    {
        if (!ctl_show_sectioned(key, v))
            keys[nkeys++] = key;
    }
    ctl_show_fields(job, keys, nkeys);
    free(keys);

    json_t *cls = json_object_get(job, "error_class");
    if (json_is_string(cls) && json_string_length(cls) > 0) {
        printf("\nlast failure:\n");
        ctl_show_fields(job, failure_keys,
                        sizeof(failure_keys) / sizeof(failure_keys[0]));
    }
    ctl_show_json_field("body", json_object_get(job, "body"));
    ctl_show_json_field("result", json_object_get(job, "result"));

    json_t *attempts = json_object_get(job, "attempts");
    if (json_array_size(attempts) > 0) {
        printf("\nattempts:\n");
        ctl_show_attempts(attempts);
    } else {
        printf("\nattempts: none\n");
    }
    json_decref(job);
    return 0;
}

/* --- failures ------------------------------------------------------------- */

/* A duration option (config_parse_duration: 30m, 2h, 7d); 0 or EX_USAGE
 * with the message printed. */
static int
ctl_duration(const char *cmd, const char *opt, const char *arg, int64_t *ms)
{
    if (config_parse_duration(arg, ms) == 0 && *ms > 0)
        return 0;
    fprintf(stderr,
            "sluicectl %s: %s: bad duration '%s' (a number with ms, s, m, h "
            "or d: 90s, 30m, 7d)\n",
            cmd, opt, arg);
    return EX_USAGE;
}

static int
ctl_bad_class(const char *cmd, const char *cls)
{
    fprintf(stderr, "sluicectl %s: unknown class '%s'; valid:", cmd, cls);
    for (int c = 1; c < ERR_CLASS_COUNT; c++)
        fprintf(stderr, " %s", err_class_name((enum err_class)c));
    fputc('\n', stderr);
    return EX_USAGE;
}

/* A state option that must be one of the states in allowed (bits). */
static int
ctl_state_in(const char *cmd, const char *name, unsigned allowed,
             unsigned *bits)
{
    enum job_state st;

    if (job_state_parse(name, &st) < 0)
        return ctl_bad_state(cmd, name);
    if (!(allowed & (1u << st))) {
        fprintf(stderr,
                "sluicectl %s: --state %s not allowed here; one of:", cmd,
                name);
        for (int s = 0; s < JOB_STATE_COUNT; s++)
            if (allowed & (1u << s))
                fprintf(stderr, " %s", job_state_name((enum job_state)s));
        fputc('\n', stderr);
        return EX_USAGE;
    }
    *bits = 1u << st;
    return 0;
}

#define CTL_TERMINAL                                                           \
    ((1u << JOB_SUCCEEDED) | (1u << JOB_FAILED) | (1u << JOB_CANCELLED))
#define CTL_UNFINISHED                                                         \
    ((1u << JOB_QUEUED) | (1u << JOB_RUNNING) | (1u << JOB_WAITING) |          \
     (1u << JOB_RETRYING))

/* A failure message in a table: one line, at most this many code points,
 * so that a provider's paragraph does not push the table off screen
 * (--json and show have it whole). */
#define CTL_MESSAGE_WIDTH 60

static char *
ctl_short_message(const char *m)
{
    size_t w = 0, i = 0;
    char *out;

    if (!m || !*m)
        return xstrdup("-");
    for (; m[i] && w < CTL_MESSAGE_WIDTH; i++)
        if (((unsigned char)m[i] & 0xC0) != 0x80)
            w++;
    while (m[i] && ((unsigned char)m[i] & 0xC0) == 0x80)
        i++;
    out = m[i] ? xasprintf("%.*s...", (int)i, m) : xstrdup(m);
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    return out;
}

static void
ctl_failures_table(const json_t *groups)
{
    static const char *const heads[] = {
        "PROVIDER", "CLASS",      "CODE",      "HTTP",
        "COUNT",    "FIRST SEEN", "LAST SEEN", "SAMPLE REQUEST IDS",
        "MESSAGE",
    };
    /* NULL: cells made below (times, the id list, the message) */
    static const char *const keys[] = {
        "provider", "error_class", "error_code", "http_status", "count",
        NULL,       NULL,          NULL,         NULL,
    };
    enum { NCOLS = sizeof(heads) / sizeof(heads[0]) };
    struct ctl_table t;
    char *row[NCOLS];
    json_int_t total = 0;
    size_t i;
    json_t *g;

    ctl_table_init(&t, NCOLS);
    for (size_t k = 0; k < NCOLS; k++)
        row[k] = xstrdup(heads[k]);
    ctl_table_add(&t, row);
    json_array_foreach(groups, i, g)
    {
        for (size_t k = 0; k < NCOLS; k++) {
            json_t *v = keys[k] ? json_object_get(g, keys[k]) : NULL;
            row[k] = !keys[k] ? NULL : v ? ctl_cell(keys[k], v) : xstrdup("-");
        }
        /* first/last seen are failures' finished_at: times */
        row[5] = ctl_cell("first_seen_at", json_object_get(g, "first_seen"));
        row[6] = ctl_cell("last_seen_at", json_object_get(g, "last_seen"));
        struct buf ids = {0};
        json_t *id;
        size_t j;
        json_array_foreach(json_object_get(g, "sample_request_ids"), j, id)
            buf_appendf(&ids, "%s%s", j ? "," : "", json_string_value(id));
        row[7] = ids.len ? buf_steal(&ids) : xstrdup("-");
        buf_free(&ids);
        row[8] =
            ctl_short_message(json_string_value(json_object_get(g, "message")));
        total += json_integer_value(json_object_get(g, "count"));
        ctl_table_add(&t, row);
    }
    ctl_table_print(&t, stdout);
    printf("\n%" JSON_INTEGER_FORMAT " failed job%s in %zu group%s; "
           "'sluicectl show ID' for one, 'sluicectl retry --state failed "
           "--class C' to retry\n",
           total, total == 1 ? "" : "s", json_array_size(groups),
           json_array_size(groups) == 1 ? "" : "s");
}

static int
ctl_failures(struct ctl *c, int argc, char **argv)
{
    const char *since = NULL;
    struct store_select sel = {0};
    bool json = false;
    int64_t ms;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--provider", &sel.provider, NULL},
        {"--batch", &sel.batch, NULL},
        {"--since", &since, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("failures", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("failures", "takes no operand");
    if (since && (rc = ctl_duration("failures", "--since", since, &ms)) != 0)
        return rc;
    if ((rc = ctl_open(c, "failures", false, false)) != 0)
        return rc;
    if (since)
        sel.finished_since = clock_now_ms() - ms;
    json_t *groups = store_failures_json(c->store, &sel);
    if (!groups) {
        fprintf(stderr, "sluicectl failures: cannot read the database\n");
        return 1;
    }
    if (json)
        rc = ctl_print_json(groups);
    else if (json_array_size(groups) == 0)
        printf("no failures\n");
    else
        ctl_failures_table(groups);
    json_decref(groups);
    return rc;
}

/* --- retry and cancel ----------------------------------------------------- */

/*
 * The shared body of retry and cancel: resolves the ID/CUSTOM_ID operands
 * (every one must name a job, or nothing changes and the exit is 1) or
 * applies sel, in one transaction, and reports how many jobs changed.
 */
static int
ctl_change(struct ctl *c, const char *cmd, char **refs, int nrefs,
           const struct store_select *sel, bool json,
           int (*apply)(struct store *, const int64_t *, size_t,
                        const struct store_select *, int64_t, long *))
{
    int64_t *ids = NULL;
    long changed = 0;
    int missing = 0, rc;

    if ((rc = ctl_open(c, cmd, false, false)) != 0)
        return rc;
    if (store_begin(c->store) < 0) {
        fprintf(stderr, "sluicectl %s: database busy or unwritable\n", cmd);
        return 1;
    }
    if (nrefs > 0) {
        ids = xcalloc((size_t)nrefs, sizeof(*ids));
        if (store_resolve(c->store, (const char *const *)refs, (size_t)nrefs,
                          ids) < 0)
            goto db_fail;
        for (int i = 0; i < nrefs; i++) {
            if (ids[i] == 0) {
                fprintf(stderr, "sluicectl %s: no job '%s'\n", cmd, refs[i]);
                missing++;
            }
        }
        if (missing > 0) {
            store_rollback(c->store);
            fprintf(stderr, "sluicectl %s: nothing changed\n", cmd);
            free(ids);
            return 1;
        }
    }
    if (apply(c->store, ids, (size_t)nrefs, nrefs > 0 ? NULL : sel,
              clock_now_ms(), &changed) < 0 ||
        store_commit(c->store) < 0)
        goto db_fail;
    free(ids);

    long skipped = nrefs > 0 ? nrefs - changed : 0;
    if (json) {
        json_t *o = json_pack("{s:I, s:I}", "changed", (json_int_t)changed,
                              "skipped", (json_int_t)skipped);
        rc = ctl_print_json(o);
        json_decref(o);
        return rc;
    }
    bool cancel = strcmp(cmd, "cancel") == 0;
    printf("%ld job%s %s", changed, changed == 1 ? "" : "s",
           cancel ? "cancelled" : "retried");
    if (skipped > 0)
        printf(", %ld left as %s (%s)", skipped,
               skipped == 1 ? "it was" : "they were",
               cancel ? "already finished" : "not failed or cancelled");
    printf("\n");
    return 0;
db_fail:
    store_rollback(c->store);
    free(ids);
    fprintf(stderr, "sluicectl %s: database error, nothing changed\n", cmd);
    return 1;
}

static int
ctl_retry(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL, *cls = NULL;
    struct store_select sel = {0};
    enum err_class ec;
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--state", &state, NULL},
        {"--class", &cls, NULL},
        {"--code", &sel.error_code, NULL},
        {"--batch", &sel.batch, NULL},
        {"--provider", &sel.provider, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("retry", argc, argv, opts, &npos)) >= 0)
        return rc;
    bool filters = state || cls || sel.error_code || sel.batch || sel.provider;
    if (npos > 0 && filters)
        return ctl_usage_error("retry", "give IDs or filters, not both");
    if (npos == 0 && !state)
        return ctl_usage_error(
            "retry", "needs IDs, or --state failed (or cancelled) with "
                     "optional filters");
    if (state && (rc = ctl_state_in("retry", state,
                                    (1u << JOB_FAILED) | (1u << JOB_CANCELLED),
                                    &sel.states)) != 0)
        return rc;
    if (cls && err_class_parse(cls, &ec) < 0)
        return ctl_bad_class("retry", cls);
    sel.error_class = cls;
    return ctl_change(c, "retry", argv, npos, &sel, json, store_retry);
}

static int
ctl_cancel(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL;
    struct store_select sel = {0};
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &sel.batch, NULL},
        {"--provider", &sel.provider, NULL},
        {"--state", &state, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("cancel", argc, argv, opts, &npos)) >= 0)
        return rc;
    bool filters = state || sel.batch || sel.provider;
    if (npos > 0 && filters)
        return ctl_usage_error("cancel", "give IDs or filters, not both");
    /* A bare --state would cancel a whole queue: a batch or a provider
     * must say which. */
    if (npos == 0 && !sel.batch && !sel.provider)
        return ctl_usage_error("cancel", "needs IDs, --batch or --provider");
    if (state &&
        (rc = ctl_state_in("cancel", state, CTL_UNFINISHED, &sel.states)) != 0)
        return rc;
    return ctl_change(c, "cancel", argv, npos, &sel, json, store_cancel);
}

/* --- resume --------------------------------------------------------------- */

static int
ctl_resume(struct ctl *c, int argc, char **argv)
{
    bool json = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("resume", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos != 1)
        return ctl_usage_error("resume", "needs exactly one PROVIDER");
    if ((rc = ctl_open(c, "resume", false, false)) != 0)
        return rc;
    json_t *lanes = store_providers_json(c->store);
    if (!lanes) {
        fprintf(stderr, "sluicectl resume: cannot read the database\n");
        return 1;
    }
    json_t *lane = NULL, *l;
    size_t i;
    json_array_foreach(lanes, i, l)
    {
        if (strcmp(json_string_value(json_object_get(l, "name")), argv[0]) == 0)
            lane = l;
    }
    rc = store_provider_request_resume(c->store, argv[0], clock_now_ms());
    if (rc == -ENOENT) {
        fprintf(stderr, "sluicectl resume: no provider '%s' in the database",
                argv[0]);
        if (json_array_size(lanes) == 0)
            fprintf(stderr, " (the daemon has not run yet)");
        else
            fprintf(stderr, "; known:");
        json_array_foreach(lanes, i, l) fprintf(
            stderr, " %s", json_string_value(json_object_get(l, "name")));
        fputc('\n', stderr);
        json_decref(lanes);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "sluicectl resume: %s: database error\n", argv[0]);
        json_decref(lanes);
        return 1;
    }
    const char *state = json_string_value(json_object_get(lane, "state"));
    const char *reason = json_string_value(json_object_get(lane, "reason"));
    if (json) {
        json_t *o = json_pack("{s:s, s:s?, s:s?, s:b}", "provider", argv[0],
                              "was", state, "reason", reason, "requested", 1);
        rc = ctl_print_json(o);
        json_decref(o);
    } else {
        printf("%s: resume requested (was %s%s%s); the daemon acts on it "
               "within a second\n",
               argv[0], state ? state : "?", reason ? ": " : "",
               reason ? reason : "");
    }
    json_decref(lanes);
    return rc;
}

/* --- export --------------------------------------------------------------- */

struct ctl_export {
    FILE *out;
    long rows;
    int err; /* errno of the first failed write */
};

/* One OpenAI-Batch output line: {id, custom_id, response{status_code,
 * request_id, body}, error{code, message, type}}. response is null when
 * no HTTP answer is known, error null on success. */
static json_t *
ctl_export_line(const json_t *row)
{
    const char *state = json_string_value(json_object_get(row, "state"));
    json_t *status = json_object_get(row, "http_status");
    json_t *result = json_object_get(row, "result");
    json_t *line = json_object();
    json_t *response = json_null(), *error = json_null();

    json_object_set_new(
        line, "id",
        json_sprintf("job_%" JSON_INTEGER_FORMAT,
                     json_integer_value(json_object_get(row, "id"))));
    json_object_set(line, "custom_id", json_object_get(row, "custom_id"));
    if (json_is_integer(status)) {
        response = json_object();
        json_object_set(response, "status_code", status);
        json_object_set(response, "request_id",
                        json_object_get(row, "request_id"));
        json_object_set(response, "body", result ? result : json_null());
    }
    if (state && strcmp(state, "succeeded") != 0) {
        const char *code =
            json_string_value(json_object_get(row, "error_code"));
        const char *cls =
            json_string_value(json_object_get(row, "error_class"));
        const char *msg =
            json_string_value(json_object_get(row, "error_message"));
        if (strcmp(state, "cancelled") == 0) {
            code = "cancelled";
            cls = "cancelled";
            msg = "cancelled by an operator";
        } else if (strcmp(state, "failed") != 0) {
            /* not finished: the last failure, if any, is not the end */
            code = state;
            cls = state;
            msg = "not finished";
        }
        error = json_pack("{s:s?, s:s?, s:s?}", "code", code ? code : cls,
                          "message", msg ? msg : cls, "type", cls);
    }
    json_object_set_new(line, "response", response);
    json_object_set_new(line, "error", error);
    return line;
}

static int
on_export_row(const json_t *row, void *arg)
{
    struct ctl_export *x = arg;
    json_t *line = ctl_export_line(row);
    int rc = json_dumpf(line, x->out, JSON_COMPACT);
    json_decref(line);
    if (rc < 0 || fputc('\n', x->out) == EOF) {
        x->err = errno ? errno : EIO;
        return -EIO;
    }
    x->rows++;
    return 0;
}

static int
ctl_export(struct ctl *c, int argc, char **argv)
{
    const char *state = NULL;
    struct store_select sel = {0};
    struct ctl_export x = {0};
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &sel.batch, NULL},
        {"--provider", &sel.provider, NULL},
        {"--state", &state, NULL},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("export", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos > 1)
        return ctl_usage_error("export", "at most one FILE");
    if (state &&
        (rc = ctl_state_in("export", state, (1u << JOB_STATE_COUNT) - 1,
                           &sel.states)) != 0)
        return rc;
    if (!state)
        sel.states = (1u << JOB_SUCCEEDED) | (1u << JOB_FAILED);
    if ((rc = ctl_open(c, "export", false, false)) != 0)
        return rc;

    const char *path = npos == 1 && strcmp(argv[0], "-") != 0 ? argv[0] : NULL;
    x.out = path ? fopen(path, "w") : stdout;
    if (!x.out) {
        fprintf(stderr, "sluicectl export: %s: %s\n", path, strerror(errno));
        return 1;
    }
    errno = 0;
    rc = store_export(c->store, &sel, on_export_row, &x);
    if (x.err == 0 && ferror(x.out))
        x.err = errno ? errno : EIO;
    if (path && fclose(x.out) != 0 && x.err == 0)
        x.err = errno ? errno : EIO;
    if (x.err != 0) {
        fprintf(stderr, "sluicectl export: %s: write failed: %s\n",
                path ? path : "stdout", strerror(x.err));
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "sluicectl export: database error after %ld rows\n",
                x.rows);
        return 1;
    }
    if (path)
        fprintf(stderr, "%ld result%s written to %s\n", x.rows,
                x.rows == 1 ? "" : "s", path);
    return 0;
}

/* --- watch ---------------------------------------------------------------- */

/* Refresh period, and the bar's width in cells: 30 leaves room on an
 * 80-column terminal for the name and the counts. */
#define CTL_WATCH_MS 1000
#define CTL_BAR_WIDTH 30

static volatile sig_atomic_t ctl_stop;

static void
on_signal_stop(int sig)
{
    (void)sig;
    ctl_stop = 1;
}

/* "1h02m", "4m10s", "12s", "-" */
static void
ctl_eta(const json_t *v, char out[32])
{
    json_int_t s = json_integer_value(v);
    if (!json_is_integer(v) || s < 0)
        snprintf(out, 32, "-");
    else if (s >= 3600)
        snprintf(out, 32,
                 "%" JSON_INTEGER_FORMAT "h%02" JSON_INTEGER_FORMAT "m",
                 s / 3600, s / 60 % 60);
    else if (s >= 60)
        snprintf(out, 32,
                 "%" JSON_INTEGER_FORMAT "m%02" JSON_INTEGER_FORMAT "s", s / 60,
                 s % 60);
    else
        snprintf(out, 32, "%" JSON_INTEGER_FORMAT "s", s);
}

static json_int_t
ctl_int(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* One batch row: bar (on a TTY) or a plain line. */
static void
ctl_watch_batch(FILE *f, const json_t *b, bool tty, const char *stamp)
{
    const char *batch = json_string_value(json_object_get(b, "batch"));
    const char *prov = json_string_value(json_object_get(b, "provider"));
    json_int_t total = ctl_int(b, "total"), done = ctl_int(b, "done");
    double rate = json_number_value(json_object_get(b, "rate_per_s"));
    int pct = total > 0 ? (int)(done * 100 / total) : 0;
    char eta[32];

    ctl_eta(json_object_get(b, "eta_s"), eta);
    if (tty) {
        int fill = total > 0 ? (int)(done * CTL_BAR_WIDTH / total) : 0;
        fprintf(f, "%s/%s\n  [", batch ? batch : "(none)", prov ? prov : "?");
        for (int i = 0; i < CTL_BAR_WIDTH; i++)
            fputc(i < fill ? '#' : '.', f);
        fprintf(f, "] %3d%%  %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                pct, done, total);
    } else {
        fprintf(f,
                "%s batch %s/%s %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT
                " %d%%",
                stamp, batch ? batch : "(none)", prov ? prov : "?", done, total,
                pct);
    }
    fprintf(f,
            "  ok %" JSON_INTEGER_FORMAT " failed %" JSON_INTEGER_FORMAT
            " cancelled %" JSON_INTEGER_FORMAT " running %" JSON_INTEGER_FORMAT
            "  %.1f/s  eta %s\n",
            ctl_int(b, "succeeded"), ctl_int(b, "failed"),
            ctl_int(b, "cancelled"),
            ctl_int(b, "running") + ctl_int(b, "waiting"), rate, eta);
}

static void
ctl_watch_lane(FILE *f, const json_t *l, bool tty, const char *stamp)
{
    const char *reason = json_string_value(json_object_get(l, "reason"));
    char until[32];

    ctl_iso_time(ctl_int(l, "pause_until"), until);
    if (tty)
        fputs("  ", f);
    else
        fprintf(f, "%s provider ", stamp);
    fprintf(f,
            "%s %s%s%s limit %" JSON_INTEGER_FORMAT
            " in flight %" JSON_INTEGER_FORMAT,
            json_string_value(json_object_get(l, "name")),
            json_string_value(json_object_get(l, "state")), reason ? ": " : "",
            reason ? reason : "", ctl_int(l, "concurrency_limit"),
            ctl_int(l, "in_flight"));
    if (strcmp(until, "-") != 0)
        fprintf(f, " paused until %s", until);
    fputc('\n', f);
}

/* One refresh; returns 0 or 1 on a database error. */
static int
ctl_watch_draw(struct ctl *c, const char *batch, bool tty)
{
    json_t *rows = store_progress_json(c->store, batch);
    json_t *lanes = store_providers_json(c->store);
    char stamp[32];
    size_t i;
    json_t *v;

    if (!rows || !lanes) {
        json_decref(rows);
        json_decref(lanes);
        fprintf(stderr, "sluicectl watch: cannot read the database\n");
        return 1;
    }
    ctl_iso_time(clock_now_ms(), stamp);
    if (tty)
        /* home, clear: the frame is redrawn in place */
        printf("\033[H\033[2J%s  sluicectl watch (Ctrl-C to stop)\n\n", stamp);
    if (json_array_size(rows) == 0)
        printf("%s%s\n", tty ? "" : stamp,
               batch ? " no jobs in this batch" : " no jobs");
    json_array_foreach(rows, i, v)
    {
        ctl_watch_batch(stdout, v, tty, stamp);
    }
    if (tty && json_array_size(lanes) > 0)
        printf("\nproviders\n");
    json_array_foreach(lanes, i, v)
    {
        ctl_watch_lane(stdout, v, tty, stamp);
    }
    fflush(stdout);
    json_decref(rows);
    json_decref(lanes);
    return 0;
}

static int
ctl_watch(struct ctl *c, int argc, char **argv)
{
    const char *batch = NULL;
    bool once = false;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--batch", &batch, NULL},
        {"--once", NULL, &once},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("watch", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("watch", "takes no operand");
    if ((rc = ctl_open(c, "watch", false, false)) != 0)
        return rc;
    bool tty = !once && isatty(STDOUT_FILENO) == 1;

    struct sigaction sa = {0};
    sa.sa_handler = on_signal_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    while (!ctl_stop) {
        if ((rc = ctl_watch_draw(c, batch, tty)) != 0 || once)
            return rc;
        struct timespec ts = {CTL_WATCH_MS / 1000,
                              (CTL_WATCH_MS % 1000) * 1000000L};
        /* a signal cuts the sleep short: the loop sees ctl_stop */
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* --- purge ---------------------------------------------------------------- */

/* Jobs deleted per transaction: a few tens of milliseconds of write lock,
 * so the daemon's group commits wait that long at most. */
#define CTL_PURGE_BATCH 5000

static int
ctl_purge(struct ctl *c, int argc, char **argv)
{
    const char *older = NULL, *state = NULL;
    struct store_select sel = {0};
    long jobs, attempts, pages;
    bool json = false;
    int64_t ms;
    int npos, rc;
    const struct ctl_opt opts[] = {
        {"--older-than", &older, NULL},
        {"--state", &state, NULL},
        {"--json", NULL, &json},
        {NULL, NULL, NULL},
    };

    if ((rc = ctl_options("purge", argc, argv, opts, &npos)) >= 0)
        return rc;
    if (npos > 0)
        return ctl_usage_error("purge", "takes no operand");
    if (!older)
        return ctl_usage_error("purge", "--older-than DURATION is required");
    if ((rc = ctl_duration("purge", "--older-than", older, &ms)) != 0)
        return rc;
    if (state &&
        (rc = ctl_state_in("purge", state, CTL_TERMINAL, &sel.states)) != 0)
        return rc;
    if ((rc = ctl_open(c, "purge", false, false)) != 0)
        return rc;
    sel.finished_before = clock_now_ms() - ms;
    rc = store_purge(c->store, &sel, CTL_PURGE_BATCH, &jobs, &attempts, &pages);
    if (rc < 0) {
        fprintf(stderr,
                "sluicectl purge: database error after %ld jobs deleted\n",
                jobs);
        return 1;
    }
    if (json) {
        json_t *o =
            json_pack("{s:I, s:I, s:I}", "jobs", (json_int_t)jobs, "attempts",
                      (json_int_t)attempts, "freed_pages", (json_int_t)pages);
        rc = ctl_print_json(o);
        json_decref(o);
        return rc;
    }
    printf("%ld job%s purged (%ld attempt%s), %ld page%s given back\n", jobs,
           jobs == 1 ? "" : "s", attempts, attempts == 1 ? "" : "s", pages,
           pages == 1 ? "" : "s");
    return 0;
}

/* --- the command table ------------------------------------------------- */

static int ctl_help(struct ctl *c, int argc, char **argv);

static const struct ctl_cmd ctl_cmds[] = {
    {"enqueue", ctl_enqueue, "[--provider P] [--batch B] [--unique] FILE...",
     "add the JSONL jobs of each FILE (- = stdin), one transaction a file"},
    {"status", ctl_status, "[--json]",
     "job counts by provider and batch, each provider's live state"},
    {"jobs", ctl_jobs,
     "[--state S] [--provider P] [--batch B] [--limit N] [--json]",
     "list jobs, newest first (50 unless --limit; --limit 0 = all)"},
    {"show", ctl_show, "ID|CUSTOM_ID [--json]",
     "one job with its body, result, last failure and attempts"},
    {"failures", ctl_failures,
     "[--provider P] [--batch B] [--since DURATION] [--json]",
     "failed jobs grouped by provider, class and code, with request ids"},
    {"retry", ctl_retry,
     "ID... | --state failed|cancelled [--class C] [--code X] "
     "[--batch B] [--provider P] [--json]",
     "back to queued, attempts reset, the same idempotency key"},
    {"cancel", ctl_cancel,
     "ID... | --batch B|--provider P [--state S] [--json]",
     "cancel unfinished jobs; the daemon aborts requests in flight"},
    {"resume", ctl_resume, "PROVIDER [--json]",
     "un-pause a provider paused for auth or balance"},
    {"export", ctl_export, "[--batch B] [--provider P] [--state S] [FILE]",
     "results as OpenAI-Batch JSONL (default succeeded and failed)"},
    {"watch", ctl_watch, "[--batch B] [--once]",
     "live progress per batch and provider state, every second"},
    {"purge", ctl_purge, "--older-than DURATION [--state S] [--json]",
     "delete finished jobs and their attempts, give the space back"},
    {"help", ctl_help, "[COMMAND]", "this text, or one command's usage"},
};
#define CTL_NCMDS (sizeof(ctl_cmds) / sizeof(ctl_cmds[0]))

static const struct ctl_cmd *
ctl_find(const char *name)
{
    for (size_t i = 0; i < CTL_NCMDS; i++)
        if (strcmp(ctl_cmds[i].name, name) == 0)
            return &ctl_cmds[i];
    return NULL;
}

static void
ctl_cmd_usage(FILE *f, const struct ctl_cmd *cmd)
{
    fprintf(f, "usage: sluicectl [-c CONFIG] [--db PATH] %s %s\n", cmd->name,
            cmd->usage);
}

static void
ctl_usage(FILE *f)
{
    fprintf(f,
            "usage: sluicectl [-c CONFIG] [--db PATH] COMMAND [ARGS...]\n"
            "\n"
            "  -c CONFIG   config file (default $SLUICE_CONFIG, else %s)\n"
            "  --db PATH   database (default: the config's database)\n"
            "\n"
            "commands:\n",
            CONFIG_DEFAULT_PATH);
    for (size_t i = 0; i < CTL_NCMDS; i++)
        fprintf(f, "  %-8s %s\n           %s\n", ctl_cmds[i].name,
                ctl_cmds[i].usage, ctl_cmds[i].help);
    fprintf(f, "\n'sluicectl COMMAND --help' prints one command's usage.\n"
               "exit: 0 ok, 64 usage, 65 bad input, 66 no input file, "
               "78 bad config, 1 other\n");
}

static int
ctl_help(struct ctl *c, int argc, char **argv)
{
    (void)c;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        ctl_usage(stdout);
        return 0;
    }
    const struct ctl_cmd *cmd = ctl_find(argv[1]);
    if (!cmd) {
        fprintf(stderr, "sluicectl: unknown command '%s'\n", argv[1]);
        ctl_usage(stderr);
        return EX_USAGE;
    }
    ctl_cmd_usage(stdout, cmd);
    printf("%s\n", cmd->help);
    return 0;
}

/* Global options, before the command. Returns the index of the command in
 * argv, 0 after --help (printed), or -1 on a usage error (printed). */
static int
ctl_global_opts(struct ctl *c, int argc, char **argv)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *arg = argv[i];
        const char **slot = NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            ctl_usage(stdout);
            return 0;
        }
        if (strcmp(arg, "-c") == 0 || strcmp(arg, "--config") == 0)
            slot = &c->config_flag;
        else if (strcmp(arg, "--db") == 0)
            slot = &c->db_flag;
        else if (strncmp(arg, "--db=", 5) == 0)
            c->db_flag = arg + 5;
        else if (strncmp(arg, "--config=", 9) == 0)
            c->config_flag = arg + 9;
        else if (strncmp(arg, "-c", 2) == 0)
            c->config_flag = arg + 2;
        else {
            fprintf(stderr, "sluicectl: unknown option '%s'\n", arg);
            return -1;
        }
        if (slot) {
            if (i + 1 >= argc) {
                fprintf(stderr, "sluicectl: %s needs a value\n", arg);
                return -1;
            }
            *slot = argv[++i];
        }
    }
    if (i >= argc) {
        fprintf(stderr, "sluicectl: no command\n");
        return -1;
    }
    return i;
}

int
main(int argc, char **argv)
{
    struct ctl c = {0};
    int rc;

    /* The store and config log their failures with the reason; a tool
     * shows warnings and errors only. */
    log_init(LOG_LEVEL_WARN);

    int at = ctl_global_opts(&c, argc, argv);
    if (at == 0)
        return 0;
    if (at < 0) {
        ctl_usage(stderr);
        return EX_USAGE;
    }
    const struct ctl_cmd *cmd = ctl_find(argv[at]);
    if (!cmd) {
        fprintf(stderr, "sluicectl: unknown command '%s'\n", argv[at]);
        ctl_usage(stderr);
        return EX_USAGE;
    }
    rc = cmd->fn(&c, argc - at, argv + at);
    if (fflush(stdout) != 0 && rc == 0) {
        fprintf(stderr, "sluicectl: stdout: %s\n", strerror(errno));
        rc = 1;
    }
    store_close(c.store);
    config_free(c.config);
    return rc;
}
