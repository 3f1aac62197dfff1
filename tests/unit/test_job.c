/*
 * job: the state sets and their SQL text, the table of allowed
 * transitions, and every branch of job_next with an injected clock and
 * random draw.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/job.h"
#include "sluice/outcome.h"

#define NOW 1700000000000LL

static const struct job_policy policy = {
    .retry = {.max_attempts = 5,
              .max_deferrals = 3,
              .base_ms = 1000,
              .cap_ms = 60000},
    .poll_interval_ms = 2000,
    .poll_interval_max_ms = 5000,
    .base_url = "https://api.example.com/v1",
};

/* A job as a claim returns it: running (a submission, first attempt) or
 * waiting (a poll of run_1, accepted 30 s ago). */
static struct job
claimed(enum job_state state)
{
    struct job j = {
        .id = 42,
        .idempotency_key = (char *)"key-1",
        .base_key = (char *)"key-1",
        .state = state,
        .attempts = 1,
        .max_attempts = 0,
    };
    if (state == JOB_WAITING) {
        j.remote_id = (char *)"run_1";
        j.poll_url = (char *)"/runs/run_1";
        j.waiting_since = NOW - 30000;
    }
    return j;
}

static struct outcome
answer(enum outcome_kind kind, int status, enum err_class cls)
{
    struct outcome o;
    outcome_init(&o);
    o.kind = kind;
    o.http_status = status;
    if (kind == OUTCOME_FAILURE)
        outcome_fail(&o, cls, "some_code", "some message");
    return o;
}

static struct job_decision
next(const struct job *j, const struct outcome *o)
{
    struct job_event ev = {
        .kind = JOB_EVENT_ANSWER, .outcome = o, .now_ms = NOW, .u = 0.5};
    struct job_decision d = job_next(j, &ev, &policy);
    assert_true(job_transition_allowed(j->state, d.state));
    return d;
}

static struct job_decision
next_event(const struct job *j, enum job_event_kind kind)
{
    struct job_event ev = {.kind = kind, .now_ms = NOW};
    struct job_decision d = job_next(j, &ev, &policy);
    assert_true(job_transition_allowed(j->state, d.state));
    return d;
}

/* --- state sets and transitions ----------------------------------------- */

/* The SQL list of a mask's states, in enum order, as job.h spells it. */
static void
assert_sql_list(unsigned mask, const char *sql)
{
    char want[256] = "";
    for (int s = 0; s < JOB_STATE_COUNT; s++) {
        if (!(mask >> s & 1u))
            continue;
        if (want[0])
            strcat(want, ", ");
        strcat(want, "'");
        strcat(want, job_state_name((enum job_state)s));
        strcat(want, "'");
    }
    assert_string_equal(sql, want);
}

static void
test_state_sets_partition_the_states_and_match_their_sql(void **state)
{
    (void)state;
    assert_int_equal(JOB_UNFINISHED_MASK & JOB_TERMINAL_MASK, 0);
    assert_int_equal(JOB_UNFINISHED_MASK | JOB_TERMINAL_MASK,
                     (1u << JOB_STATE_COUNT) - 1);
    assert_sql_list(JOB_UNFINISHED_MASK, JOB_UNFINISHED_SQL);
    assert_sql_list(JOB_TERMINAL_MASK, JOB_TERMINAL_SQL);
    for (int s = 0; s < JOB_STATE_COUNT; s++) {
        assert_int_equal(job_state_terminal((enum job_state)s),
                         JOB_TERMINAL_MASK >> s & 1u);
        assert_int_equal(job_state_unfinished((enum job_state)s),
                         JOB_UNFINISHED_MASK >> s & 1u);
    }
    assert_false(job_state_terminal((enum job_state)JOB_STATE_COUNT));
    assert_false(job_state_unfinished((enum job_state)JOB_STATE_COUNT));
}

static void
test_only_a_claim_enters_running(void **state)
{
    (void)state;
    for (int from = 0; from < JOB_STATE_COUNT; from++)
        assert_int_equal(
            job_transition_allowed((enum job_state)from, JOB_RUNNING),
            from == JOB_QUEUED || from == JOB_RETRYING);
}

