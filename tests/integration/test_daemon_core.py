"""The walking skeleton end to end: the real sluiced against the real fake
provider on loopback, asserting on database rows and the provider's ledger."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, run, wait_for, provider_conf, job_lines)


def provider(fake, prefix="generic", **kw):
    return provider_conf(fake, prefix, **{"concurrency_start": 16,
                                          "timeout": "5s", **kw})


jobs = job_lines


def test_thousand_jobs_succeed_with_one_execution_each():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "sk-test-1"})
        rc, out, err = env.enqueue_lines(jobs(1000), "--provider", "gen")
        assert rc == 0, err
        assert "1000 enqueued" in out, out
        rc, err = env.run_drain(timeout=120)
        assert rc == 0, err
        states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
        assert states == [{"state": "succeeded", "n": 1000}], states
        ledger = fake.ledger()
        assert ledger["executions"] == 1000, ledger["executions"]
        keys = ledger["keys"]
        assert len([k for k in keys if k]) == 1000
        assert all(v["executions"] == 1 for v in keys.values()), \
            [k for k, v in keys.items() if v["executions"] != 1][:5]
        # every request carried the configured bearer key
        log = fake.log()
        assert all(e["headers"].get("authorization") == "Bearer sk-test-1"
                   for e in log)
        attempts = env.rows("SELECT count(*) n FROM attempts")[0]["n"]
        assert attempts == 1000, attempts
        # the key never reaches the database or the log
        assert "sk-test-1" not in err
        with open(env.db_path, "rb") as f:
            assert b"sk-test-1" not in f.read()


def test_server_errors_retry_with_the_same_key_until_success():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "k"})
        script = [{"status": 500}, {"status": 502}, {"status": 503},
                  {"status": 200}]
        # four jobs: their 16 calls stay under the circuit breaker's
        # 20-call minimum (the breaker has its own tests in test_lane)
        rc, out, err = env.enqueue_lines(jobs(4, script=script),
                                         "--provider", "gen")
        assert rc == 0, err
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        rows = env.rows("SELECT id, state, attempts, idempotency_key "
                        "FROM jobs ORDER BY id")
        assert len(rows) == 4
        assert all(r["state"] == "succeeded" for r in rows), rows[:3]
        assert all(r["attempts"] == 4 for r in rows), rows[:3]
        for r in rows:
            sent = env.rows("SELECT attempt, idempotency_key, http_status, "
                            "error_class FROM attempts WHERE job_id = ? "
                            "ORDER BY attempt", r["id"])
            assert [a["http_status"] for a in sent] == [500, 502, 503, 200]
            assert [a["error_class"] for a in sent][:3] == \
                ["server_error", "server_error", "unavailable"]
            assert {a["idempotency_key"] for a in sent} == \
                {r["idempotency_key"]}
        by_key = fake.ledger()["keys"]
        assert all(by_key[r["idempotency_key"]]["executions"] == 1
                   for r in rows)
        assert all(by_key[r["idempotency_key"]]["requests"] == 4
                   for r in rows)


def test_terminal_error_is_not_retried_and_keeps_code_and_request_id():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "k"})
        script = [{"status": 400, "body": {"error": {
            "code": "input_validation_error", "message": "prompt: bad"}}}]
        env.enqueue_lines(jobs(3, script=script), "--provider", "gen")
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        rows = env.rows("SELECT state, attempts, http_status, error_class, "
                        "error_code, error_message, request_id FROM jobs")
        for r in rows:
            assert r["state"] == "failed"
            assert r["attempts"] == 1
            assert r["http_status"] == 400
            assert r["error_class"] == "invalid_request"
            assert r["error_code"] == "input_validation_error"
            assert r["error_message"] == "prompt: bad"
            assert r["request_id"].startswith("req_"), r
        assert fake.ledger()["requests"] == 3


def test_client_timeout_and_refused_connection_get_their_classes():
    with Fake() as fake, Env() as env:
        # a port that was just free: nothing listens there
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
        s.close()
        env.write_config(providers={
            "slow": provider(fake, timeout="300ms", max_attempts=2),
            "dead": provider(fake, max_attempts=2,
                             base_url=f"http://127.0.0.1:{dead_port}"),
        }, env={"GEN_KEY": "k"})
        # a scripted body is an answer that is not an execution: nothing
        # is stored for replay, so every attempt waits out the delay
        env.enqueue_lines(jobs(2, "slow", script=[{"status": 200,
                                                   "body": {"ok": True},
                                                   "delay_ms": 2000}]),
                          "--provider", "slow")
        env.enqueue_lines(jobs(2, "dead"), "--provider", "dead")
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        rows = env.rows("SELECT provider, state, attempts, error_class, "
                        "error_message, http_status FROM jobs")
        slow = [r for r in rows if r["provider"] == "slow"]
        dead = [r for r in rows if r["provider"] == "dead"]
        assert all(r["state"] == "failed" and r["error_class"] == "timeout"
                   and r["attempts"] == 2 for r in slow), slow
        assert all(r["state"] == "failed" and r["error_class"] == "network"
                   and r["attempts"] == 2 and r["error_message"]
                   for r in dead), dead
        n = env.rows("SELECT count(*) n FROM attempts")[0]["n"]
        assert n == 8, n


def test_sigterm_returns_running_jobs_to_queue_and_restart_finishes():
    with Fake("--latency-ms", "1500") as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         daemon={"shutdown_grace": "200ms"},
                         env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(40), "--provider", "gen")
        d = env.daemon()
        wait_for(lambda: env.rows("SELECT count(*) n FROM jobs WHERE "
                                  "state = 'running'")[0]["n"] == 16,
                 timeout=20)
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0, d.stderr_text()
        rows = env.rows("SELECT state, attempts, lease_until FROM jobs")
        assert not [r for r in rows if r["state"] == "running"], rows
        queued = [r for r in rows if r["state"] == "queued"]
        assert len(queued) == 40, rows
        # returned jobs are not charged an attempt
        assert all(r["attempts"] == 0 for r in queued), queued[:3]
        rc, err = env.run_drain(timeout=90)
        assert rc == 0, err
        states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
        assert states == [{"state": "succeeded", "n": 40}], states
        # an interrupted request may have executed at the provider; the
        # resend carried the same key, so it never executed twice
        assert all(v["executions"] <= 1
                   for v in fake.ledger()["keys"].values())


def test_reenqueue_of_the_same_file_adds_nothing():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "k"})
        lines = jobs(50)
        lines += [{"url": "/v1/images", "body": {"prompt": f"anon {i}"}}
                  for i in range(50)]
        rc, out, _ = env.enqueue_lines(lines, "--provider", "gen")
        assert "100 enqueued, 0 duplicates skipped" in out, out
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        rc, out, _ = env.enqueue_lines(lines, "--provider", "gen")
        assert rc == 0
        assert "0 enqueued, 100 duplicates skipped" in out, out
        rc, err = env.run_drain(timeout=60)
        assert rc == 0
        assert fake.ledger()["executions"] == 100


def test_bad_config_is_refused_naming_file_line_and_key():
    with Env() as env:
        cases = [
            ("[provider \"x\"]\ndialect = nope\nbase_url = http://a\n",
             ":2: dialect"),
            ("[daemon]\nshutdown_grace = 12x\n", ":2: shutdown_grace"),
            ("[provider \"x\"]\nbase_url = http://a\ntimeout = soon\n",
             ":3: timeout"),
            ("[daemon]\nfrobnicate = 1\n", ":2: frobnicate"),
        ]
        for text, want in cases:
            path = env.write_file("bad.conf", text)
            d = env.daemon("-c", path, config=False)
            assert d.wait(timeout=10) == 78, (text, d.stderr_text())
            assert "bad.conf" + want in d.stderr_text(), d.stderr_text()
            assert not os.path.exists(env.db_path)


def test_drain_exits_when_only_a_paused_provider_has_jobs():
    with Fake() as fake, Env() as env:
        # the default start of 4 requests in flight
        env.write_config(providers={"gen": provider(fake,
                                                     concurrency_start=4)},
                         env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(30, script=[{"status": 401, "body": {
            "error": {"code": "invalid_api_key", "message": "bad key"}}}]),
            "--provider", "gen")
        start = time.time()
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        assert time.time() - start < 30
        rows = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
        assert rows == [{"state": "queued", "n": 30}], rows
        # a dead key costs a handful of requests, not one per job
        assert fake.ledger()["requests"] <= 5, fake.ledger()["requests"]
        lane = env.rows("SELECT state, reason FROM providers "
                        "WHERE name = 'gen'")[0]
        assert lane["state"] == "paused", lane
        assert "invalid_api_key" in lane["reason"], lane


def test_403_about_the_key_pauses_and_holds_but_403_about_a_model_fails():
    with Fake() as fake, Env() as env:
        env.write_config(providers={
            "keyed": provider(fake, concurrency_start=2),
            "model": provider(fake, concurrency_start=2),
        }, env={"GEN_KEY": "k"})
        suspended = [{"status": 403, "body": {
            "error": "Access denied", "message": "Account suspended"}}]
        no_model = [{"status": 403, "body": {
            "error": "Access denied",
            "message": "Your API key does not have access to provider: "
                       "kling"}}]
        env.enqueue_lines(jobs(10, "keyed", script=suspended),
                          "--provider", "keyed")
        env.enqueue_lines(jobs(3, "model", script=no_model),
                          "--provider", "model")
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        keyed = env.rows("SELECT state, attempts FROM jobs "
                         "WHERE provider = 'keyed'")
        assert all(r["state"] == "queued" and r["attempts"] == 0
                   for r in keyed), keyed
        model = env.rows("SELECT state, error_class FROM jobs "
                         "WHERE provider = 'model'")
        assert all(r["state"] == "failed" and
                   r["error_class"] == "permission" for r in model), model
        lanes = {r["name"]: r for r in env.rows(
            "SELECT name, state, reason FROM providers")}
        assert lanes["keyed"]["state"] == "paused", lanes
        assert lanes["keyed"]["reason"].startswith("permission: Access denied"), \
            lanes
        assert lanes["model"]["state"] == "active", lanes


def test_waiting_runs_filling_every_slot_are_still_polled():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"flora": provider(
            fake, "flora", dialect="flora", concurrency_start=2,
            poll_interval="50ms", poll_interval_max="100ms")},
            env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(6, "run", script=[{"async": {"polls": 2}}]),
                          "--provider", "flora")
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        rows = env.rows("SELECT state, remote_id, cost FROM jobs")
        assert all(r["state"] == "succeeded" and r["remote_id"]
                   and r["cost"] == 0.04 for r in rows), rows


def test_check_validates_config_and_keys_without_creating_the_database():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "k"})
        d = env.daemon("--check")
        assert d.wait(timeout=10) == 0, d.stderr_text()
        assert not os.path.exists(env.db_path)
        env.write_config(providers={"gen": provider(
            fake, api_key_env="MISSING_KEY_VAR")}, env={})
        d = env.daemon("--check")
        assert d.wait(timeout=10) == 78
        assert "MISSING_KEY_VAR" in d.stderr_text(), d.stderr_text()


def test_waiting_runs_count_in_flight_after_restart_and_cancel():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"flora": provider(
            fake, "flora", dialect="flora", concurrency_start=4,
            poll_interval="100ms", poll_interval_max="200ms")},
            env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(3, "run", script=[{"async": {"polls": 100000}}]),
                          "--provider", "flora")

        def lane():
            rows = env.rows("SELECT in_flight FROM providers")
            return rows[0]["in_flight"] if rows else None

        d = env.daemon()
        wait_for(lambda: env.rows("SELECT count(*) n FROM jobs WHERE "
                                  "state = 'waiting'")[0]["n"] == 3,
                 timeout=20)
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0, d.stderr_text()
        # a new life: its lane learns of the runs from the database
        d = env.daemon()
        wait_for(lambda: lane() == 3, timeout=20)
        rc, out, err = env.ctl("cancel", "run-0")
        assert rc == 0, err
        wait_for(lambda: lane() == 2, timeout=20)
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0, d.stderr_text()
        assert env.rows("SELECT state FROM jobs WHERE custom_id = 'run-0'"
                        )[0]["state"] == "cancelled"


def test_a_poll_url_on_another_host_is_refused_without_sending_the_key():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"flora": provider(
            fake, "flora", dialect="flora", poll_interval="50ms",
            max_deferrals=3)}, env={"GEN_KEY": "sk-secret"})
        elsewhere = {"run_id": "run_x", "status": "pending",
                     "poll_url": "http://127.0.0.2:9/flora/runs/run_x"}
        same = {"run_id": "run_y", "status": "pending",
                "poll_url": fake.url.upper().replace("HTTP://", "http://")
                + "/flora/runs/run_y"}
        env.enqueue_lines(
            jobs(1, "far", script=[{"status": 200, "body": elsewhere}]) +
            jobs(1, "near", script=[{"status": 200, "body": same}]),
            "--provider", "flora")
        rc, err = env.run_drain(timeout=30)
        assert rc == 0, err
        far = env.rows("SELECT state, error_class, error_code FROM jobs "
                       "WHERE custom_id = 'far-0'")[0]
        assert far == {"state": "failed", "error_class": "protocol",
                       "error_code": "foreign_poll_url"}, far
        # the same host, spelled in capitals, is the same origin: polled,
        # and since the fake does not know run_y its answers are garbage:
        # failed polls are bounded (max_deferrals) instead of endless
        polls = [e for e in fake.log() if e["method"] == "GET"]
        assert {e["path"] for e in polls} == {"/flora/runs/run_y"}, polls
        assert len(polls) == 4, len(polls)
        near = env.rows("SELECT state, error_class FROM jobs "
                        "WHERE custom_id = 'near-0'")[0]
        assert near == {"state": "failed", "error_class": "protocol"}, near


def test_jobs_of_a_provider_the_config_no_longer_names_are_reported():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake),
                                    "gone": provider(fake)},
                         env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(3, "gone"), "--provider", "gone")
        env.enqueue_lines(jobs(2, "gen"), "--provider", "gen")
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "k"})
        rc, err = env.run_drain(timeout=30)
        assert rc == 0, err
        assert "3 unfinished jobs of provider gone" in err, err
        rows = env.rows("SELECT provider, state FROM jobs ORDER BY id")
        assert [r["state"] for r in rows if r["provider"] == "gone"] == \
            ["queued"] * 3
        assert [r["state"] for r in rows if r["provider"] == "gen"] == \
            ["succeeded"] * 2


if __name__ == "__main__":
    run([v for k, v in sorted(globals().items()) if k.startswith("test_")])
