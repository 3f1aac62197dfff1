"""Every dialect through the real sluiced against the fake provider: the
same behaviours, table-driven over the seven dialects (success, a 429 with
Retry-After, a terminal validation error with the seed's own body, a 5xx
retried), then what only one provider does: FLORA's key in the body,
Lamatic's errors in a 200, FlyMyAI's retry verdict header, Firemoon's
resetAt, and providers paused on 401 / 402 until `sluicectl resume`.

One daemon run serves every dialect of a table at once (a provider per
dialect, each on its own fake prefix), so the file stays fast; jobs per
provider stay far below the circuit breaker's 20-call minimum."""
import datetime
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, drain_ok, enqueue_ok, run, wait_for)

# name: the provider section (and the dialect or alias it names); prefix:
# the fake's route; auth: (request header, value) the key travels in; key:
# where the idempotency key goes; bad: a terminal validation error as the
# reference prints it (status, headers, body) and what sluice must store;
# server: a 5xx the reference calls transient.
DIALECTS = [
    {
        "name": "flora", "dialect": "flora", "prefix": "flora",
        "auth": ("authorization", "Bearer sk-test-flora"),
        "key": "body",
        # 000_b3e71a934dcfd4a5.txt, the one error body printed in full
        "bad": (400, {}, {"error": {
            "code": "input_validation_error",
            "message": "prompt: prompt is required.",
            "fields": [{"field": "prompt",
                        "message": "prompt is required."}]}}),
        "bad_code": "input_validation_error",
        "bad_message": "prompt: prompt is required.",
        "bad_fields": [{"field": "prompt", "message": "prompt is required."}],
        "server": 500,
    },
    {
        "name": "flowapi", "dialect": "flowapi", "prefix": "openai",
        "auth": ("authorization", "Bearer sk-test-flowapi"),
        "key": "header",
        # 001_069197f926edd28b.txt: the format, with the 400 row's type
        "bad": (400, {}, {"error": {
            "message": "A human-readable description of the error.",
            "type": "invalid_request_error", "code": None}}),
        "bad_code": "invalid_request_error",
        "bad_message": "A human-readable description of the error.",
        "bad_fields": None,
        "server": 502,
    },
    {
        "name": "lamatic", "dialect": "lamatic", "prefix": "lamatic",
        "auth": ("authorization", "Bearer sk-test-lamatic"),
        "key": "header",
        # 002_f11ef86aa1a6ce5e.txt: the errors shape, on a 400
        "bad": (400, {}, {"errors": [{
            "message": "Human-readable message",
            "extensions": {"code": "ERROR_CODE"}}]}),
        "bad_code": "ERROR_CODE",
        "bad_message": "Human-readable message",
        "bad_fields": None,
        "server": 500,
    },
    {
        "name": "flymyai", "dialect": "flymyai", "prefix": "flymyai",
        "auth": ("x-api-key", "sk-test-flymyai"),
        "key": "header",
        # 003_4c2a3733d1260fb2.txt: invalid_image_format, "Retryable: false"
        "bad": (422, {"X-FlyMyAI-Retryable": "false"}, {"detail": [{
            "loc": ["body", "image"],
            "msg": "Unsupported image format. Supported formats are .jpg, "
                   ".jpeg, .png, .webp.",
            "type": "invalid_image_format",
            "url": "https://docs.flymy.ai/errors/#invalid_image_format",
            "ctx": {"supported_formats": [".jpg", ".jpeg", ".png", ".webp"]},
            "input": "https://example.com/image.tiff"}]}),
        "bad_code": "invalid_image_format",
        "bad_message": "Unsupported image format. Supported formats are "
                       ".jpg, .jpeg, .png, .webp.",
        "bad_fields": [{"field": "image",
                        "message": "Unsupported image format. Supported "
                                   "formats are .jpg, .jpeg, .png, .webp."}],
        "server": 500,
    },
    {
        "name": "firemoon", "dialect": "firemoon", "prefix": "firemoon",
        "auth": ("authorization", "Bearer sk-test-firemoon"),
        "key": "header",
        # 004_0ddfcfc21980257b.txt: 400 Bad Request
        "bad": (400, {}, {
            "error": "Invalid input",
            "message": "Input validation failed",
            "errors": ["Missing required field: prompt",
                       "Invalid value for image_size: must be one of "
                       "[square_hd, ...]"]}),
        "bad_code": "Invalid input",
        "bad_message": "Input validation failed",
        "bad_fields": [
            {"field": "", "message": "Missing required field: prompt"},
            {"field": "", "message": "Invalid value for image_size: must be "
                                     "one of [square_hd, ...]"}],
        "server": 500,
    },
    {
        "name": "acme", "dialect": "problem", "prefix": "problem",
        "auth": ("authorization", "Bearer sk-test-acme"),
        "key": "header",
        # RFC 9457's own validation example
        "bad": (422, {"Content-Type": "application/problem+json"}, {
            "type": "https://example.net/validation-error",
            "title": "Your request is not valid.",
            "status": 422,
            "detail": "The prompt is missing.",
            "errors": [{"detail": "must be a positive integer",
                        "pointer": "#/age"}]}),
        "bad_code": "https://example.net/validation-error",
        "bad_message": "The prompt is missing.",
        "bad_fields": [{"field": "#/age",
                        "message": "must be a positive integer"}],
        "server": 503,
    },
    {
        "name": "other", "dialect": "generic", "prefix": "v1",
        "auth": ("authorization", "Bearer sk-test-other"),
        "key": "header",
        "bad": (400, {}, {"error": {"code": "input_validation_error",
                                    "message": "prompt: bad"}}),
        "bad_code": "input_validation_error",
        "bad_message": "prompt: bad",
        "bad_fields": None,
        "server": 500,
    },
]