static void
test_claimed_jobs_may_go_anywhere_else(void **state)
{
    (void)state;
    for (int to = 0; to < JOB_STATE_COUNT; to++) {
        bool want = to != JOB_RUNNING;
        assert_int_equal(
            job_transition_allowed(JOB_RUNNING, (enum job_state)to), want);
        assert_int_equal(
            job_transition_allowed(JOB_WAITING, (enum job_state)to), want);
    }
}

static void
test_queued_jobs_are_claimed_or_cancelled(void **state)
{
    (void)state;
    static const enum job_state from[] = {JOB_QUEUED, JOB_RETRYING};
    for (size_t i = 0; i < 2; i++)
        for (int to = 0; to < JOB_STATE_COUNT; to++)
            assert_int_equal(
                job_transition_allowed(from[i], (enum job_state)to),
                to == JOB_RUNNING || to == JOB_CANCELLED);
}

static void
test_terminal_states_reopen_only_by_retry(void **state)
{
    (void)state;
    for (int to = 0; to < JOB_STATE_COUNT; to++) {
        assert_false(job_transition_allowed(JOB_SUCCEEDED, (enum job_state)to));
        assert_int_equal(job_transition_allowed(JOB_FAILED, (enum job_state)to),
                         to == JOB_QUEUED);
        assert_int_equal(
            job_transition_allowed(JOB_CANCELLED, (enum job_state)to),
            to == JOB_QUEUED);
    }
    assert_false(
        job_transition_allowed((enum job_state)JOB_STATE_COUNT, JOB_QUEUED));
    assert_false(
        job_transition_allowed(JOB_QUEUED, (enum job_state)JOB_STATE_COUNT));
}

/* --- answers to a submission ---------------------------------------------- */

static void
test_submission_success_succeeds_with_an_attempt_row(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_SUCCESS, 200, ERR_NONE);
    o.remote_id = (char *)"gen_9";
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_SUCCEEDED);
    assert_true(d.has_attempt);
    assert_int_equal(d.cls, ERR_NONE);
    assert_string_equal(d.remote_id, "gen_9");
    assert_int_equal(d.waiting, 0);
    assert_false(d.uncharge);
    assert_null(d.verb);
}

static void
test_accepted_run_waits_for_its_first_poll(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_ACCEPTED, 202, ERR_NONE);
    o.remote_id = (char *)"run_7";
    o.poll_url = (char *)"https://API.example.com/v1/runs/run_7";
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_WAITING);
    assert_int_equal(d.run_after, NOW + 2000);
    assert_string_equal(d.remote_id, "run_7");
    assert_string_equal(d.poll_url, o.poll_url);
    assert_int_equal(d.waiting, +1);
    assert_true(d.has_attempt);
}

static void
test_accepted_run_on_another_host_fails_as_protocol(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_ACCEPTED, 202, ERR_NONE);
    o.poll_url = (char *)"https://api.example.com.evil/runs/1";
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_FAILED);
    assert_int_equal(d.cls, ERR_PROTOCOL);
    assert_string_equal(d.code, "foreign_poll_url");
    assert_int_equal(d.waiting, 0);

    /* Another port is another origin too. */
    o.poll_url = (char *)"https://api.example.com:8443/runs/1";
    assert_int_equal(next(&j, &o).state, JOB_FAILED);
    /* A path under base_url is ours. */
    o.poll_url = (char *)"/runs/1";
    assert_int_equal(next(&j, &o).state, JOB_WAITING);
}

static void
test_accepted_run_without_a_poll_url_fails(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_ACCEPTED, 202, ERR_NONE);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_FAILED);
    assert_string_equal(d.code, "no_poll_url");
}

static void
test_retryable_failure_retries_with_backoff_and_the_same_key(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_FAILURE, 500, ERR_SERVER_ERROR);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_RETRYING);
    /* first retry: 0.5 × min(60 s, 1 s) */
    assert_int_equal(d.run_after, NOW + 500);
    assert_false(d.derive_key);
    assert_false(d.uncharge);
    assert_int_equal(d.cls, ERR_SERVER_ERROR);
    assert_string_equal(d.code, "some_code");
    assert_string_equal(d.message, "some message");
    assert_string_equal(d.verb, "retry");
    assert_true(d.has_attempt);
}

