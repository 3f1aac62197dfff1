"""The fake provider alone, over loopback with urllib: the behaviours the
daemon's integration tests rely on. If the fake lies, every other
integration test proves nothing, so it gets its own."""

import http.client as httpclient
import json
import signal
import threading
import time
import urllib.error

from harness import Fake, http, http_json, run, wait_for


def script(*steps, **extra):
    body = {"prompt": "a cat"}
    body.update(extra)
    body["_fake"] = {"script": list(steps)}
    return body


def test_prints_listening_line_and_exits_0_on_sigterm():
    fake = Fake("--quiet").start()
    try:
        wait_for(lambda: "listening" in fake.stdout_text(), 10)
        assert fake.stdout_text().strip() == \
            "fake_provider listening on 127.0.0.1:%d" % fake.port
        fake.proc.send_signal(signal.SIGTERM)
        assert fake.proc.wait(timeout=10) == 0
    finally:
        fake.stop()
        fake.dir.cleanup()


def test_script_steps_followed_in_order_then_last_repeats():
    with Fake("--quiet") as fake:
        body = script({"status": 500},
                      {"status": 503, "headers": {"Retry-After": "7"}},
                      {"status": 400, "body": {"custom": True}})
        key = {"Idempotency-Key": "k-script"}
        got = [http_json("POST", fake.url + "/openai/v1/x", body, key)
               for _ in range(4)]
        assert [g[0] for g in got] == [500, 503, 400, 400]
        assert got[0][2]["error"]["type"] == "server_error"
        assert got[1][1]["retry-after"] == "7"
        assert got[2][2] == {"custom": True}
        entry = fake.ledger()["keys"]["k-script"]
        assert entry == {"requests": 4, "executions": 0, "replays": 0}


def test_success_executes_once_and_repeated_key_is_replayed():
    with Fake("--quiet") as fake:
        body = script({"status": 500}, {"status": 200})
        key = {"Idempotency-Key": "k-once"}
        s1 = http("POST", fake.url + "/flora/v1/runs", body, key)
        s2 = http("POST", fake.url + "/flora/v1/runs", body, key)
        s3 = http("POST", fake.url + "/flora/v1/runs", body, key)
        assert [s1[0], s2[0], s3[0]] == [500, 200, 200]
        assert "idempotent-replayed" not in s2[1]
        assert s3[1]["idempotent-replayed"] == "true"
        assert s3[2] == s2[2]
        gen = json.loads(s2[2])
        assert gen["object"] == "generation" and gen["key"] == "k-once"
        led = fake.ledger()
        assert led["keys"]["k-once"] == \
            {"requests": 3, "executions": 1, "replays": 1}
        assert led["executions"] == 1


def test_body_key_and_header_key_are_one_key():
    with Fake("--quiet") as fake:
        s1, _, b1 = http("POST", fake.url + "/flora/v1/runs",
                         {"prompt": "p", "idempotency_key": "k-body"})
        s2, h2, b2 = http("POST", fake.url + "/flora/v1/runs",
                          {"prompt": "p"}, {"Idempotency-Key": "k-body"})
        assert (s1, s2) == (200, 200)
        assert h2["idempotent-replayed"] == "true" and b1 == b2
        assert fake.ledger()["keys"]["k-body"]["executions"] == 1


def test_requests_without_key_execute_every_time():
    with Fake("--quiet") as fake:
        for _ in range(3):
            assert http("POST", fake.url + "/x", {"p": 1})[0] == 200
        assert fake.ledger()["keys"][""] == \
            {"requests": 3, "executions": 3, "replays": 0}


def test_same_key_other_body_is_idempotency_conflict_in_dialect():
    with Fake("--quiet") as fake:
        url = fake.url + "/flora/v1/runs"
        assert http("POST", url, {"prompt": "a", "idempotency_key": "k"})[0] \
            == 200
        status, hdrs, body = http_json(
            "POST", url, {"prompt": "b", "idempotency_key": "k"})
        assert status == 422
        assert body["error"]["code"] == "idempotency_conflict"
        assert hdrs["request-id"].startswith("req_")
        status, _, body = http_json("POST", fake.url + "/openai/v1/x",
                                    {"p": 1}, {"Idempotency-Key": "o"})
        status, _, body = http_json("POST", fake.url + "/openai/v1/x",
                                    {"p": 2}, {"Idempotency-Key": "o"})
        assert status == 422 and body["error"]["code"] == \
            "idempotency_conflict"
        assert fake.ledger()["executions"] == 2