def provider(fake, d, **kw):
    conf = {
        "dialect": d["dialect"],
        "base_url": "%s/%s" % (fake.url, d["prefix"]),
        "api_key": "sk-test-" + d["name"],
        "concurrency_start": 4,
        "adaptive": "no",
        "backoff_base": "20ms",
        "backoff_cap": "200ms",
        "poll_interval": "100ms",
        "timeout": "5s",
    }
    conf.update(kw)
    return conf


def job(d, cid, script=None, **extra):
    body = {"prompt": "a lighthouse at dusk"}
    if script is not None:
        body["_fake"] = {"script": script}
    line = {"custom_id": "%s-%s" % (d["name"], cid), "url": "/generate",
            "body": body, "provider": d["name"]}
    line.update(extra)
    return line


enqueue = enqueue_ok
drain = drain_ok


def the_job(env, key):
    rows = env.rows("SELECT * FROM jobs WHERE idempotency_key = ?", key)
    assert len(rows) == 1, (key, rows)
    return rows[0]


def attempts_of(env, job_id):
    return env.rows("SELECT * FROM attempts WHERE job_id = ? ORDER BY id",
                    job_id)


def sent(fake, key):
    """The fake's log entries of one idempotency key, in arrival order."""
    return [e for e in fake.log() if e["key"] == key]


_RID = re.compile(r"^(req_\d+) (\S+) (\S+) key=(\S+) -> (\d+)")


def request_ids(fake, key):
    """The request ids the fake answered for one key, in order (from its
    per-request stderr line; control endpoints have no such line)."""
    out = []
    for line in fake.stderr_text().splitlines():
        m = _RID.match(line)
        if m and m.group(4) == key:
            out.append((m.group(1), int(m.group(5))))
    return out


def table_env(fake, env, **kw):
    env.write_config({d["name"]: provider(fake, d, **kw) for d in DIALECTS})


def check_key_travel(d, entry, key):
    """The key goes where the dialect sends it, and nowhere else."""
    if d["key"] == "body":
        assert entry["body"].get("idempotency_key") == key, entry
        assert "idempotency-key" not in entry["headers"], entry["headers"]
    else:
        assert entry["headers"].get("idempotency-key") == key, entry
        assert "idempotency_key" not in entry["body"], entry["body"]


# --- the table ------------------------------------------------------------