static void
test_throttle_defers_and_refunds_the_attempt(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    j.deferrals = 2;
    struct outcome o = answer(OUTCOME_FAILURE, 429, ERR_RATE_LIMITED);
    o.hints.retry_at_ms = NOW + 7000;
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_RETRYING);
    assert_int_equal(d.run_after, NOW + 7000);
    assert_true(d.uncharge);
    assert_int_equal(d.deferrals, 3);
    assert_string_equal(d.verb, "deferred");

    /* One more than max_deferrals: the job fails. */
    j.deferrals = 3;
    d = next(&j, &o);
    assert_int_equal(d.state, JOB_FAILED);
    assert_string_equal(d.verb, "failed");
}

static void
test_auth_failure_holds_the_job_queued(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_FAILURE, 401, ERR_AUTH);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_QUEUED);
    assert_int_equal(d.run_after, NOW);
    assert_true(d.uncharge);
    assert_string_equal(d.verb, "held, provider paused");
}

static void
test_403_holds_only_when_the_lane_paused(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_FAILURE, 403, ERR_PERMISSION);
    struct job_event ev = {
        .kind = JOB_EVENT_ANSWER, .outcome = &o, .now_ms = NOW, .u = 0.5};

    assert_int_equal(job_next(&j, &ev, &policy).state, JOB_FAILED);
    ev.lane_paused = true;
    assert_int_equal(job_next(&j, &ev, &policy).state, JOB_QUEUED);
}

static void
test_job_max_attempts_beats_the_provider(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_FAILURE, 503, ERR_UNAVAILABLE);

    j.attempts = 2;
    assert_int_equal(next(&j, &o).state, JOB_RETRYING);
    j.max_attempts = 2;
    assert_int_equal(next(&j, &o).state, JOB_FAILED);
}

static void
test_non_retryable_failure_fails(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_FAILURE, 400, ERR_INVALID_REQUEST);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_FAILED);
    assert_int_equal(d.run_after, 0);
    assert_int_equal(d.cls, ERR_INVALID_REQUEST);
}

/* --- answers to a poll ------------------------------------------------------
 */

static void
test_poll_success_ends_the_run_without_an_attempt_row(void **state)
{
    (void)state;
    struct job j = claimed(JOB_WAITING);
    struct outcome o = answer(OUTCOME_SUCCESS, 200, ERR_NONE);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_SUCCEEDED);
    assert_false(d.has_attempt);
    assert_int_equal(d.waiting, -1);
}

static void
test_running_run_is_polled_later_as_it_ages(void **state)
{
    (void)state;
    struct job j = claimed(JOB_WAITING);
    struct outcome o = answer(OUTCOME_ACCEPTED, 200, ERR_NONE);
    o.poll_url = (char *)"/elsewhere"; /* the job's own url is kept */
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_WAITING);
    assert_int_equal(d.run_after, NOW + 2000); /* under a minute old */
    assert_string_equal(d.remote_id, "run_1");
    assert_string_equal(d.poll_url, "/runs/run_1");
    assert_int_equal(d.waiting, 0);
    assert_false(d.has_attempt);

    j.waiting_since = NOW - 61000; /* one minute: twice the base */
    assert_int_equal(next(&j, &o).run_after, NOW + 4000);
    j.waiting_since = NOW - 600000; /* capped */
    assert_int_equal(next(&j, &o).run_after, NOW + 5000);
}

static void
test_failed_poll_polls_again_no_earlier_than_the_hint(void **state)
{
    (void)state;
    struct job j = claimed(JOB_WAITING);
    struct outcome o = answer(OUTCOME_FAILURE, 0, ERR_NETWORK);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_WAITING);
    assert_int_equal(d.run_after, NOW + 2000);
    assert_int_equal(d.deferrals, 1);
    assert_true(d.has_attempt);
    assert_int_equal(d.waiting, 0);
    assert_string_equal(d.verb, "poll again");

    o = answer(OUTCOME_FAILURE, 429, ERR_RATE_LIMITED);
    o.hints.retry_at_ms = NOW + 9000;
    assert_int_equal(next(&j, &o).run_after, NOW + 9000);
    /* An unreadable 200 is a failed poll too, not a failed run. */
    o = answer(OUTCOME_FAILURE, 200, ERR_PROTOCOL);
    assert_int_equal(next(&j, &o).state, JOB_WAITING);
}

