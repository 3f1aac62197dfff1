/*
 * ctl/internal.h: what sluicectl's command files share and nothing else
 * sees. Each file in daemon/ctl/ holds one family of commands (enqueue.c;
 * inspect.c: status, jobs, show; triage.c: failures, retry, cancel,
 * resume, export, purge; watch.c; outputs.c; migrate.c) and exports one
 * function per command, listed here and registered in the command table
 * of ctl/main.c. The
 * helpers below do what every command repeats: options (common.c), the
 * config and the database (common.c), tables and JSON output (format.c).
 *
 * One return convention throughout: a command returns its exit code
 * (sysexits), and a helper returns 0 to go on or the exit code to return
 * with, its message already printed.
 */
#ifndef SLUICE_CTL_INTERNAL_H
#define SLUICE_CTL_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sluice/job.h"

/* What one run of sluicectl works with; filled lazily by ctl_open. */
struct ctl {
    const char *config_flag; /* -c value, or NULL */
    const char *db_flag;     /* --db value, or NULL */
    const char *config_path; /* the path tried (flag, env or default) */
    struct config *config;   /* NULL when the default file is absent */
    struct store *store;     /* open database */
};

/* A command: argv[0] is its name, argv[1..argc) its options and operands.
 * Returns the exit code (sysexits). */
typedef int (*ctl_cmd_fn)(struct ctl *c, int argc, char **argv);

struct ctl_cmd {
    const char *name;
    ctl_cmd_fn fn;
    const char *usage; /* operands and options after the name */
    const char *help;  /* one line for the command list */
};

/* The commands, one per row of the table in ctl/main.c. */
int ctl_enqueue(struct ctl *c, int argc, char **argv);
int ctl_status(struct ctl *c, int argc, char **argv);
int ctl_jobs(struct ctl *c, int argc, char **argv);
int ctl_show(struct ctl *c, int argc, char **argv);
int ctl_failures(struct ctl *c, int argc, char **argv);
int ctl_retry(struct ctl *c, int argc, char **argv);
int ctl_cancel(struct ctl *c, int argc, char **argv);
int ctl_resume(struct ctl *c, int argc, char **argv);
int ctl_export(struct ctl *c, int argc, char **argv);
int ctl_purge(struct ctl *c, int argc, char **argv);
int ctl_watch(struct ctl *c, int argc, char **argv);
int ctl_outputs(struct ctl *c, int argc, char **argv);
int ctl_migrate(struct ctl *c, int argc, char **argv);

/* The command called name, or NULL (ctl/main.c). */
const struct ctl_cmd *ctl_find(const char *name);
/* "usage: sluicectl … NAME USAGE" on f. */
void ctl_cmd_usage(FILE *f, const struct ctl_cmd *cmd);
/* --help: prints cmd's usage (the whole tool's when NULL) on stdout and
 * exits 0. Options are parsed before anything is opened, so there is
 * nothing to close. */
void ctl_help_exit(const struct ctl_cmd *cmd) __attribute__((noreturn));

/* --- options and the database (common.c) -------------------------------- */

/* One option of a command: a value option sets *val, a flag sets *flag. */
struct ctl_opt {
    const char *name; /* "--state" */
    const char **val; /* set to the argument; NULL for a flag */
    bool *flag;       /* set true when present; for flags */
};

/* Parses the command's options (opts ends with a NULL name); operands
 * move to argv[0..*npos). Returns 0, or EX_USAGE with the problem and the
 * usage printed on stderr; --help prints the usage and exits. */
int ctl_parse_args(const char *cmd, int argc, char **argv,
                   const struct ctl_opt *opts, int *npos);
/* Prints "sluicectl CMD: WHAT" and the usage on stderr; returns EX_USAGE. */
int ctl_usage_error(const char *cmd, const char *what);
/* Loads the config and opens the database. need_config: the command
 * cannot work without the providers. create_db: a missing database file
 * may be created. Returns 0 or the exit code, message printed. */
int ctl_open(struct ctl *c, const char *cmd, bool need_config, bool create_db);
/* The same for a command that only reads: opened read-only and never
 * migrated; pending migrations are reported and the command fails. */
int ctl_open_readonly(struct ctl *c, const char *cmd);

/* The usage error for an unknown job state (lists the valid ones). */
int ctl_bad_state(const char *cmd, const char *state);
/* The usage error for an unknown error class (lists the valid ones). */
int ctl_bad_class(const char *cmd, const char *cls);
/* A count option: a non-negative decimal into *out; 0 or EX_USAGE,
 * printed. */
int ctl_count(const char *cmd, const char *opt, const char *arg, long *out);
/* An amount option (money: 25.00), above 0, into *out; 0 or EX_USAGE,
 * printed. */
int ctl_amount(const char *cmd, const char *opt, const char *arg,
               double *out);
/* A duration option (30m, 2h, 7d) into *ms; 0 or EX_USAGE, printed. */
int ctl_duration(const char *cmd, const char *opt, const char *arg,
                 int64_t *ms);
/* A state option that must be one of the states in allowed (bits of
 * enum job_state); sets *bits to its bit. 0 or EX_USAGE, printed. */
int ctl_state_in(const char *cmd, const char *name, unsigned allowed,
                 unsigned *bits);

/* --- spend (spend.c) ------------------------------------------------------ */

/* What the queue has cost (of batch; NULL all), with the caps and the
 * daemon's state: {"providers": [{provider, spent, spent_last_hour,
 * budget?, left?, state?, reason?}], "batches": [{batch, …}]}. A new
 * value, or NULL on a database error. */
json_t *ctl_spend(struct ctl *c, const char *batch);
/* The spend section of status (nothing when there is no spend or cap). */
void ctl_spend_print(const json_t *spend);
/* "  spent 0.08 (0.08 last hour) of 0.10, 0.02 left" for the entry of
 * list ("providers", "batches") whose key is name; nothing if none. */
void ctl_spend_note(FILE *f, const json_t *spend, const char *list,
                    const char *key, const char *name);

/* --- output (format.c) --------------------------------------------------- */

/* ISO-8601 UTC of unix ms, seconds precision; "-" for none. */
void ctl_iso_time(int64_t ms, char out[32]);
/* A new string for a table cell; key decides whether integers are times. */
char *ctl_cell(const char *key, const json_t *v);
/* s (taken) with control bytes escaped for a terminal (text.h): s itself
 * when nothing needs it, else a new string. NULL passes. */
char *ctl_safe(char *s);
/* "error_class" → "ERROR CLASS": a new string. */
char *ctl_header_of(const char *key);

/* A table of owned strings: row 0 is the header. */
struct ctl_table {
    size_t ncols;
    size_t nrows;
    size_t cap;
    char **cells; /* nrows × ncols */
};

void ctl_table_init(struct ctl_table *t, size_t ncols);
/* Appends a row; takes ownership of the ncols strings of row. */
void ctl_table_add(struct ctl_table *t, char **row);
/* Prints the table aligned (numbers right) on f, and frees it. */
void ctl_table_print(struct ctl_table *t, FILE *f);

/* A column of an object table: the key and its header. */
struct ctl_col {
    const char *key;
    const char *head;
};

/* Prints an array of objects as a table: the cols that occur in some row,
 * then (unless only_cols) every other key in the order first seen. */
void ctl_print_objects(FILE *f, const json_t *rows, const struct ctl_col *cols,
                       size_t ncols, bool only_cols);
/* One JSON document on stdout. Returns 0, or 1 when the write failed. */
int ctl_print_json(const json_t *v);

#endif