def test_success_stores_result_status_and_request_id_in_every_dialect():
    with Fake() as fake, Env() as env:
        table_env(fake, env)
        enqueue(env, [job(d, "ok") for d in DIALECTS])
        drain(env)
        for d in DIALECTS:
            key = "%s-ok" % d["name"]
            j = the_job(env, key)
            assert j["state"] == "succeeded", (d["name"], j)
            assert j["http_status"] == 200, (d["name"], j)
            assert j["attempts"] == 1, (d["name"], j)
            result = json.loads(j["result"])
            gen = result["data"] if d["prefix"] == "lamatic" else result
            assert gen["object"] == "generation", (d["name"], result)
            assert gen["key"] == key, (d["name"], result)
            rids = request_ids(fake, key)
            assert rids == [(j["request_id"], 200)], (d["name"], rids, j)
            log = sent(fake, key)
            assert len(log) == 1, (d["name"], log)
            name, value = d["auth"]
            assert log[0]["headers"].get(name) == value, \
                (d["name"], log[0]["headers"])
            check_key_travel(d, log[0], key)
            a = attempts_of(env, j["id"])
            assert [(x["http_status"], x["error_class"], x["request_id"])
                    for x in a] == [(200, None, j["request_id"])], a


def test_429_with_retry_after_defers_with_the_same_key_in_every_dialect():
    with Fake() as fake, Env() as env:
        # one attempt allowed: a deferral that charged it would fail the job
        table_env(fake, env, max_attempts=1)
        script = [{"status": 429, "headers": {"Retry-After": "1"}},
                  {"status": 200}]
        enqueue(env, [job(d, "throttled", script) for d in DIALECTS])
        drain(env)
        for d in DIALECTS:
            key = "%s-throttled" % d["name"]
            j = the_job(env, key)
            assert j["state"] == "succeeded", (d["name"], j)
            assert j["attempts"] == 1 and j["deferrals"] == 1, (d["name"], j)
            log = sent(fake, key)
            assert [e["status"] for e in log] == [429, 200], (d["name"], log)
            gap = log[1]["t_ms"] - log[0]["t_ms"]
            assert gap >= 1000, (d["name"], "resent after %d ms" % gap)
            for e in log:
                check_key_travel(d, e, key)
            a = attempts_of(env, j["id"])
            assert [x["idempotency_key"] for x in a] == [key, key], a
            assert [x["http_status"] for x in a] == [429, 200], a
            assert a[0]["error_class"] == "rate_limited", (d["name"], a[0])
            # the stored hint is the Retry-After (or a later reset)
            assert 900 <= a[0]["retry_after_ms"] <= 2100, (d["name"], a[0])
            rids = request_ids(fake, key)
            assert a[0]["request_id"] == rids[0][0], (d["name"], a, rids)


def test_validation_error_is_terminal_with_the_seed_body_in_every_dialect():
    with Fake() as fake, Env() as env:
        table_env(fake, env)
        lines = []
        for d in DIALECTS:
            status, headers, body = d["bad"]
            lines.append(job(d, "bad", [{"status": status, "headers": headers,
                                         "body": body}, {"status": 200}]))
        enqueue(env, lines)
        drain(env)
        wrong_fields = []
        for d in DIALECTS:
            key = "%s-bad" % d["name"]
            j = the_job(env, key)
            what = (d["name"], j)
            assert j["state"] == "failed", what
            assert j["error_class"] == "invalid_request", what
            assert j["http_status"] == d["bad"][0], what
            assert j["error_code"] == d["bad_code"], what
            assert j["error_message"] == d["bad_message"], what
            assert j["attempts"] == 1, what
            rids = request_ids(fake, key)
            assert rids == [(j["request_id"], d["bad"][0])], (what, rids)
            assert len(sent(fake, key)) == 1, (d["name"], sent(fake, key))
            if d["bad_fields"] is not None:
                got = json.loads(j["fields"] or "null")
                if got != d["bad_fields"]:
                    wrong_fields.append((d["name"], got, d["bad_fields"]))
        # the triage view groups them as an operator will see them
        summary = env.rows("SELECT provider, error_class, error_code, count "
                           "FROM error_summary ORDER BY provider")
        assert sorted((r["provider"], r["error_code"]) for r in summary) == \
            sorted((d["name"], d["bad_code"]) for d in DIALECTS), summary
        assert all(r["error_class"] == "invalid_request" and r["count"] == 1
                   for r in summary), summary
        # per-field messages: stored on the job, as the reference gives them
        assert not wrong_fields, wrong_fields