static void
test_failed_polls_are_bounded_by_max_deferrals(void **state)
{
    (void)state;
    struct job j = claimed(JOB_WAITING);
    struct outcome o = answer(OUTCOME_FAILURE, 502, ERR_SERVER_ERROR);

    j.deferrals = 3;
    struct job_decision d = next(&j, &o);
    assert_int_equal(d.state, JOB_FAILED);
    assert_int_equal(d.deferrals, 4);
    assert_int_equal(d.waiting, -1);
    assert_string_equal(d.verb, "failed");
}

static void
test_final_poll_failure_fails_the_job(void **state)
{
    (void)state;
    struct job j = claimed(JOB_WAITING);
    struct outcome o = answer(OUTCOME_FAILURE, 404, ERR_NOT_FOUND);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_FAILED);
    assert_int_equal(d.waiting, -1);
}

static void
test_failed_run_retries_with_a_derived_key(void **state)
{
    (void)state;
    struct job j = claimed(JOB_WAITING);
    struct outcome o = answer(OUTCOME_FAILURE, 200, ERR_RUN_FAILED);
    struct job_decision d = next(&j, &o);

    assert_int_equal(d.state, JOB_RETRYING);
    assert_true(d.derive_key);
    assert_int_equal(d.waiting, -1);
    assert_int_equal(d.deferrals, 0); /* a failed run is no deferral */

    char *key = job_derived_key(&j);
    assert_string_equal(key, "key-1.2");
    free(key);
    /* Derived from the job's own key, not from the last derived one. */
    j.idempotency_key = (char *)"key-1.2";
    j.attempts = 2;
    key = job_derived_key(&j);
    assert_string_equal(key, "key-1.3");
    free(key);

    o = answer(OUTCOME_FAILURE, 200, ERR_SAFETY_BLOCKED);
    d = next(&j, &o);
    assert_int_equal(d.state, JOB_FAILED);
    assert_int_equal(d.waiting, -1);
}

/* After an operator's retry the attempts start again at 1, but the keys
 * of the first life have their failures cached: derivation goes on past
 * the key in use, never back to "<key>.2". */
static void
test_derived_key_goes_past_the_key_in_use_after_a_retry(void **state)
{
    (void)state;
    struct job j = claimed(JOB_WAITING);
    char *key;

    j.idempotency_key = (char *)"key-1.5";
    j.attempts = 1;
    key = job_derived_key(&j);
    assert_string_equal(key, "key-1.6");
    free(key);
    /* a base key that itself ends in digits is not mistaken for a
     * derivation of a shorter one */
    j.base_key = (char *)"shot.2";
    j.idempotency_key = (char *)"shot.2";
    key = job_derived_key(&j);
    assert_string_equal(key, "shot.2.2");
    free(key);
}

/* A provider without idempotency (docs/design.md §4): a submission that may
 * have reached it and got no answer is never sent again on our own; one that
 * never left (DNS, connect) is, and an answer (even a 503) is an answer. */
