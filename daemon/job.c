/*
 * job: names of states and error classes as the database stores them, the
 * class defaults of docs/contract.md's "retried" column, and the job's state
 * machine.
 *
 * The state machine has one home: job_next() decides every move the
 * daemon makes after a request (answer, no answer, cancel), the table
 * below lists every move anyone makes (the store's claim, reclaim, retry
 * and cancel statements included), and the store asserts it. job_next is
 * pure: the dispatcher brings the clock and the random draw, hands the
 * decision to the store and the lane's count of waiting runs to the lane.
 * Why the failure policy is what it is lives in retry.c; what a job does
 * around it lives here:
 *   - a poll that failed (no answer, or an unreadable one) says nothing
 *     about the run, which may still be going: poll again, bounded like
 *     deferrals (max_deferrals) so a provider answering garbage ends it;
 *   - a poll answered with the run's failure is the run's failure: retry
 *     policy decides, and a new run gets a derived key, since the same key
 *     would only replay the failed run;
 *   - an accepted run whose poll url is missing or on another host is a
 *     protocol failure: polling it would send the key elsewhere.
 * Rejected: the transitions as SQL CASE expressions in the store (they
 * were, in part): untestable without a database, and a second backend
 * would have had to repeat them.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/job.h"
#include "sluice/outcome.h"
#include "sluice/url.h"
#include "sluice/xmalloc.h"

/* A request that could not be started is tried again this much later: a
 * local failure (out of sockets, a curl error) needs a moment, not a
 * backoff schedule. */
#define JOB_UNSENT_DELAY_MS 1000
/* Every minute a run has been going adds the base poll interval again. */
#define JOB_POLL_GROWTH_MS 60000

static const char *const state_names[JOB_STATE_COUNT] = {
    "queued",    "running", "waiting",   "retrying",
    "succeeded", "failed",  "cancelled",
};

const char *
job_state_name(enum job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT ? state_names[s] : "?";
}

