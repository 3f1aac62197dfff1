"""Where requests go and what they carry, through the real binaries: the API
key goes only to the provider's current origin, whatever the database says
(a path or poll URL written by another config, plain sqlite3 or an older
base_url is data, not trust); nothing from a job breaks out of its header;
job URLs are joined the same way at enqueue and at send (scheme case, a
verbatim OpenAI Batch input line under a base_url ending in /v1).

A second fake provider stands in for the attacker's host: it must see no
request at all."""
import json
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, drain_ok, enqueue_ok, job_lines, provider_conf, run)

KEY = "sk-test-secret-of-gen"


def write_db(env, sql, *params):
    conn = sqlite3.connect(env.db_path, timeout=10)
    try:
        with conn:
            n = conn.execute(sql, params).rowcount
    finally:
        conn.close()
    assert n == 1, (sql, n)


def job(env, cid):
    rows = env.rows("SELECT * FROM jobs WHERE custom_id = ?", cid)
    assert len(rows) == 1, (cid, rows)
    return rows[0]


def assert_refused(env, cid, code):
    j = job(env, cid)
    assert (j["state"], j["error_class"], j["error_code"]) == \
        ("failed", "protocol" if code != "bad_header" else "invalid_request",
         code), j
    assert env.rows("SELECT * FROM attempts WHERE job_id = ?",
                    j["id"]) == [], "an attempt was recorded"


def test_absolute_path_written_into_the_database_never_gets_the_key():
    with Fake() as home, Fake() as evil, Env() as env:
        env.write_config({"gen": provider_conf(home, api_key=KEY)},
                         env={"GEN_KEY": KEY})
        enqueue_ok(env, job_lines(3), "--provider", "gen")
        # Anyone who can write the database points two jobs elsewhere, one
        # with the scheme in capitals (it must not pass for a path).
        write_db(env, "UPDATE jobs SET path = ? WHERE custom_id = 'job-0'",
                 evil.url + "/generic/steal")
        write_db(env, "UPDATE jobs SET path = ? WHERE custom_id = 'job-1'",
                 evil.url.replace("http://", "HTTP://") + "/generic/steal")
        drain_ok(env)
        assert evil.log() == [], evil.log()
        assert_refused(env, "job-0", "foreign_url")
        assert_refused(env, "job-1", "foreign_url")
        assert job(env, "job-2")["state"] == "succeeded"
        assert [r["path"] for r in home.log()] == ["/generic/v1/images"]


def test_changed_base_url_sends_nothing_to_the_old_host():
    with Fake() as old, Fake() as new, Env() as env:
        env.write_config({"gen": provider_conf(old)}, env={"GEN_KEY": KEY})
        # A full URL on the old host, outside base_url's path: stored whole.
        enqueue_ok(env, [{"custom_id": "abs", "url": old.url + "/other/x",
                          "body": {"prompt": "p"}}], "--provider", "gen")
        assert job(env, "abs")["path"] == old.url + "/other/x"
        env.write_config({"gen": provider_conf(new)}, env={"GEN_KEY": KEY})
        drain_ok(env)
        assert old.log() == [] and new.log() == [], (old.log(), new.log())
        assert_refused(env, "abs", "foreign_url")


def test_poll_url_rewritten_in_the_database_is_never_polled():
    with Fake() as home, Fake() as evil, Env() as env:
        env.write_config({"flora": {
            "dialect": "flora", "base_url": home.url + "/flora",
            "api_key": KEY, "poll_interval": "100ms", "timeout": "5s"}})
        enqueue_ok(env, [{"custom_id": "run", "url": "/runs",
                          "body": {"prompt": "p"}}], "--provider", "flora")
        write_db(env, "UPDATE jobs SET state = 'waiting', remote_id = 'r1', "
                 "poll_url = ?, waiting_since = 1 WHERE custom_id = 'run'",
                 evil.url + "/flora/runs/r1")
        drain_ok(env)
        assert evil.log() == [] and home.log() == [], evil.log()
        j = job(env, "run")
        assert (j["state"], j["error_class"], j["error_code"]) == \
            ("failed", "protocol", "foreign_url"), j


def test_custom_id_with_a_line_break_is_a_bad_line():
    with Env() as env:
        env.write_config({"gen": {"dialect": "generic", "auth": "none",
                                  "base_url": "http://127.0.0.1:9/g"}})
        rc, out, err = env.enqueue_lines(
            [{"custom_id": "ok", "url": "/x"},
             {"custom_id": "k\r\nX-Injected: yes", "url": "/x"}],
            "--provider", "gen")
        assert rc == 65, (rc, out, err)
        assert "jobs-1.jsonl:2: custom_id: byte 2 is 0x0d" in err, err
        assert not os.path.exists(env.db_path) or \
            env.rows("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 0


def test_key_with_a_line_break_in_the_database_is_refused_unsent():
    with Fake() as home, Env() as env:
        env.write_config({"gen": provider_conf(home)}, env={"GEN_KEY": KEY})
        enqueue_ok(env, job_lines(2), "--provider", "gen")
        smuggled = ("k\r\nX-Injected: yes\r\n\r\nGET /generic/smuggled "
                    "HTTP/1.1\r\nHost: x")
        write_db(env, "UPDATE jobs SET idempotency_key = ? "
                 "WHERE custom_id = 'job-0'", smuggled)
        drain_ok(env)
        log = home.log()
        assert [r["path"] for r in log] == ["/generic/v1/images"], log
        assert all("x-injected" not in r["headers"] for r in log), log
        assert_refused(env, "job-0", "bad_header")
        assert job(env, "job-1")["state"] == "succeeded"


def test_openai_batch_input_line_goes_to_the_right_path():
    # Verbatim from OpenAI's Batch API guide; FlowAPI's base_url ends in /v1.
    line = ('{"custom_id": "request-1", "method": "POST", "url": '
            '"/v1/chat/completions", "body": {"model": "gpt-3.5-turbo-0125", '
            '"messages": [{"role": "system", "content": "You are a helpful '
            'assistant."},{"role": "user", "content": "Hello world!"}],'
            '"max_tokens": 1000}}')
    with Fake() as fake, Env() as env:
        # base_url as FlowAPI's seed shows it: the origin, then /v1
        env.write_config({"flowapi": {"dialect": "flowapi",
                                      "base_url": fake.url + "/v1",
                                      "timeout": "5s"}})
        enqueue_ok(env, [line], "--provider", "flowapi")
        drain_ok(env)
        log = fake.log()
        assert [r["path"] for r in log] == ["/v1/chat/completions"], log
        assert log[0]["headers"]["idempotency-key"] == "request-1"
        assert log[0]["body"]["messages"][1]["content"] == "Hello world!"
        assert job(env, "request-1")["state"] == "succeeded"


def test_full_url_in_capitals_outside_base_path_is_not_taken_for_a_path():
    with Fake() as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake)}, env={"GEN_KEY": KEY})
        url = fake.url.replace("http://", "HTTP://") + "/generic-v2/images"
        enqueue_ok(env, [{"custom_id": "caps", "url": url,
                          "body": {"prompt": "p"}}], "--provider", "gen")
        drain_ok(env)
        assert [r["path"] for r in fake.log()] == ["/generic-v2/images"], \
            fake.log()
        assert job(env, "caps")["state"] == "succeeded"


if __name__ == "__main__":
    run(globals())