def test_error_bodies_take_each_dialect_shape():
    with Fake("--quiet") as fake:
        def err(prefix, status):
            return http_json("POST", fake.url + prefix + "/x",
                             script({"status": status}))

        s, h, b = err("/flora", 400)
        assert b["error"]["code"] == "input_validation_error"
        assert b["error"]["fields"][0]["field"] == "prompt"
        assert "request-id" in h and "x-request-id" not in h
        s, h, b = err("/openai", 429)
        assert b["error"]["type"] == "rate_limit_error"
        assert h["x-request-id"].startswith("req_")
        s, h, b = err("/lamatic", 500)
        assert b["errors"][0]["extensions"]["code"] == \
            "INTERNAL_SERVER_ERROR"
        s, h, b = err("/flymyai", 504)
        assert b["detail"][0]["type"] == "generation_timeout"
        assert b["detail"][0]["loc"] == ["body"]
        assert h["x-flymyai-retryable"] == "true"
        s, h, b = err("/flymyai", 422)
        assert h["x-flymyai-retryable"] == "false"
        s, h, b = err("/firemoon", 429)
        assert b["error"] == "Rate limit exceeded" and "resetAt" in b
        s, h, b = err("/problem", 404)
        assert h["content-type"] == "application/problem+json"
        assert b["status"] == 404 and b["title"] == "Not Found"
        s, h, b = err("/elsewhere", 503)
        assert s == 503 and b["status"] == 503


def test_graphql_success_is_wrapped_in_data():
    with Fake("--quiet") as fake:
        s, _, b = http_json("POST", fake.url + "/lamatic/graphql",
                            {"query": "{ x }"})
        assert s == 200 and b["data"]["object"] == "generation"


def test_keyless_scripts_follow_their_own_body():
    with Fake("--quiet") as fake:
        a = script({"status": 500}, {"status": 200}, n=1)
        b = script({"status": 502}, {"status": 201}, n=2)
        got = [http("POST", fake.url + "/lamatic/x", body)[0]
               for body in (a, b, a, b)]
        assert got == [500, 502, 200, 201]


def test_requests_beyond_rate_get_429_with_retry_after():
    # 0.5/s with a bucket of 1: the second request within 2 s is throttled
    with Fake("--quiet", "--rate", "0.5") as fake:
        got = [http("POST", fake.url + "/firemoon/x", {"i": i},
                    {"Idempotency-Key": "r%d" % i}) for i in range(4)]
        statuses = [g[0] for g in got]
        # on a loaded machine a later request may find a new token: the
        # first two are certain, the counts must match whatever came
        assert statuses[:2] == [200, 429], statuses
        h = got[1][1]
        assert int(h["retry-after"]) >= 1
        assert h["x-ratelimit-remaining"] == "0"
        assert int(h["x-ratelimit-reset"]) >= int(time.time())
        assert "resetAt" in json.loads(got[1][2])
        led = fake.ledger()
        assert led["throttled"] == statuses.count(429)
        assert led["executions"] == statuses.count(200)
        # throttled requests never reach the ledger of their key
        assert "r1" not in led["keys"]
        assert [e["status"] for e in fake.log()] == statuses


def test_requests_beyond_max_concurrent_get_429():
    with Fake("--quiet", "--max-concurrent", "1") as fake:
        slow = script({"status": 200, "delay_ms": 3000})
        result = {}

        def first():
            result["first"] = http("POST", fake.url + "/x", slow)[0]

        t = threading.Thread(target=first)
        t.start()
        wait_for(lambda: fake.ledger()["in_flight"] == 1, 10)
        status, hdrs, _ = http("POST", fake.url + "/x", {"other": 1})
        assert status == 429 and hdrs["retry-after"] == "1"
        t.join(timeout=30)
        assert result["first"] == 200


def test_fixed_window_answers_with_remaining_and_reset_then_429():
    # a window of 3 per 60 s, aligned to the minute: at most one boundary
    # can fall inside the test, so retry once if it did
    for _ in range(2):
        with Fake("--quiet", "--window-limit", "3",
                  "--window-ms", "60000") as fake:
            got = [http("POST", fake.url + "/openai/x", {"i": i},
                        {"Idempotency-Key": "w%d" % i}) for i in range(4)]
            resets = {g[1]["x-ratelimit-reset"] for g in got}
            if len(resets) == 1:
                break
    assert [g[0] for g in got] == [200, 200, 200, 429]
    assert [g[1]["x-ratelimit-remaining"] for g in got] == \
        ["2", "1", "0", "0"]
    assert got[0][1]["ratelimit-policy"] == "3;w=60"
    reset = int(got[3][1]["x-ratelimit-reset"])
    assert reset % 60 == 0 and 0 < reset - time.time() <= 60
    assert int(got[3][1]["retry-after"]) >= 1