static void
test_no_answer_from_a_provider_without_idempotency_is_unknown_outcome(
    void **state)
{
    (void)state;
    struct job_policy none = policy;
    none.idem_none = true;
    struct job j = claimed(JOB_RUNNING);
    struct outcome o = answer(OUTCOME_FAILURE, 0, ERR_NETWORK);
    struct job_event ev = {
        .kind = JOB_EVENT_ANSWER, .outcome = &o, .now_ms = NOW, .u = 0.5};
    struct job_decision d;

    outcome_fail(&o, ERR_NETWORK, "curl_56", "Recv failure");
    d = job_next(&j, &ev, &none);
    assert_int_equal(d.state, JOB_FAILED);
    assert_int_equal(d.cls, ERR_UNKNOWN_OUTCOME);
    assert_string_equal(d.code, "curl_56");
    assert_true(d.has_attempt);
    assert_false(err_class_retryable(ERR_UNKNOWN_OUTCOME));
    assert_string_equal(err_class_name(d.cls), "unknown_outcome");

    outcome_fail(&o, ERR_TIMEOUT, "client_timeout", "timed out");
    d = job_next(&j, &ev, &none);
    assert_int_equal(d.cls, ERR_UNKNOWN_OUTCOME);

    /* nothing left our side: safe to send again */
    o.unsent = true;
    d = job_next(&j, &ev, &none);
    assert_int_equal(d.state, JOB_RETRYING);
    /* with idempotency, the same key makes a resend safe */
    o.unsent = false;
    d = job_next(&j, &ev, &policy);
    assert_int_equal(d.state, JOB_RETRYING);
    /* an answer is an answer */
    struct outcome busy = answer(OUTCOME_FAILURE, 503, ERR_UNAVAILABLE);
    ev.outcome = &busy;
    d = job_next(&j, &ev, &none);
    assert_int_equal(d.state, JOB_RETRYING);
    /* polls are GETs of a run: always safe */
    struct job w = claimed(JOB_WAITING);
    ev.outcome = &o;
    d = job_next(&w, &ev, &none);
    assert_int_equal(d.state, JOB_WAITING);

    /* cut short by our own stop: uncharged, and failed if it had left */
    struct job_event rel = {.kind = JOB_EVENT_RELEASE, .now_ms = NOW,
                            .sent = true};
    d = job_next(&j, &rel, &none);
    assert_int_equal(d.state, JOB_FAILED);
    assert_int_equal(d.cls, ERR_UNKNOWN_OUTCOME);
    assert_true(d.uncharge);
    rel.sent = false;
    d = job_next(&j, &rel, &none);
    assert_int_equal(d.state, JOB_QUEUED);
    rel.sent = true;
    d = job_next(&j, &rel, &policy);
    assert_int_equal(d.state, JOB_QUEUED);
    outcome_clear(&o);
    outcome_clear(&busy);
}

/* --- no answer
 * ---------------------------------------------------------------- */

static void
test_unsent_request_gives_the_job_back_uncharged(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct job_decision d = next_event(&j, JOB_EVENT_UNSENT);

    assert_int_equal(d.state, JOB_QUEUED);
    assert_int_equal(d.run_after, NOW + 1000);
    assert_true(d.uncharge);
    assert_false(d.has_attempt);

    j = claimed(JOB_WAITING);
    d = next_event(&j, JOB_EVENT_UNSENT);
    assert_int_equal(d.state, JOB_WAITING);
    assert_false(d.uncharge);
    assert_int_equal(d.waiting, 0);
}

static void
test_release_at_shutdown_returns_the_job_due_now(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    j.deferrals = 2;
    struct job_decision d = next_event(&j, JOB_EVENT_RELEASE);

    assert_int_equal(d.state, JOB_QUEUED);
    assert_int_equal(d.run_after, NOW);
    assert_true(d.uncharge);
    assert_int_equal(d.deferrals, 2);

    j = claimed(JOB_WAITING);
    d = next_event(&j, JOB_EVENT_RELEASE);
    assert_int_equal(d.state, JOB_WAITING);
    assert_int_equal(d.run_after, NOW);
    assert_int_equal(d.waiting, 0);
}

static void
test_cancel_in_flight_cancels_and_ends_a_run(void **state)
{
    (void)state;
    struct job j = claimed(JOB_RUNNING);
    struct job_decision d = next_event(&j, JOB_EVENT_CANCEL);
    assert_int_equal(d.state, JOB_CANCELLED);
    assert_false(d.uncharge);
    assert_int_equal(d.waiting, 0);

    j = claimed(JOB_WAITING);
    d = next_event(&j, JOB_EVENT_CANCEL);
    assert_int_equal(d.state, JOB_CANCELLED);
    assert_int_equal(d.waiting, -1);
}

