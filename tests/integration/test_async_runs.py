"""FLORA's asynchronous runs through the real sluiced and the fake provider:
a run accepted puts the job in `waiting` with its run id and poll URL, the
lane polls it until it completes (result and charged cost stored) or fails
(classified: model_timeout / internal_error resubmitted under a derived key
<key>.2, since the same key only replays the failed run; safety_blocked
and input_unreachable terminal). A restart resumes polling and never
resubmits; the same key with another body is terminal."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, drain_ok, enqueue_ok, run, wait_for)


def flora(fake, **kw):
    conf = {
        "dialect": "flora",
        "base_url": fake.url + "/flora",
        "api_key": "sk-test-flora",
        "concurrency_start": 4,
        "adaptive": "no",
        "backoff_base": "20ms",
        "backoff_cap": "200ms",
        "poll_interval": "100ms",
        "timeout": "5s",
    }
    conf.update(kw)
    return conf


def run_job(cid, then=None, polls=1, provider="flora", prompt="thumbnail"):
    step = {"async": {"polls": polls}}
    if then is not None:
        step["async"]["then"] = then
    return {"custom_id": cid, "url": "/techniques/thumbnail-v3/runs",
            "provider": provider,
            "body": {"inputs": [{"id": "prompt", "value": prompt}],
                     "mode": "async", "_fake": {"script": [step]}}}


def failed_run(code, message):
    return {"run_status": "failed", "error_code": code,
            "error_message": message}


enqueue = enqueue_ok
drain = drain_ok


def the_job(env, cid):
    rows = env.rows("SELECT * FROM jobs WHERE custom_id = ?", cid)
    assert len(rows) == 1, (cid, rows)
    return rows[0]


def submissions(env, job_id):
    return env.rows("SELECT * FROM attempts WHERE job_id = ? AND is_poll = 0 "
                    "ORDER BY id", job_id)


def posts(fake, key=None, header=None):
    """The fake's log of submissions (POSTs), optionally of one key: the
    fake's own key, or the value of a request header."""
    out = []
    for e in fake.log():
        if e["method"] != "POST":
            continue
        if key is not None and e["key"] != key:
            continue
        if header is not None and e["headers"].get(header[0]) != header[1]:
            continue
        out.append(e)
    return out


def polls_of(fake, run_id):
    return [e for e in fake.log()
            if e["method"] == "GET" and e["path"] == "/flora/runs/" + run_id]


def test_accepted_run_waits_with_run_id_then_completes_with_cost():
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake, poll_interval="300ms")})
        enqueue(env, [run_job("thumb-1", then={"charged_cost": 0.25},
                              polls=3)])
        d = env.daemon()
        waiting = wait_for(lambda: [r for r in env.rows(
            "SELECT * FROM jobs") if r["state"] == "waiting"], 20,
            message="a waiting job")[0]
        assert waiting["remote_id"] == "run_1", waiting
        assert waiting["poll_url"] == fake.url + "/flora/runs/run_1", waiting
        assert waiting["attempts"] == 1, waiting
        wait_for(lambda: the_job(env, "thumb-1")["state"] == "succeeded", 20,
                 message="the run to complete")
        d.signal(signal.SIGTERM)
        assert d.wait(20) == 0, d.stderr_text()
        j = the_job(env, "thumb-1")
        assert j["cost"] == 0.25, j
        assert j["remote_id"] == "run_1", j
        assert j["http_status"] == 200, j
        assert j["error_class"] is None, j
        result = json.loads(j["result"])
        assert result["status"] == "completed", result
        assert result["run_id"] == "run_1", result
        assert result["outputs"][0]["type"] == "image", result
        # one create, polls until the fourth answer completed it
        assert len(posts(fake)) == 1, posts(fake)
        gets = polls_of(fake, "run_1")
        assert len(gets) == 4, [(g["t_ms"], g["status"]) for g in gets]
        for g in gets:
            assert g["headers"].get("authorization") == \
                "Bearer sk-test-flora", g["headers"]
            assert g["body"] is None, g
        # successful polls leave no attempt rows: one submission only
        rows = env.rows("SELECT is_poll, idempotency_key, http_status "
                        "FROM attempts")
        assert rows == [{"is_poll": 0, "idempotency_key": "thumb-1",
                         "http_status": 200}], rows
        ledger = fake.ledger()["keys"]["thumb-1"]
        assert ledger["executions"] == 1 and ledger["requests"] == 1, ledger