def test_tokens_per_minute_charge_usage_and_refuse_beyond():
    # 600 tokens a minute; each request: 44 bytes / 4 + 3/4 of 200
    body = {"max_tokens": 200, "prompt": "0123456789abcdefghij"}
    cost = len(json.dumps(body)) // 4 + 150
    with Fake("--quiet", "--token-limit", "600") as fake:
        got = [http("POST", fake.url + "/openai/x", body,
                    {"Idempotency-Key": "t%d" % i}) for i in range(4)]
        assert [g[0] for g in got] == [200, 200, 200, 429]
        usage = json.loads(got[0][2])["usage"]
        assert usage["total_tokens"] == cost
        assert usage["prompt_tokens"] + usage["completion_tokens"] == cost
        h = got[2][1]
        assert h["x-ratelimit-limit-tokens"] == "600"
        left = int(h["x-ratelimit-remaining-tokens"])
        assert 600 - 3 * cost <= left < 600 - 3 * cost + 5
        assert h["x-ratelimit-reset-tokens"].endswith("s")
        assert int(got[3][1]["retry-after"]) >= 1
        log = fake.log()
        assert [e.get("tokens") for e in log] == [cost] * 3 + [None]


def test_rate_headers_limit_only_or_silent():
    for mode, want in (("limit", {"x-ratelimit-limit"}), ("none", set())):
        with Fake("--quiet", "--rate", "0.5", "--rate-headers", mode) as fake:
            got = [http("POST", fake.url + "/openai/x", {"i": i})
                   for i in range(2)]
            assert got[1][0] == 429
            names = {k for k in got[1][1] if k.startswith("x-ratelimit")}
            assert names == want, (mode, names)
            assert int(got[1][1]["retry-after"]) >= 1


def test_concurrency_slot_is_free_when_its_answer_arrives():
    # one slot: a client that sends the moment it reads an answer is never
    # refused for that slot
    with Fake("--quiet", "--max-concurrent", "1", "--latency-ms", "5") as fake:
        got = [http("POST", fake.url + "/openai/x", {"i": i})[0]
               for i in range(50)]
        assert got == [200] * 50


def test_reset_step_closes_the_connection_without_answer():
    with Fake("--quiet") as fake:
        body = script({"reset": True}, {"status": 200})
        key = {"Idempotency-Key": "k-reset"}
        try:
            http("POST", fake.url + "/flora/x", body, key)
        except (httpclient.HTTPException, urllib.error.URLError,
                ConnectionError) as e:
            assert "200" not in str(e)
        else:
            raise AssertionError("a reset step sent an answer")
        assert http("POST", fake.url + "/flora/x", body, key)[0] == 200
        assert [e["status"] for e in fake.log()] == [0, 200]
        assert fake.ledger()["keys"]["k-reset"]["executions"] == 1


