/*
 * liveness: the owner token, lock file and heartbeat of this daemon, and
 * the verdict on the others (the rules are in liveness.h).
 *
 * How the heartbeat verdict is measured: for every other daemon we keep
 * the last heartbeat_at we read, when (our monotonic ms) we saw it change,
 * and how many of our own beats had committed then. It is dead when the
 * value stood still for timeout of our monotonic time and at least half
 * the beats we could have made in that time committed. A daemon we start
 * watching is given the whole timeout from then on, so a judge that just
 * started never condemns anyone by heartbeat at once.
 *
 * Rejected: host:pid owners and kill(pid, 0) (PID namespaces repeat pids,
 * so two containers on one host killed each other's jobs); comparing
 * heartbeat_at with our wall clock (a clock step on either side would
 * condemn a live daemon); fcntl locks (closing any descriptor of the file
 * drops them, and a probe would do just that).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sluice/clock.h"
#include "sluice/liveness.h"
#include "sluice/log.h"
#include "sluice/store.h"
#include "sluice/xmalloc.h"

/* 16 random bytes: collisions are out of the question, and 32 hex digits
 * fit a log line. */
#define TOKEN_BYTES 16

/* What we know of another daemon's heartbeat. */
struct watch {
    char *owner;
    int64_t heartbeat_at; /* last value read */
    int64_t changed_mono; /* our monotonic ms when it last changed */
    long changed_beats;   /* our committed beats then */
    bool seen;            /* still in the table at the last look */
};

struct liveness {
    struct store *store;
    char owner[2 * TOKEN_BYTES + 1];
    char host[256];
    char *lock_dir;   /* <database>.daemons, or NULL: heartbeat only */
    int lock_fd;      /* our flock, -1 without one */
    int64_t timeout_ms;
    long beats;       /* our heartbeats committed */
    int peers;        /* other daemons at the last look */
    struct watch *w;
    size_t nw, capw;
};

/* Where the lock files of a database live: beside the file, so every
 * process that can open the database can see them. None for SQLite's
 * in-memory database or a connection string. */
static char *
lock_dir_of(const char *database)
{
    if (database == NULL || database[0] == '\0' ||
        strcmp(database, ":memory:") == 0 || !store_is_file(database))
        return NULL;
    return xasprintf("%s.daemons", database);
}

static char *
lock_path(const struct liveness *l, const char *owner)
{
    return xasprintf("%s/%s.lock", l->lock_dir, owner);
}

/* Takes our lock. Without one (a directory we cannot write), others judge
 * us by heartbeat alone: said once, not fatal. */
static void
lock_take(struct liveness *l)
{
    l->lock_fd = -1;
    if (l->lock_dir == NULL)
        return;
    if (mkdir(l->lock_dir, 0755) < 0 && errno != EEXIST) {
        log_warnx("liveness: %s: %s; other daemons will judge this one by "
                  "its heartbeat alone",
                  l->lock_dir, strerror(errno));
        return;
    }
    char *path = lock_path(l, l->owner);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
        log_warnx("liveness: %s: %s; other daemons will judge this one by "
                  "its heartbeat alone",
                  path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(path);
        }
        free(path);
        return;
    }
    free(path);
    l->lock_fd = fd;
}

/* Releases our lock; with remove, the file goes first, so that a probe
 * never finds it free while our row may still be read. Without (our row
 * could not be deleted), the free file tells the others at once. */
static void
lock_drop(struct liveness *l, bool remove)
{
    if (l->lock_fd < 0)
        return;
    if (remove) {
        char *path = lock_path(l, l->owner);
        unlink(path);
        free(path);
    }
    close(l->lock_fd);
    l->lock_fd = -1;
}

enum lock_state { LOCK_NONE, LOCK_HELD, LOCK_FREE };

/* Looks at owner's lock file. LOCK_FREE leaves it locked by us in *fd
 * (close it after the reap) so that it cannot change under the verdict. */