def test_server_error_is_retried_with_the_same_key_in_every_dialect():
    with Fake() as fake, Env() as env:
        table_env(fake, env)
        enqueue(env, [job(d, "5xx", [{"status": d["server"]},
                                     {"status": d["server"]},
                                     {"status": 200}])
                      for d in DIALECTS])
        drain(env)
        for d in DIALECTS:
            key = "%s-5xx" % d["name"]
            j = the_job(env, key)
            assert j["state"] == "succeeded", (d["name"], j)
            assert j["attempts"] == 3, (d["name"], j)
            a = attempts_of(env, j["id"])
            assert [x["http_status"] for x in a] == \
                [d["server"], d["server"], 200], (d["name"], a)
            assert {x["idempotency_key"] for x in a} == {key}, a
            want = "unavailable" if d["server"] == 503 else "server_error"
            assert [x["error_class"] for x in a] == [want, want, None], a
            assert all(x["request_id"] for x in a), a
            by_key = fake.ledger()["keys"][key]
            assert by_key["requests"] == 3 and by_key["executions"] == 1, \
                (d["name"], by_key)


def test_job_line_max_attempts_caps_retries_of_server_errors():
    d = DIALECTS[-1]
    with Fake() as fake, Env() as env:
        # the provider allows five; the job line asks for two
        env.write_config({d["name"]: provider(fake, d, max_attempts=5)})
        enqueue(env, [job(d, "capped", [{"status": 500}], max_attempts=2)])
        drain(env)
        j = the_job(env, "other-capped")
        assert j["max_attempts"] == 2, j
        assert j["state"] == "failed", j
        assert j["attempts"] == 2, j
        assert len(sent(fake, "other-capped")) == 2, sent(fake, "other-capped")


# --- FLORA ---------------------------------------------------------------


def test_flora_sends_the_key_in_the_body_and_no_idempotency_header():
    d = DIALECTS[0]
    with Fake() as fake, Env() as env:
        env.write_config({"flora": provider(fake, d)})
        enqueue(env, [job(d, "k1", [{"status": 500}, {"status": 200}])])
        drain(env)
        log = sent(fake, "flora-k1")
        assert len(log) == 2, log
        for e in log:
            assert e["body"]["idempotency_key"] == "flora-k1", e["body"]
            assert e["body"]["prompt"] == "a lighthouse at dusk", e["body"]
            assert "idempotency-key" not in e["headers"], e["headers"]
            assert e["headers"]["content-type"].startswith(
                "application/json"), e["headers"]
        assert the_job(env, "flora-k1")["state"] == "succeeded"


# --- Lamatic -------------------------------------------------------------


def test_lamatic_200_with_errors_fails_with_the_code_and_keeps_partial_data():
    d = DIALECTS[2]
    with Fake() as fake, Env() as env:
        env.write_config({"lamatic": provider(fake, d)})
        partial = {"data": {"generate": None, "meta": {"flow": "f1"}},
                   "errors": [{"message": "Human-readable message",
                               "path": ["generate"],
                               "extensions": {"code": "ERROR_CODE"}}]}
        transient = {"errors": [{"message": "try later", "extensions": {
            "code": "INTERNAL_SERVER_ERROR"}}]}
        enqueue(env, [
            job(d, "partial", [{"status": 200, "body": partial},
                               {"status": 200}]),
            job(d, "transient", [{"status": 200, "body": transient},
                                 {"status": 200}]),
        ])
        drain(env)
        j = the_job(env, "lamatic-partial")
        assert j["state"] == "failed", j
        assert j["http_status"] == 200, j
        assert j["error_class"] == "invalid_request", j
        assert j["error_code"] == "ERROR_CODE", j
        assert j["error_message"] == "Human-readable message", j
        assert json.loads(j["result"]) == partial["data"], j["result"]
        assert j["request_id"] == request_ids(fake, "lamatic-partial")[0][0]
        assert len(sent(fake, "lamatic-partial")) == 1
        # a code that says "transient" is retried, with the same key
        t = the_job(env, "lamatic-transient")
        assert t["state"] == "succeeded", t
        a = attempts_of(env, t["id"])
        assert [(x["http_status"], x["error_class"], x["error_code"])
                for x in a] == [(200, "server_error", "INTERNAL_SERVER_ERROR"),
                                (200, None, None)], a
        assert {x["idempotency_key"] for x in a} == {"lamatic-transient"}
        # the error's path is a field message
        assert json.loads(j["fields"] or "null") == [
            {"field": "generate", "message": "Human-readable message"}], j