def test_truncate_step_sends_less_than_content_length():
    with Fake("--quiet") as fake:
        body = script({"status": 200, "body": {"data": "x" * 100},
                       "truncate": True})
        conn = httpclient.HTTPConnection("127.0.0.1", fake.port,
                                          timeout=10)
        conn.request("POST", "/x", json.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        declared = int(resp.getheader("Content-Length"))
        try:
            got = resp.read()
            raise AssertionError("read %d of %d bytes without error"
                                 % (len(got), declared))
        except httpclient.IncompleteRead as e:
            assert len(e.partial) < declared
        conn.close()


def test_async_run_polls_then_completes():
    with Fake("--quiet") as fake:
        body = script({"async": {"polls": 2}})
        s, _, run_ = http_json("POST", fake.url + "/flora/v1/runs", body,
                               {"Idempotency-Key": "k-run"})
        assert s == 200 and run_["status"] == "pending"
        assert run_["poll_url"] == \
            "%s/flora/runs/%s" % (fake.url, run_["run_id"])
        states = [http_json("GET", run_["poll_url"])[2] for _ in range(3)]
        assert [p["status"] for p in states] == \
            ["running", "running", "completed"]
        assert states[2]["charged_cost"] == 0.04
        assert states[2]["outputs"][0]["type"] == "image"
        # the create was the execution; a resubmission replays the run
        s, h, again = http_json("POST", fake.url + "/flora/v1/runs", body,
                                {"Idempotency-Key": "k-run"})
        assert again["run_id"] == run_["run_id"]
        assert h["idempotent-replayed"] == "true"
        assert fake.ledger()["keys"]["k-run"]["executions"] == 1


def test_async_run_can_fail_with_error_code():
    with Fake("--quiet") as fake:
        body = script({"async": {"polls": 0, "then": {
            "run_status": "failed", "error_code": "model_timeout",
            "error_message": "over the 60s budget"}}})
        _, _, run_ = http_json("POST", fake.url + "/flora/v1/runs", body)
        _, _, done = http_json("GET", run_["poll_url"])
        assert done == {"run_id": run_["run_id"], "status": "failed",
                        "error_code": "model_timeout",
                        "error_message": "over the 60s budget"}
        s, _, b = http_json("GET", fake.url + "/flora/runs/run_999")
        assert s == 404 and b["error"]["code"] == "not_found"


def test_log_records_each_request_in_arrival_order():
    with Fake("--quiet") as fake:
        http("POST", fake.url + "/flora/a", {"n": 1},
             {"Idempotency-Key": "k1", "X-Custom": "v"})
        http("GET", fake.url + "/openai/b")
        log = fake.log()
        assert [(e["method"], e["path"], e["key"], e["status"])
                for e in log] == [("POST", "/flora/a", "k1", 200),
                                  ("GET", "/openai/b", "", 200)]
        assert log[0]["headers"]["x-custom"] == "v"
        assert log[0]["headers"]["idempotency-key"] == "k1"
        assert log[0]["body"] == {"n": 1} and log[1]["body"] is None
        assert log[0]["t_ms"] <= log[1]["t_ms"]
        assert log[0]["duration_ms"] >= 0
        # control endpoints are neither logged nor counted
        assert fake.ledger()["requests"] == 2


def test_reset_clears_ledger_and_log():
    with Fake("--quiet") as fake:
        http("POST", fake.url + "/x", {"a": 1}, {"Idempotency-Key": "z"})
        fake.reset()
        assert fake.log() == []
        led = fake.ledger()
        assert led["keys"] == {} and led["requests"] == 0
        # the key is forgotten: it executes again
        http("POST", fake.url + "/x", {"a": 1}, {"Idempotency-Key": "z"})
        assert fake.ledger()["keys"]["z"]["executions"] == 1


def test_config_changes_capacity_at_runtime():
    with Fake("--quiet") as fake:
        assert http("POST", fake.url + "/x", {"i": 0})[0] == 200
        cfg = fake.config(rate=0.5)
        assert cfg["rate"] == 0.5 and cfg["burst"] == 1
        got = [http("POST", fake.url + "/x", {"i": i})[0] for i in (1, 2)]
        assert got == [200, 429]
        fake.config(rate=0, error_rate=1)
        assert http("POST", fake.url + "/x", {"i": 3})[0] in (500, 503, 429)
        status, _, _ = http("POST", fake.url + "/_config", {"nope": 1})
        assert status == 400


def test_error_rate_answers_from_the_mix_without_executing():
    with Fake("--quiet", "--error-rate", "1", "--error-mix", "502",
              "--seed", "7") as fake:
        got = [http("POST", fake.url + "/openai/x", {"i": i})[0]
               for i in range(5)]
        assert got == [502] * 5
        assert fake.ledger()["executions"] == 0


def test_latency_delays_answers():
    with Fake("--quiet", "--latency-ms", "300") as fake:
        start = time.monotonic()
        assert http("POST", fake.url + "/x", {})[0] == 200
        assert time.monotonic() - start >= 0.3
        assert fake.log()[0]["duration_ms"] >= 300


def test_many_concurrent_slow_requests_are_served():
    with Fake("--quiet", "--latency-ms", "500") as fake:
        results = []
        lock = threading.Lock()

        def one(i):
            s = http("POST", fake.url + "/x", {"i": i})[0]
            with lock:
                results.append(s)

        threads = [threading.Thread(target=one, args=(i,))
                   for i in range(200)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert results == [200] * 200
        # concurrent, not one after the other (200 × 0.5 s = 100 s)
        assert time.monotonic() - start < 20


if __name__ == "__main__":
    run(globals())