int
job_state_parse(const char *name, enum job_state *out)
{
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        if (strcmp(name, state_names[i]) == 0) {
            *out = (enum job_state)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool
job_state_terminal(enum job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT && (JOB_TERMINAL_MASK >> s & 1u);
}

bool
job_state_unfinished(enum job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT && (JOB_UNFINISHED_MASK >> s & 1u);
}

#define TO(s) (1u << JOB_##s)
#define ANY_BUT_RUNNING ((1u << JOB_STATE_COUNT) - 1 - TO(RUNNING))

/* allowed[from]: the states a job may move to (see job.h). */
static const unsigned allowed[JOB_STATE_COUNT] = {
    [JOB_QUEUED] = TO(RUNNING) | TO(CANCELLED),
    [JOB_RUNNING] = ANY_BUT_RUNNING,
    [JOB_WAITING] = ANY_BUT_RUNNING,
    [JOB_RETRYING] = TO(RUNNING) | TO(CANCELLED),
    [JOB_SUCCEEDED] = 0,
    [JOB_FAILED] = TO(QUEUED),
    [JOB_CANCELLED] = TO(QUEUED),
};

bool
job_transition_allowed(enum job_state from, enum job_state to)
{
    return (unsigned)from < JOB_STATE_COUNT && (unsigned)to < JOB_STATE_COUNT &&
           (allowed[from] >> to & 1u);
}

static const struct {
    const char *name;
    bool retryable;
} classes[ERR_CLASS_COUNT] = {
    [ERR_NONE] = {"", false},
    [ERR_INVALID_REQUEST] = {"invalid_request", false},
    [ERR_AUTH] = {"auth", false},
    [ERR_INSUFFICIENT_BALANCE] = {"insufficient_balance", false},
    [ERR_PERMISSION] = {"permission", false},
    [ERR_NOT_FOUND] = {"not_found", false},
    [ERR_CONFLICT] = {"conflict", false},
    [ERR_IDEMPOTENCY_CONFLICT] = {"idempotency_conflict", false},
    [ERR_RATE_LIMITED] = {"rate_limited", true},
    [ERR_SERVER_ERROR] = {"server_error", true},
    [ERR_UNAVAILABLE] = {"unavailable", true},
    [ERR_TIMEOUT] = {"timeout", true},
    [ERR_SAFETY_BLOCKED] = {"safety_blocked", false},
    [ERR_INPUT_UNREACHABLE] = {"input_unreachable", false},
    [ERR_NETWORK] = {"network", true},
    [ERR_PROTOCOL] = {"protocol", true},
    [ERR_RUN_FAILED] = {"run_failed", true},
    [ERR_UNKNOWN_OUTCOME] = {"unknown_outcome", false},
};

const char *
err_class_name(enum err_class c)
{
    return (unsigned)c < ERR_CLASS_COUNT ? classes[c].name : "?";
}

int
err_class_parse(const char *name, enum err_class *out)
{
    for (int i = 1; i < ERR_CLASS_COUNT; i++) {
        if (strcmp(name, classes[i].name) == 0) {
            *out = (enum err_class)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool
err_class_retryable(enum err_class c)
{
    return (unsigned)c < ERR_CLASS_COUNT && classes[c].retryable;
}

void
job_free(struct job *j)
{
    if (j == NULL)
        return;
    free(j->provider);
    free(j->batch);
    free(j->custom_id);
    free(j->method);
    free(j->path);
    free(j->body);
    free(j->idempotency_key);
    free(j->base_key);
    free(j->remote_id);
    free(j->poll_url);
    free(j);
}

/* N of a key "<base>.N" derived from base; 1 for base itself (derived
 * keys start at .2), 0 for anything else. */
static long
key_serial(const char *base, const char *key)
{
    size_t n = strlen(base);
    char *end;

    if (strcmp(key, base) == 0)
        return 1;
    if (strncmp(key, base, n) != 0 || key[n] != '.' || key[n + 1] < '1' ||
        key[n + 1] > '9')
        return 0;
    long v = strtol(key + n + 1, &end, 10);
    return *end == '\0' && v > 0 && v < INT_MAX ? v : 0;
}

char *
job_derived_key(const struct job *j)
{
    const char *base = j->base_key ? j->base_key : j->idempotency_key;
    /* Past the key in use: attempts restart at an operator's retry, and
     * "<key>.2" of the first life has its failure cached already. */
    long n = key_serial(base, j->idempotency_key) + 1;
    if (n < j->attempts + 1)
        n = j->attempts + 1;
    return xasprintf("%s.%ld", base, n);
}

/* --- job_next ------------------------------------------------------------ */

/* The next poll interval grows gently with the run's age, up to the
 * maximum. */
static int64_t
poll_delay(const struct job_policy *p, const struct job *j, int64_t now)
{
    int64_t age = j->waiting_since ? now - j->waiting_since : 0;
    int64_t delay = p->poll_interval_ms * (1 + age / JOB_POLL_GROWTH_MS);
    return delay < p->poll_interval_max_ms ? delay : p->poll_interval_max_ms;
}

static void
fail_with(struct job_decision *d, const struct outcome *o, const char *verb)
{
    d->cls = o->cls;
    d->code = o->code[0] ? o->code : NULL;
    d->message = o->message[0] ? o->message : NULL;
    d->verb = verb;
}

/* An async run accepted (a submission) or still going (a poll). */
static void
next_accepted(const struct job *j, const struct outcome *o,
              const struct job_policy *p, int64_t now, struct job_decision *d)
{
    bool poll = j->state == JOB_WAITING;

    d->state = JOB_WAITING;
    /* A poll keeps the run and URL the submission was given: a status
     * answer need not repeat them (and a default would be a guess). */
    d->remote_id = poll && j->remote_id ? j->remote_id
                   : o->remote_id       ? o->remote_id
                                        : j->remote_id;
    d->poll_url = poll && j->poll_url ? j->poll_url
                  : o->poll_url       ? o->poll_url
                                      : j->poll_url;
    d->run_after = now + (poll ? poll_delay(p, j, now) : p->poll_interval_ms);
    if (d->poll_url == NULL || (url_origin_len(d->poll_url) > 0 &&
                                !url_same_origin(d->poll_url, p->base_url))) {
        d->state = JOB_FAILED;
        d->cls = ERR_PROTOCOL;
        d->code = d->poll_url ? "foreign_poll_url" : "no_poll_url";
        d->message = d->poll_url ? "poll url is not on the provider's host: "
                                   "credentials are not sent there"
                                 : "run accepted without a run id or poll url";
    }
}

/* The poll itself failed: the run goes on at the provider. */
static void
next_poll_failed(const struct job *j, const struct outcome *o,
                 const struct job_policy *p, int64_t now,
                 struct job_decision *d)
{
    d->deferrals = j->deferrals + 1;
    if (d->deferrals > p->retry.max_deferrals) {
        d->state = JOB_FAILED;
        fail_with(d, o, "failed");
    } else if (outcome_retryable(o) || o->cls == ERR_AUTH ||
               o->cls == ERR_INSUFFICIENT_BALANCE ||
               o->cls == ERR_RATE_LIMITED) {
        int64_t at = now + poll_delay(p, j, now);
        if (o->hints.retry_at_ms > at)
            at = o->hints.retry_at_ms;
        d->state = JOB_WAITING;
        d->run_after = at;
        fail_with(d, o, "poll again");
    } else {
        d->state = JOB_FAILED;
        fail_with(d, o, "failed");
    }
}

/* A submission failed, or a poll reported that the run failed. */
static void
next_failed(const struct job *j, const struct job_event *ev,
            const struct job_policy *p, bool run_failed, struct job_decision *d)
{
    const struct outcome *o = ev->outcome;
    struct retry_policy policy = p->retry;

    if (j->max_attempts > 0)
        policy.max_attempts = j->max_attempts;
    struct retry_decision rd =
        retry_decide(&policy, o, j->attempts, j->deferrals, ev->now_ms, ev->u);
    /* A 403 that the lane judged to be about the key itself (it paused the
     * provider) is the key's fault, not the job's: held like auth. */
    if (o->cls == ERR_PERMISSION && ev->lane_paused)
        rd.action = RETRY_HOLD;
    switch (rd.action) {
    case RETRY_GIVE_UP:
        d->state = JOB_FAILED;
        fail_with(d, o, "failed");
        break;
    case RETRY_AGAIN:
        d->state = JOB_RETRYING;
        d->run_after = rd.run_after_ms;
        d->derive_key = run_failed;
        fail_with(d, o, "retry");
        break;
    case RETRY_DEFER:
        d->state = JOB_RETRYING;
        d->run_after = rd.run_after_ms;
        d->uncharge = true;
        d->deferrals = j->deferrals + 1;
        fail_with(d, o, "deferred");
        break;
    case RETRY_HOLD:
        d->state = JOB_QUEUED;
        d->run_after = ev->now_ms;
        d->uncharge = true;
        fail_with(d, o, "held, provider paused");
        break;
    }
}

/* A submission to a provider without idempotency may have reached it, and
 * no answer says what became of it: sending it again could run (and bill)
 * it twice, so it fails for the operator to look (docs/design.md §4). */
static void
fail_unknown(struct job_decision *d, const char *code)
{
    d->state = JOB_FAILED;
    d->cls = ERR_UNKNOWN_OUTCOME;
    d->code = code;
    d->message = "the request may have reached the provider, which takes no "
                 "idempotency key: not sent again; check with the provider, "
                 "then sluicectl retry";
    d->verb = "failed";
}

static void
next_answer(const struct job *j, const struct job_event *ev,
            const struct job_policy *p, struct job_decision *d)
{
    const struct outcome *o = ev->outcome;
    bool poll = j->state == JOB_WAITING;

    d->has_attempt = !poll || o->kind == OUTCOME_FAILURE;
    switch (o->kind) {
    case OUTCOME_SUCCESS:
        d->state = JOB_SUCCEEDED;
        d->remote_id = o->remote_id;
        break;
    case OUTCOME_ACCEPTED:
        next_accepted(j, o, p, ev->now_ms, d);
        break;
    case OUTCOME_FAILURE:
        /* The run definitively failed at the provider when the poll was
         * answered and named the run's failure. An unreadable answer says
         * nothing about the run. */
        if (!poll && p->idem_none && o->http_status == 0 && !o->unsent)
            fail_unknown(d, o->code[0] ? o->code : "no_response");
        else if (!poll)
            next_failed(j, ev, p, false, d);
        else if (o->http_status >= 200 && o->http_status < 300 &&
                 o->cls != ERR_PROTOCOL)
            next_failed(j, ev, p, true, d);
        else
            next_poll_failed(j, o, p, ev->now_ms, d);
        break;
    }
}

struct job_decision
job_next(const struct job *j, const struct job_event *ev,
         const struct job_policy *p)
{
    bool poll = j->state == JOB_WAITING;
    struct job_decision d = {.state = j->state, .deferrals = j->deferrals};

    switch (ev->kind) {
    case JOB_EVENT_ANSWER:
        next_answer(j, ev, p, &d);
        break;
    case JOB_EVENT_UNSENT:
        /* Given back untouched: a submission's attempt is refunded. */
        d.state = poll ? JOB_WAITING : JOB_QUEUED;
        d.run_after = ev->now_ms + JOB_UNSENT_DELAY_MS;
        d.uncharge = !poll;
        break;
    case JOB_EVENT_RELEASE:
        d.state = poll ? JOB_WAITING : JOB_QUEUED;
        d.run_after = ev->now_ms;
        d.uncharge = !poll;
        /* Cut short by our own stop: not charged, but not resent either
         * when it may have reached a provider without idempotency. */
        if (!poll && p->idem_none && ev->sent)
            fail_unknown(&d, "released");
        break;
    case JOB_EVENT_CANCEL:
        d.state = JOB_CANCELLED;
        d.run_after = ev->now_ms;
        break;
    case JOB_EVENT_REFUSED:
        /* Nothing about it changes by waiting: not retried. */
        d.state = JOB_FAILED;
        d.cls = ev->cls;
        d.code = ev->code;
        d.message = ev->message;
        break;
    }
    /* A run that stops waiting (or starts) changes the provider's count. */
    d.waiting = (d.state == JOB_WAITING) - poll;
    return d;
}