def test_model_timeout_run_is_resubmitted_under_a_derived_key_and_completes():
    # The fake walks a script per key, so a new key would start it over;
    # the key travels in a header the fake does not read, which makes it
    # walk the script per body: the first run fails, the second completes.
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake,
                                         idempotency="header:X-Flora-Key")})
        line = run_job("clip-1")
        line["body"]["_fake"]["script"] = [
            {"async": {"polls": 1, "then": failed_run(
                "model_timeout",
                "Underlying model exceeded the 60s budget")}},
            {"async": {"polls": 1, "then": {"charged_cost": 0.5}}}]
        enqueue(env, [line])
        drain(env)
        j = the_job(env, "clip-1")
        assert j["state"] == "succeeded", j
        assert j["attempts"] == 2, j
        assert j["remote_id"] == "run_2", j
        assert j["cost"] == 0.5, j
        sent = posts(fake)
        assert [e["headers"].get("x-flora-key") for e in sent] == \
            ["clip-1", "clip-1.2"], sent
        assert fake.ledger()["executions"] == 2, fake.ledger()
        subs = submissions(env, j["id"])
        assert [s["idempotency_key"] for s in subs] == \
            ["clip-1", "clip-1.2"], subs
        failed_poll = env.rows("SELECT * FROM attempts WHERE job_id = ? AND "
                               "is_poll = 1", j["id"])
        assert [(p["http_status"], p["error_class"], p["error_code"],
                 p["error_message"]) for p in failed_poll] == [
            (200, "timeout", "model_timeout",
             "Underlying model exceeded the 60s budget")], failed_poll
        # the job keeps its identity; only the key sent changed
        assert j["idempotency_key"] == "clip-1", j


def test_failed_runs_send_derived_keys_in_the_body_until_attempts_run_out():
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake, max_attempts=3)})
        enqueue(env, [
            run_job("slow-1", then=failed_run(
                "model_timeout", "Underlying model exceeded the 60s budget")),
            run_job("boom-1", then=failed_run(
                "internal_error", "Generic execution failure.")),
        ])
        drain(env)
        for cid, cls, code in (("slow-1", "timeout", "model_timeout"),
                               ("boom-1", "run_failed", "internal_error")):
            j = the_job(env, cid)
            assert j["state"] == "failed", j
            assert (j["error_class"], j["error_code"], j["http_status"]) == \
                (cls, code, 200), j
            assert j["attempts"] == 3, j
            keys = [cid, cid + ".2", cid + ".3"]
            assert [s["idempotency_key"] for s in
                    submissions(env, j["id"])] == keys, cid
            # every resubmission created a fresh run at the provider
            body_keys = [e["body"]["idempotency_key"] for e in posts(fake)
                         if e["body"]["idempotency_key"].startswith(cid)]
            assert body_keys == keys, body_keys
            ledger = fake.ledger()["keys"]
            assert all(ledger[k]["executions"] == 1 and
                       ledger[k]["replays"] == 0 for k in keys), ledger
            assert all("idempotency-key" not in e["headers"]
                       for e in posts(fake)), posts(fake)


def test_derived_key_of_a_custom_id_ending_in_digits_is_a_new_key():
    # custom_id is the key; "shot.2" must become "shot.2.2", not "shot.2"
    # again (the failed run replayed) nor "take.7" → "take.2" (another
    # job's key)
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake, max_attempts=2)})
        timeout = failed_run("model_timeout", "budget exceeded")
        enqueue(env, [run_job("shot.2", then=timeout),
                      run_job("take.7", then=timeout, prompt="other")])
        drain(env)
        sent = {}
        for cid in ("shot.2", "take.7"):
            j = the_job(env, cid)
            assert (j["state"], j["error_code"]) == \
                ("failed", "model_timeout"), j
            sent[cid] = [s["idempotency_key"]
                         for s in submissions(env, j["id"])]
        assert sent == {"shot.2": ["shot.2", "shot.2.2"],
                        "take.7": ["take.7", "take.7.2"]}, sent
        # two runs per job: no resubmission was a replay of the failed one
        assert fake.ledger()["executions"] == 4, fake.ledger()


def test_retry_of_a_failed_run_never_replays_a_cached_failure():
    # The provider caches a failed run under the key that created it:
    # after `sluicectl retry`, the derivation goes on (.3, .4), never back
    # to the job's own key or .2, which would only replay those failures.
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake, max_attempts=2)})
        enqueue(env, [run_job("rerun-1", then=failed_run(
            "internal_error", "Generic execution failure."))])
        drain(env)
        rc, out, err = env.ctl("retry", "rerun-1")
        assert rc == 0, (out, err)
        drain(env)
        j = the_job(env, "rerun-1")
        assert (j["state"], j["error_code"]) == ("failed", "internal_error"), j
        keys = ["rerun-1", "rerun-1.2", "rerun-1.3", "rerun-1.4"]
        assert [s["idempotency_key"] for s in
                submissions(env, j["id"])] == keys
        assert [e["body"]["idempotency_key"] for e in posts(fake)] == keys
        ledger = fake.ledger()["keys"]
        assert all(ledger[k]["executions"] == 1 and
                   ledger[k]["replays"] == 0 for k in keys), ledger


