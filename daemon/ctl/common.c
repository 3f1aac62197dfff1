/*
 * ctl/common.c: what every sluicectl command does first: parse its options
 * and open the config and the database.
 *
 * Each command parses its own options with ctl_parse_opts, which accepts
 * options and operands in any order ("show 42 --json"), "--name=value" and
 * "--" to end options. Usage errors are reported before the config or the
 * database is touched.
 *
 * Config: -c, else $SLUICE_CONFIG, else the default path. A file named on
 * purpose (-c or the environment) must load; the default path may be
 * missing, in which case every command but enqueue still works with --db
 * (enqueue must know the providers to validate lines).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "internal.h"
#include "sluice/config.h"
#include "sluice/job.h"
#include "sluice/store.h"

/* --- options ------------------------------------------------------------ */

/*
 * Parses argv[1..argc) (argv[0] is the command) against opts. Operands are
 * moved to argv[0..*npos) in order. Returns 0, or EX_USAGE with the problem
 * printed on stderr. --help prints the usage and exits (ctl_help_exit).
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
            ctl_help_exit(ctl_find(cmd));
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

int
ctl_parse_args(const char *cmd, int argc, char **argv,
               const struct ctl_opt *opts, int *npos)
{
    int rc = ctl_parse_opts(cmd, argc, argv, opts, npos);
    if (rc != 0)
        ctl_cmd_usage(stderr, ctl_find(cmd));
    return rc;
}

int
ctl_usage_error(const char *cmd, const char *what)
{
    fprintf(stderr, "sluicectl %s: %s\n", cmd, what);
    ctl_cmd_usage(stderr, ctl_find(cmd));
    return EX_USAGE;
}

/* --- config and database ------------------------------------------------- */

/*
 * Loads the config and finds the database. need_config: the command cannot
 * work without the providers (enqueue). create_db: a missing database file
 * may be created (enqueue); the read-only commands report it instead of
 * leaving an empty file behind. Returns 0 and *db (borrowed from c), or the
 * exit code, message printed.
 */
static int
ctl_locate(struct ctl *c, const char *cmd, bool need_config, bool create_db,
           const char **db_out)
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
    if (!create_db && store_is_file(db) && strcmp(db, ":memory:") != 0 &&
        access(db, F_OK) < 0) {
        fprintf(stderr, "sluicectl: %s: database %s: %s\n", cmd, db,
                strerror(errno));
        return EX_NOINPUT;
    }
    *db_out = db;
    return 0;
}

/*
 * Loads the config and opens the database to change it (migrating it
 * first when this build is newer). Arguments as ctl_locate.
 */
int
ctl_open(struct ctl *c, const char *cmd, bool need_config, bool create_db)
{
    const char *db;
    int rc;

    if ((rc = ctl_locate(c, cmd, need_config, create_db, &db)) != 0)
        return rc;
    if ((rc = store_open(db, &c->store)) < 0) {
        char *name = store_display_name(db); /* no password on a tty */
        c->store = NULL;
        fprintf(stderr, "sluicectl: %s: cannot open database %s\n", cmd,
                name);
        free(name);
        return rc == -EINVAL ? EX_CONFIG : 1; /* a malformed string */
    }
    return 0;
}

/*
 * Opens the database for a command that only reads it: read-only, never
 * migrated (a newer sluicectl must not upgrade the database under the
 * daemon that runs on it). Pending migrations are reported, not applied.
 * Returns 0 or the exit code, message printed.
 */
int
ctl_open_readonly(struct ctl *c, const char *cmd)
{
    const char *db;
    int rc;

    if ((rc = ctl_locate(c, cmd, false, false, &db)) != 0)
        return rc;
    char *name = store_display_name(db); /* no password on a tty */
    if ((rc = store_open_readonly(db, &c->store)) < 0) {
        c->store = NULL;
        fprintf(stderr, "sluicectl: %s: cannot open database %s\n", cmd,
                name);
        free(name);
        return rc == -EINVAL ? EX_CONFIG : 1; /* a malformed string */
    }
    int v = store_schema_version(c->store);
    int latest = store_schema_latest(c->store);
    if (v < latest) {
        fprintf(stderr,
                "sluicectl: %s: database %s is at schema %d, this build "
                "reads %d: %d migration%s pending, applied when sluiced "
                "starts (or by a command that writes: enqueue, retry, "
                "cancel, resume, purge)\n",
                cmd, name, v, latest, latest - v, latest - v == 1 ? "" : "s");
        store_close(c->store);
        c->store = NULL;
        free(name);
        return 1;
    }
    free(name);
    return 0;
}

/* --- jobs ----------------------------------------------------------------- */

int
ctl_bad_state(const char *cmd, const char *state)
{
    fprintf(stderr, "sluicectl %s: unknown state '%s'; valid:", cmd, state);
    for (int s = 0; s < JOB_STATE_COUNT; s++)
        fprintf(stderr, " %s", job_state_name((enum job_state)s));
    fputc('\n', stderr);
    return EX_USAGE;
}

int
ctl_count(const char *cmd, const char *opt, const char *arg, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < 0) {
        char what[64];
        snprintf(what, sizeof(what), "%s: not a count", opt);
        return ctl_usage_error(cmd, what);
    }
    *out = v;
    return 0;
}

/* A duration option (config_parse_duration: 30m, 2h, 7d); 0 or EX_USAGE
 * with the message printed. */
int
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

/* An amount: a decimal above 0 (config.c's budget rule). */
int
ctl_amount(const char *cmd, const char *opt, const char *arg, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno == 0 && end != arg && *end == '\0' && v > 0 && v < 1e15) {
        *out = v;
        return 0;
    }
    fprintf(stderr,
            "sluicectl %s: %s: bad amount '%s' (a decimal above 0, e.g. "
            "25.00)\n",
            cmd, opt, arg);
    return EX_USAGE;
}

int
ctl_bad_class(const char *cmd, const char *cls)
{
    fprintf(stderr, "sluicectl %s: unknown class '%s'; valid:", cmd, cls);
    for (int c = 1; c < ERR_CLASS_COUNT; c++)
        fprintf(stderr, " %s", err_class_name((enum err_class)c));
    fputc('\n', stderr);
    return EX_USAGE;
}

/* A state option that must be one of the states in allowed (bits). */
int
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