static enum lock_state
lock_probe(const struct liveness *l, const char *owner, int *fd)
{
    *fd = -1;
    if (l->lock_dir == NULL)
        return LOCK_NONE;
    char *path = lock_path(l, owner);
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    free(path);
    if (f < 0)
        return LOCK_NONE;
    if (flock(f, LOCK_EX | LOCK_NB) < 0) {
        close(f);
        return errno == EWOULDBLOCK ? LOCK_HELD : LOCK_NONE;
    }
    *fd = f;
    return LOCK_FREE;
}

/* A new owner token, row and lock. */
static int
join(struct liveness *l, int64_t now_ms)
{
    unsigned char raw[TOKEN_BYTES];
    clock_random_bytes(raw, sizeof(raw));
    for (size_t i = 0; i < sizeof(raw); i++)
        snprintf(l->owner + 2 * i, 3, "%02x", raw[i]);
    /* The lock before the row: a daemon others can see always holds it. */
    lock_take(l);
    struct daemon_row row = {
        .owner = l->owner,
        .host = l->host,
        .pid = (long)getpid(),
        .started_at = now_ms,
    };
    int rc = store_daemon_register(l->store, &row);
    if (rc < 0)
        lock_drop(l, true);
    return rc;
}

int
liveness_join(struct store *s, const char *database, int64_t timeout_ms,
              int64_t now_ms, struct liveness **out)
{
    struct liveness *l = xcalloc(1, sizeof(*l));
    l->store = s;
    l->timeout_ms = timeout_ms;
    l->lock_dir = lock_dir_of(database);
    if (gethostname(l->host, sizeof(l->host) - 1) < 0)
        snprintf(l->host, sizeof(l->host), "localhost");
    int rc = join(l, now_ms);
    if (rc < 0) {
        free(l->lock_dir);
        free(l);
        return rc;
    }
    log_info("liveness: joined as %s (%s, pid %ld%s)", l->owner, l->host,
             (long)getpid(), l->lock_fd >= 0 ? "" : ", no lock file");
    *out = l;
    return 0;
}

const char *
liveness_owner(const struct liveness *l)
{
    return l->owner;
}

int
liveness_beat(struct liveness *l, int64_t now_ms)
{
    bool present;
    int rc = store_daemon_beat(l->store, l->owner, now_ms, &present);
    if (rc < 0)
        return rc;
    if (!present) {
        char old[sizeof(l->owner)];
        memcpy(old, l->owner, sizeof(old));
        lock_drop(l, true);
        if ((rc = join(l, now_ms)) < 0)
            return rc;
        log_warnx("liveness: %s is gone from the daemons table (judged "
                  "dead by another daemon, its jobs taken back); rejoined "
                  "as %s",
                  old, l->owner);
    }
    l->beats++;
    return 0;
}

static struct watch *
watch_find(struct liveness *l, const char *owner)
{
    for (size_t i = 0; i < l->nw; i++)
        if (strcmp(l->w[i].owner, owner) == 0)
            return &l->w[i];
    return NULL;
}

/* Records a heartbeat value read now; returns the watch. */
static struct watch *
watch_observe(struct liveness *l, const char *owner, int64_t heartbeat_at,
              int64_t mono_ms)
{
    struct watch *w = watch_find(l, owner);
    if (w == NULL) {
        if (l->nw == l->capw) {
            l->capw = l->capw ? 2 * l->capw : 4;
            l->w = xrealloc(l->w, l->capw * sizeof(*l->w));
        }
        w = &l->w[l->nw++];
        w->owner = xstrdup(owner);
        w->heartbeat_at = heartbeat_at;
        w->changed_mono = mono_ms;
        w->changed_beats = l->beats;
    } else if (w->heartbeat_at != heartbeat_at) {
        w->heartbeat_at = heartbeat_at;
        w->changed_mono = mono_ms;
        w->changed_beats = l->beats;
    }
    w->seen = true;
    return w;
}