static void
test_refused_request_fails_with_its_reason(void **state)
{
    (void)state;
    static const enum job_state from[] = {JOB_RUNNING, JOB_WAITING};
    for (size_t i = 0; i < 2; i++) {
        struct job j = claimed(from[i]);
        struct job_event ev = {.kind = JOB_EVENT_REFUSED,
                               .now_ms = NOW,
                               .cls = ERR_PROTOCOL,
                               .code = "foreign_url",
                               .message = "not there"};
        struct job_decision d = job_next(&j, &ev, &policy);
        assert_int_equal(d.state, JOB_FAILED);
        assert_int_equal(d.cls, ERR_PROTOCOL);
        assert_string_equal(d.code, "foreign_url");
        assert_string_equal(d.message, "not there");
        assert_false(d.has_attempt);
        assert_false(d.uncharge);
        assert_int_equal(d.waiting, from[i] == JOB_WAITING ? -1 : 0);
    }
}

/* Every class, as a submission and as a poll, lands on an allowed state,
 * and the waiting count moves exactly when the job enters or leaves
 * waiting. */
static void
test_every_answer_is_an_allowed_transition(void **state)
{
    (void)state;
    static const enum job_state from[] = {JOB_RUNNING, JOB_WAITING};
    static const int statuses[] = {0, 200, 429, 500};
    for (size_t f = 0; f < 2; f++) {
        for (int c = 1; c < ERR_CLASS_COUNT; c++) {
            for (size_t s = 0; s < 4; s++) {
                struct job j = claimed(from[f]);
                struct outcome o =
                    answer(OUTCOME_FAILURE, statuses[s], (enum err_class)c);
                struct job_decision d = next(&j, &o);
                assert_int_equal(d.waiting, (d.state == JOB_WAITING) -
                                                (from[f] == JOB_WAITING));
                assert_non_null(d.verb);
                assert_int_equal(d.cls, c);
            }
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_state_sets_partition_the_states_and_match_their_sql),
        cmocka_unit_test(test_only_a_claim_enters_running),
        cmocka_unit_test(test_claimed_jobs_may_go_anywhere_else),
        cmocka_unit_test(test_queued_jobs_are_claimed_or_cancelled),
        cmocka_unit_test(test_terminal_states_reopen_only_by_retry),
        cmocka_unit_test(test_submission_success_succeeds_with_an_attempt_row),
        cmocka_unit_test(test_accepted_run_waits_for_its_first_poll),
        cmocka_unit_test(test_accepted_run_on_another_host_fails_as_protocol),
        cmocka_unit_test(test_accepted_run_without_a_poll_url_fails),
        cmocka_unit_test(
            test_retryable_failure_retries_with_backoff_and_the_same_key),
        cmocka_unit_test(test_throttle_defers_and_refunds_the_attempt),
        cmocka_unit_test(test_auth_failure_holds_the_job_queued),
        cmocka_unit_test(test_403_holds_only_when_the_lane_paused),
        cmocka_unit_test(test_job_max_attempts_beats_the_provider),
        cmocka_unit_test(test_non_retryable_failure_fails),
        cmocka_unit_test(test_poll_success_ends_the_run_without_an_attempt_row),
        cmocka_unit_test(test_running_run_is_polled_later_as_it_ages),
        cmocka_unit_test(test_failed_poll_polls_again_no_earlier_than_the_hint),
        cmocka_unit_test(test_failed_polls_are_bounded_by_max_deferrals),
        cmocka_unit_test(test_final_poll_failure_fails_the_job),
        cmocka_unit_test(test_failed_run_retries_with_a_derived_key),
        cmocka_unit_test(
            test_no_answer_from_a_provider_without_idempotency_is_unknown_outcome),
        cmocka_unit_test(
            test_derived_key_goes_past_the_key_in_use_after_a_retry),
        cmocka_unit_test(test_unsent_request_gives_the_job_back_uncharged),
        cmocka_unit_test(test_release_at_shutdown_returns_the_job_due_now),
        cmocka_unit_test(test_cancel_in_flight_cancels_and_ends_a_run),
        cmocka_unit_test(test_refused_request_fails_with_its_reason),
        cmocka_unit_test(test_every_answer_is_an_allowed_transition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