def test_safety_blocked_and_input_unreachable_runs_are_terminal():
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake)})
        cases = [
            ("unsafe-1", "safety_blocked",
             "The model refused the request on safety grounds."),
            ("nourl-1", "input_unreachable",
             "A URL input (image/video) couldn't be fetched."),
        ]
        enqueue(env, [run_job(cid, then=failed_run(code, msg))
                      for cid, code, msg in cases])
        drain(env)
        for cid, code, msg in cases:
            j = the_job(env, cid)
            assert j["state"] == "failed", j
            assert (j["error_class"], j["error_code"], j["error_message"],
                    j["http_status"]) == (code, code, msg, 200), j
            assert j["attempts"] == 1, j
            assert j["remote_id"] and j["remote_id"].startswith("run_"), j
            assert j["request_id"] and j["request_id"].startswith("req_"), j
            assert len(submissions(env, j["id"])) == 1, cid
            assert len(posts(fake, key=cid)) == 1, cid
            assert fake.ledger()["keys"][cid]["executions"] == 1
        summary = env.rows("SELECT error_class, error_code, count FROM "
                           "error_summary ORDER BY error_code")
        assert summary == [
            {"error_class": "input_unreachable",
             "error_code": "input_unreachable", "count": 1},
            {"error_class": "safety_blocked", "error_code": "safety_blocked",
             "count": 1}], summary


def test_idempotency_conflict_is_terminal():
    with Fake() as fake, Env() as env:
        # two providers on the same FLORA workspace: the same custom_id,
        # hence the same key, with two different bodies
        env.write_config({"flora-a": flora(fake), "flora-b": flora(fake),
                          "flora": flora(fake)})
        scripted = {"error": {
            "code": "idempotency_conflict",
            "message": "This idempotency_key was used with a different "
                       "request body."}}
        enqueue(env, [
            {"custom_id": "dup", "url": "/assets", "provider": "flora-a",
             "body": {"name": "first"}},
            {"custom_id": "dup", "url": "/assets", "provider": "flora-b",
             "body": {"name": "second"}},
            {"custom_id": "scripted", "url": "/assets", "provider": "flora",
             "body": {"name": "x", "_fake": {"script": [
                 {"status": 422, "body": scripted}, {"status": 200}]}}},
        ])
        drain(env)
        dup = env.rows("SELECT * FROM jobs WHERE custom_id = 'dup' "
                       "ORDER BY state DESC")
        assert [r["state"] for r in dup] == ["succeeded", "failed"], dup
        bad = dup[1]
        assert (bad["http_status"], bad["error_class"], bad["error_code"]) \
            == (422, "idempotency_conflict", "idempotency_conflict"), bad
        assert bad["attempts"] == 1, bad
        assert bad["request_id"].startswith("req_"), bad
        assert fake.ledger()["conflicts"] == 1, fake.ledger()
        assert len(posts(fake, key="dup")) == 2, posts(fake, key="dup")
        j = the_job(env, "scripted")
        assert (j["state"], j["http_status"], j["error_class"],
                j["error_code"], j["error_message"]) == (
            "failed", 422, "idempotency_conflict", "idempotency_conflict",
            scripted["error"]["message"]), j
        assert len(posts(fake, key="scripted")) == 1


def _restart_during_waiting(sig):
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake, poll_interval="200ms")},
                         daemon={"shutdown_grace": "200ms"})
        enqueue(env, [run_job("long-1", polls=12,
                              then={"charged_cost": 1.5})])
        d = env.daemon()
        wait_for(lambda: the_job(env, "long-1")["state"] == "waiting", 20,
                 message="the run accepted")
        # at least one poll went out before the stop
        wait_for(lambda: polls_of(fake, "run_1"), 10, message="a poll")
        d.signal(sig)
        rc = d.wait(20)
        assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), \
            (rc, d.stderr_text())
        stopped = the_job(env, "long-1")
        # SIGTERM gives an in-flight poll back at once; after a crash the
        # row may still say running-under-lease only for a submission,
        # never for a poll
        assert stopped["state"] == "waiting", stopped
        assert stopped["remote_id"] == "run_1", stopped
        before = len(polls_of(fake, "run_1"))
        restart = int(time.time() * 1000)
        drain(env)
        j = the_job(env, "long-1")
        assert j["state"] == "succeeded", j
        assert j["cost"] == 1.5, j
        assert j["attempts"] == 1, j
        assert len(posts(fake, key="long-1")) == 1, posts(fake, key="long-1")
        ledger = fake.ledger()["keys"]["long-1"]
        assert ledger["requests"] == 1 and ledger["replays"] == 0, ledger
        after = [g for g in polls_of(fake, "run_1") if g["t_ms"] >= restart]
        assert after, "no poll after the restart"
        assert before + len(after) >= 13, (before, len(after))
        assert len(submissions(env, j["id"])) == 1


def test_restart_after_sigterm_resumes_polling_and_never_resubmits():
    _restart_during_waiting(signal.SIGTERM)


def test_restart_after_a_crash_resumes_polling_and_never_resubmits():
    _restart_during_waiting(signal.SIGKILL)


if __name__ == "__main__":
    run(globals())