/* Still for timeout of our time, while our own beats went through. */
static bool
watch_lapsed(const struct liveness *l, const struct watch *w,
             int64_t mono_ms)
{
    long want = (long)(l->timeout_ms / LIVENESS_BEAT_MS / 2);
    return mono_ms - w->changed_mono >= l->timeout_ms &&
           l->beats - w->changed_beats >= (want > 1 ? want : 1);
}

/* Forgets daemons that left the table. */
static void
watch_sweep(struct liveness *l)
{
    size_t k = 0;
    for (size_t i = 0; i < l->nw; i++) {
        if (l->w[i].seen) {
            l->w[i].seen = false;
            l->w[k++] = l->w[i];
        } else {
            free(l->w[i].owner);
        }
    }
    l->nw = k;
}

/* Takes back what owner held. seen: the heartbeat the verdict saw (0 when
 * its lock proved it dead). */
static int
reap_one(struct liveness *l, const struct daemon_row *d, int64_t seen,
         int64_t now_ms, int64_t still_ms, long *n)
{
    int rc = store_daemon_reap(l->store, d->owner, seen, now_ms, n);
    if (rc == -ESTALE) {
        *n = 0;
        return 0; /* it beat meanwhile: alive */
    }
    if (rc < 0)
        return rc;
    if (seen == 0)
        log_info("liveness: daemon %s (%s, pid %ld) is gone, its lock "
                 "file free: %ld jobs taken back",
                 d->owner, d->host, d->pid, *n);
    else
        log_warnx("liveness: daemon %s (%s, pid %ld) has not beaten for "
                  "%" PRId64 " s: judged dead, %ld jobs taken back",
                  d->owner, d->host, d->pid, still_ms / 1000, *n);
    return 0;
}

int
liveness_reap(struct liveness *l, int64_t now_ms, int64_t mono_ms, long *n)
{
    struct daemon_row *rows = NULL;
    size_t nrows = 0;
    int rc = store_daemons(l->store, &rows, &nrows);

    *n = 0;
    if (rc < 0)
        return rc;
    l->peers = 0;
    for (size_t i = 0; i < nrows && rc == 0; i++) {
        const struct daemon_row *d = &rows[i];
        if (strcmp(d->owner, l->owner) == 0)
            continue;
        l->peers++;
        struct watch *w = watch_observe(l, d->owner, d->heartbeat_at,
                                        mono_ms);
        long got = 0;
        int fd;
        switch (lock_probe(l, d->owner, &fd)) {
        case LOCK_HELD:
            break;
        case LOCK_FREE:
            rc = reap_one(l, d, 0, now_ms, 0, &got);
            if (rc == 0) {
                char *path = lock_path(l, d->owner);
                unlink(path);
                free(path);
            }
            close(fd);
            break;
        case LOCK_NONE:
            if (watch_lapsed(l, w, mono_ms))
                rc = reap_one(l, d, d->heartbeat_at, now_ms,
                              mono_ms - w->changed_mono, &got);
            break;
        }
        *n += got;
    }
    store_daemons_free(rows, nrows);
    watch_sweep(l);
    return rc;
}

int
liveness_peers(const struct liveness *l)
{
    return l->peers;
}

void
liveness_leave(struct liveness *l, int64_t now_ms)
{
    if (l == NULL)
        return;
    long n = 0;
    int rc = store_daemon_reap(l->store, l->owner, 0, now_ms, &n);
    if (rc < 0)
        log_warnx("liveness: %s could not leave the daemons table; others "
                  "will find its lock file free",
                  l->owner);
    else if (n > 0)
        log_info("liveness: %ld jobs still leased returned to the queue",
                 n);
    lock_drop(l, rc == 0);
    for (size_t i = 0; i < l->nw; i++)
        free(l->w[i].owner);
    free(l->w);
    free(l->lock_dir);
    free(l);
}
