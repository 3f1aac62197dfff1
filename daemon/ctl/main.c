/*
 * ctl/main.c: sluicectl, the operator's tool. It works on the database
 * alone (the daemon need not run) through the store API; no SQL text lives
 * in daemon/ctl/.
 *
 * Commands are rows of one table {name, fn, usage, help}: a new command is
 * one function in the file of its family (ctl/internal.h lists them) and
 * one row here. Global options (-c, --db) come before the command; the
 * command parses its own (ctl/common.c). Exit codes follow sysexits
 * (docs/contract.md).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "internal.h"
#include "sluice/config.h"
#include "sluice/log.h"
#include "sluice/store.h"

/* --- the command table ------------------------------------------------- */

static int ctl_help(struct ctl *c, int argc, char **argv);

static const struct ctl_cmd ctl_cmds[] = {
    {"enqueue", ctl_enqueue,
     "[--provider P] [--batch B [--budget AMOUNT]] [--unique] FILE...",
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
    {"resume", ctl_resume, "PROVIDER | --batch B [--json]",
     "un-pause a provider (auth, balance, budget) or a batch at its budget"},
    {"export", ctl_export, "[--batch B] [--provider P] [--state S] [FILE]",
     "results as OpenAI-Batch JSONL (default succeeded and failed)"},
    {"watch", ctl_watch, "[--batch B] [--once]",
     "live progress per batch and provider state, every second"},
    {"purge", ctl_purge, "--older-than DURATION [--state S] [--json]",
     "delete finished jobs and their attempts, give the space back"},
    {"outputs", ctl_outputs,
     "[--batch B] [--state pending|stored|failed] [--json] | --retry "
     "[--batch B] [--json]",
     "downloaded outputs of succeeded jobs; --retry: failed ones again"},
    {"migrate", ctl_migrate, "--from DATABASE --to DATABASE [--json]",
     "move a stopped queue into an empty database (SQLite to PostgreSQL)"},
    {"help", ctl_help, "[COMMAND]", "this text, or one command's usage"},
};
#define CTL_NCMDS (sizeof(ctl_cmds) / sizeof(ctl_cmds[0]))

const struct ctl_cmd *
ctl_find(const char *name)
{
    for (size_t i = 0; i < CTL_NCMDS; i++)
        if (strcmp(ctl_cmds[i].name, name) == 0)
            return &ctl_cmds[i];
    return NULL;
}

void
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

void
ctl_help_exit(const struct ctl_cmd *cmd)
{
    if (cmd != NULL)
        ctl_cmd_usage(stdout, cmd);
    else
        ctl_usage(stdout);
    exit(fflush(stdout) == 0 ? 0 : 1);
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

/* Global options, before the command. Returns 0 with *at the index of
 * the command in argv, or EX_USAGE (printed); --help prints the usage and
 * exits. */
static int
ctl_global_opts(struct ctl *c, int argc, char **argv, int *at)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *arg = argv[i];
        const char **slot = NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            ctl_help_exit(NULL);
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
            ctl_usage(stderr);
            return EX_USAGE;
        }
        if (slot) {
            if (i + 1 >= argc) {
                fprintf(stderr, "sluicectl: %s needs a value\n", arg);
                ctl_usage(stderr);
                return EX_USAGE;
            }
            *slot = argv[++i];
        }
    }
    if (i >= argc) {
        fprintf(stderr, "sluicectl: no command\n");
        ctl_usage(stderr);
        return EX_USAGE;
    }
    *at = i;
    return 0;
}

int
main(int argc, char **argv)
{
    struct ctl c = {0};
    int rc, at;

    /* The store and config log their failures with the reason; a tool
     * shows warnings and errors only. */
    log_init(LOG_LEVEL_WARN);

    if ((rc = ctl_global_opts(&c, argc, argv, &at)) != 0)
        return rc;
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