# --- FlyMyAI -------------------------------------------------------------


def _flymyai_detail(kind, msg):
    return [{"loc": ["body"], "msg": msg, "type": kind,
             "url": "https://docs.flymy.ai/errors/#" + kind,
             "input": {"prompt": "a cat"}}]


def test_flymyai_retryable_header_is_obeyed_both_ways():
    d = DIALECTS[3]
    with Fake() as fake, Env() as env:
        env.write_config({"flymyai": provider(fake, d)})
        no = {"X-FlyMyAI-Retryable": "false"}
        yes = {"X-FlyMyAI-Retryable": "true"}
        enqueue(env, [
            # 003_4c2a3733d1260fb2.txt: 500 and 504 "can be true or false";
            # the seed prints the detail array as the whole body
            job(d, "500-false", [{"status": 500, "headers": no, "body":
                                  _flymyai_detail("internal_server_error",
                                                  "Internal server error")},
                                 {"status": 200}]),
            job(d, "504-true", [{"status": 504, "headers": yes, "body":
                                 _flymyai_detail("generation_timeout",
                                                 "Generation timeout")},
                                {"status": 200}]),
            # the verdict beats the class the other way too
            job(d, "422-true", [{"status": 422, "headers": yes, "body": {
                "detail": _flymyai_detail("invalid_image_format",
                                          "Unsupported image format.")}},
                                {"status": 200}]),
        ])
        drain(env)
        j = the_job(env, "flymyai-500-false")
        assert j["state"] == "failed", j
        assert (j["http_status"], j["error_class"], j["error_code"],
                j["error_message"]) == (500, "server_error",
                                        "internal_server_error",
                                        "Internal server error"), j
        assert len(sent(fake, "flymyai-500-false")) == 1
        j = the_job(env, "flymyai-504-true")
        assert j["state"] == "succeeded", j
        a = attempts_of(env, j["id"])
        assert [(x["http_status"], x["error_class"], x["error_code"])
                for x in a] == [(504, "timeout", "generation_timeout"),
                                (200, None, None)], a
        assert len(sent(fake, "flymyai-504-true")) == 2
        j = the_job(env, "flymyai-422-true")
        assert j["state"] == "succeeded", j
        assert len(sent(fake, "flymyai-422-true")) == 2
        # every request carried the key as x-api-key, never as a bearer
        for e in fake.log():
            assert e["headers"].get("x-api-key") == "sk-test-flymyai", e
            assert "authorization" not in e["headers"], e["headers"]


# --- Firemoon ------------------------------------------------------------


def _iso(ms):
    t = datetime.datetime.fromtimestamp(ms / 1000.0, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ms % 1000)


def test_firemoon_429_waits_for_reset_at_beyond_the_header_reset():
    d = DIALECTS[4]
    with Fake() as fake, Env() as env:
        env.write_config({"firemoon": provider(fake, d)})
        now_ms = int(time.time() * 1000)
        reset_ms = now_ms + 2500
        body = {"error": "Rate limit exceeded",
                "message": "Rate limit exceeded. Try again in 2 seconds.",
                "resetAt": _iso(reset_ms)}
        # the header's reset (unix seconds) is the earlier one
        headers = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": str(now_ms // 1000 + 1)}
        enqueue(env, [job(d, "reset", [{"status": 429, "headers": headers,
                                        "body": body}, {"status": 200}],
                          max_attempts=1)])
        drain(env)
        j = the_job(env, "firemoon-reset")
        assert j["state"] == "succeeded", j
        assert j["attempts"] == 1 and j["deferrals"] == 1, j
        log = sent(fake, "firemoon-reset")
        assert [e["status"] for e in log] == [429, 200], log
        assert log[1]["t_ms"] >= reset_ms, \
            "resent %d ms before resetAt" % (reset_ms - log[1]["t_ms"])
        a = attempts_of(env, j["id"])
        assert (a[0]["error_class"], a[0]["error_code"]) == \
            ("rate_limited", "Rate limit exceeded"), a[0]
        assert a[0]["finished_at"] + a[0]["retry_after_ms"] >= reset_ms - 5, \
            a[0]


# --- paused providers ----------------------------------------------------


PAUSES = [
    # (provider, dialect entry, status, the code the fake sends)
    ("flora-401", DIALECTS[0], 401, "invalid_api_key"),
    ("flora-402", DIALECTS[0], 402, "insufficient_balance"),
    ("flowapi-401", DIALECTS[1], 401, "invalid_api_key"),
    ("flowapi-402", DIALECTS[1], 402, "insufficient_balance"),
]


def test_401_and_402_pause_the_provider_until_sluicectl_resume():
    with Fake() as fake, Env() as env:
        providers = {}
        lines = []
        for name, d, status, _ in PAUSES:
            # one request at a time and no probe: only resume restarts it
            providers[name] = provider(fake, d, concurrency_start=1,
                                       probe_interval="1h")
            for i in range(3):
                script = [{"status": status}, {"status": 200}] \
                    if i == 0 else None
                lines.append({"custom_id": "%s-%d" % (name, i),
                              "url": "/generate", "provider": name,
                              "priority": 10 - i,
                              "body": {"prompt": "p%d" % i,
                                       "_fake": {"script": script}}
                              if script else {"prompt": "p%d" % i}})
        env.write_config(providers)
        enqueue(env, lines)
        dmn = env.daemon()

        def all_paused():
            rows = env.rows("SELECT name, state FROM providers")
            return len(rows) == 4 and all(r["state"] == "paused"
                                          for r in rows)

        wait_for(all_paused, 20, message="four paused providers")
        # settle: nothing more goes out while paused
        time.sleep(0.5)
        for name, d, status, code in PAUSES:
            lane = env.rows("SELECT state, reason FROM providers "
                            "WHERE name = ?", name)[0]
            assert code in (lane["reason"] or ""), (name, lane)
            jobs = env.rows("SELECT state, attempts FROM jobs "
                            "WHERE provider = ?", name)
            assert jobs == [{"state": "queued", "attempts": 0}] * 3, \
                (name, jobs)
            assert [e["status"] for e in sent(fake, "%s-0" % name)] == \
                [status], name
            assert sent(fake, "%s-1" % name) == [], name
        assert fake.ledger()["requests"] == 4, fake.ledger()["requests"]

        # resume two of them while the daemon runs
        for name in ("flora-402", "flowapi-401"):
            rc, out, err = env.ctl("resume", name)
            assert rc == 0, (out, err)

        def resumed_done():
            rows = env.rows("SELECT provider, state FROM jobs WHERE provider "
                            "IN ('flora-402', 'flowapi-401')")
            return all(r["state"] == "succeeded" for r in rows)

        wait_for(resumed_done, 20, message="resumed providers' jobs")
        for name in ("flora-401", "flowapi-402"):
            assert env.rows("SELECT state FROM providers WHERE name = ?",
                            name)[0]["state"] == "paused", name
            assert {r["state"] for r in env.rows(
                "SELECT state FROM jobs WHERE provider = ?", name)} == \
                {"queued"}, name
        wait_for(lambda: env.rows("SELECT state FROM providers WHERE name = "
                                  "'flora-402'")[0]["state"] == "active", 5,
                 message="flora-402 active again")
        for name in ("flora-402", "flowapi-401"):
            first = the_job(env, "%s-0" % name)
            a = attempts_of(env, first["id"])
            assert [x["http_status"] for x in a] == [
                dict((p[0], p[2]) for p in PAUSES)[name], 200], (name, a)
            assert {x["idempotency_key"] for x in a} == {"%s-0" % name}, a
        dmn.signal(signal.SIGTERM)
        assert dmn.wait(20) == 0, dmn.stderr_text()


if __name__ == "__main__":
    run(globals())
