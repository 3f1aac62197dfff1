#!/usr/bin/env python3
"""What an operator does to a running sluiced: SIGHUP with a changed and
with a broken config, SIGTERM with requests in flight, a second daemon on
the same database, a write lock held from sqlite3. Every test asserts on
the database rows and the fake provider's ledger and log."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    SLUICECTL, Env, Fake, run, wait_for, provider_conf, job_lines)


provider = provider_conf
jobs = job_lines


def count(env, where="1", *params):
    return env.rows("SELECT count(*) n FROM jobs WHERE " + where,
                    *params)[0]["n"]


def states(env, provider_name=None):
    where = "WHERE provider = ?" if provider_name else ""
    params = (provider_name,) if provider_name else ()
    rows = env.rows("SELECT state, count(*) n FROM jobs %s GROUP BY state "
                    "ORDER BY state" % where, *params)
    return {r["state"]: r["n"] for r in rows}


def requests_to(fake, prefix):
    return [e for e in fake.log() if e["path"].startswith("/" + prefix + "/")]


def ctl_with(config_path, env, *args):
    """sluicectl with a config other than the daemon's."""
    r = subprocess.run([SLUICECTL, "-c", config_path] + list(args),
                       env=env.env, capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stdout, r.stderr


def stop(d, timeout=20):
    d.signal(signal.SIGTERM)
    rc = d.wait(timeout=timeout)
    assert rc == 0, d.stderr_text()[-3000:]


# --- SIGHUP ----------------------------------------------------------------


def test_sighup_adds_a_provider_whose_queued_jobs_then_run():
    with Fake("--quiet") as fake, Env() as env:
        slow = [{"status": 200, "delay_ms": 1500}]
        both = {"a": provider(fake, "ga"), "b": provider(fake, "gb")}
        env.write_config(providers=both, env={"GEN_KEY": "k"})
        assert env.enqueue_lines(jobs(10, "a") + jobs(4, "a-slow", slow),
                                 "--provider", "a")[0] == 0
        assert env.enqueue_lines(jobs(10, "b"), "--provider", "b")[0] == 0
        env.write_config(providers={"a": both["a"]})
        d = env.daemon()
        wait_for(lambda: count(env, "provider = 'a' AND state = "
                                    "'succeeded'") == 10, 20,
                 message="a's fast jobs done")
        wait_for(lambda: count(env, "custom_id LIKE 'a-slow-%' AND state = "
                                    "'running'") == 4, 10,
                 message="a's slow jobs in flight")
        # b is not configured: its jobs wait, nothing is sent for them
        assert states(env, "b") == {"queued": 10}, states(env, "b")
        assert requests_to(fake, "gb") == []
        env.write_config(providers=both)
        d.signal(signal.SIGHUP)
        wait_for(lambda: states(env, "b") == {"succeeded": 10}, 20,
                 message="b's jobs succeeded after SIGHUP")
        wait_for(lambda: states(env, "a") == {"succeeded": 14}, 20,
                 message="a's slow jobs finished across the reload")
        assert "reload" in d.stderr_text()
        assert len(requests_to(fake, "gb")) == 10
        # the reload dropped nothing in flight: one request per slow job
        keys = fake.ledger()["keys"]
        slow_keys = [r["idempotency_key"] for r in env.rows(
            "SELECT idempotency_key FROM jobs WHERE custom_id LIKE "
            "'a-slow-%'")]
        assert [keys[k]["requests"] for k in slow_keys] == [1] * 4, \
            [keys[k] for k in slow_keys]
        assert env.rows("SELECT count(*) n FROM attempts")[0]["n"] == 24
        names = {r["name"] for r in env.rows("SELECT name FROM providers")}
        assert {"a", "b"} <= names, names
        stop(d)


def test_sighup_changes_the_concurrency_limit():
    with Fake("--latency-ms", "400", "--quiet") as fake, Env() as env:
        env.write_config(providers={"gen": provider(
            fake, concurrency_start=2, concurrency_max=2)},
            env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(80), "--provider", "gen")
        d = env.daemon()
        wait_for(lambda: count(env, "state = 'running'") == 2, 10)
        at_provider, running = [], []
        for _ in range(10):
            running.append(count(env, "state = 'running'"))
            at_provider.append(fake.ledger()["in_flight"])
            time.sleep(0.1)
        assert max(at_provider) == 2, at_provider
        # The rows lag the requests by a group commit: a job whose answer
        # is buffered still reads running beside the one claimed in its
        # slot, so up to twice the limit.
        assert 2 <= max(running) <= 4, running
        env.write_config(providers={"gen": provider(
            fake, concurrency_start=8, concurrency_max=8)})
        d.signal(signal.SIGHUP)
        wait_for(lambda: fake.ledger()["in_flight"] == 8, 10,
                 message="8 requests in flight at the provider")
        wait_for(lambda: env.rows("SELECT concurrency_limit FROM providers "
                                  "WHERE name = 'gen'")[0]
                 ["concurrency_limit"] == 8, 5,
                 message="providers.concurrency_limit = 8")
        peak = 0
        for _ in range(10):
            peak = max(peak, fake.ledger()["in_flight"])
            time.sleep(0.1)
        assert peak == 8, peak
        wait_for(lambda: states(env) == {"succeeded": 80}, 30)
        assert fake.ledger()["executions"] == 80
        stop(d)


def test_sighup_with_a_broken_config_keeps_the_old_one_running():
    with Fake("--quiet") as fake, Env() as env:
        good = env.write_config(providers={"gen": provider(fake)},
                                env={"GEN_KEY": "k"})
        with open(good) as f:
            good_text = f.read()
        good_copy = env.write_file("good.conf", good_text)
        env.enqueue_lines(jobs(5, "first"), "--provider", "gen")
        d = env.daemon()
        wait_for(lambda: states(env) == {"succeeded": 5}, 20)

        broken = [
            # a syntax error: the file itself is refused
            (good_text + '\n[provider "new"]\ndialect = nope\n'
             'base_url = http://127.0.0.1:9\n', "dialect"),
            # valid syntax, but the new provider's key is missing
            (good_text + '\n[provider "new"]\ndialect = generic\n'
             'base_url = http://127.0.0.1:9\n'
             'api_key_env = SLUICE_TEST_MISSING_KEY\n',
             "SLUICE_TEST_MISSING_KEY"),
        ]
        for round_no, (text, named) in enumerate(broken):
            before = d.stderr_text()
            env.write_file("sluice.conf", text)
            d.signal(signal.SIGHUP)
            wait_for(lambda: "refused" in d.stderr_text()[len(before):], 10,
                     message="a refused reload in the log")
            new_log = d.stderr_text()[len(before):]
            assert named in new_log, new_log
            assert d.running(), d.stderr_text()[-2000:]
            # the old provider keeps working, the new one does not exist
            prefix = "after-%d" % round_no
            rc, _, err = ctl_with(good_copy, env, "enqueue", "--provider",
                                  "gen", env.write_file(
                                      prefix + ".jsonl", "".join(
                                          '{"custom_id":"%s-%d","url":"/x",'
                                          '"body":{"p":%d}}\n'
                                          % (prefix, i, i)
                                          for i in range(5))))
            assert rc == 0, err
            wait_for(lambda: count(env, "custom_id LIKE ? AND state = "
                                        "'succeeded'", prefix + "-%") == 5,
                     20, message="old provider still serving")
            names = [r["name"] for r in env.rows("SELECT name FROM "
                                                 "providers")]
            assert "new" not in names, names
        assert states(env) == {"succeeded": 15}
        env.write_file("sluice.conf", good_text)
        stop(d)


# --- SIGTERM ---------------------------------------------------------------


def test_sigterm_lets_in_flight_requests_finish_within_grace():
    with Fake("--latency-ms", "2000", "--quiet") as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         daemon={"shutdown_grace": "5s"},
                         env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(10), "--provider", "gen")
        d = env.daemon()
        wait_for(lambda: fake.ledger()["in_flight"] == 4, 10,
                 message="4 requests in flight")
        t0 = time.monotonic()
        stop(d, timeout=15)
        took = time.monotonic() - t0
        # it waited for the answers (about 2 s), not for the whole grace
        assert 0.5 < took < 4.5, took
        rows = env.rows("SELECT state, attempts, lease_until FROM jobs")
        done = [r for r in rows if r["state"] == "succeeded"]
        rest = [r for r in rows if r["state"] != "succeeded"]
        assert len(done) == 4 and all(r["attempts"] == 1 for r in done), rows
        assert all(r["state"] == "queued" and r["attempts"] == 0
                   and r["lease_until"] is None for r in rest), rest
        assert fake.ledger()["executions"] == 4
        assert env.rows("SELECT count(*) n FROM attempts WHERE "
                        "http_status = 200")[0]["n"] == 4


def test_sigterm_after_short_grace_returns_in_flight_uncharged():
    with Fake("--latency-ms", "4000", "--quiet") as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         daemon={"shutdown_grace": "200ms"},
                         env={"GEN_KEY": "k"})
        env.enqueue_lines(jobs(10), "--provider", "gen")
        d = env.daemon()
        wait_for(lambda: fake.ledger()["in_flight"] == 4, 10,
                 message="4 requests in flight")
        t0 = time.monotonic()
        stop(d, timeout=15)
        took = time.monotonic() - t0
        assert took < 2.5, took
        rows = env.rows("SELECT state, attempts, lease_until, lease_owner "
                        "FROM jobs")
        assert all(r["state"] == "queued" and r["attempts"] == 0
                   and r["lease_until"] is None and r["lease_owner"] is None
                   for r in rows), rows
        # the next run sends the same keys: the provider, which may have
        # run the abandoned requests, runs each key at most once
        fake.config(latency_ms=0)
        rc, err = env.run_drain(timeout=60)
        assert rc == 0, err
        assert states(env) == {"succeeded": 10}
        assert all(r["attempts"] == 1 for r in env.rows(
            "SELECT attempts FROM jobs")), "a returned job was charged"
        by_key = fake.ledger()["keys"]
        assert all(v["executions"] == 1 for k, v in by_key.items() if k), \
            by_key


# --- two daemons, one database ---------------------------------------------


SUBMIT_RE = re.compile(r"job (\d+): \S+ POST submit")


def submitted(log_text):
    """Job ids a daemon's debug log says it sent."""
    return {int(m.group(1)) for m in SUBMIT_RE.finditer(log_text)}


def test_two_daemons_on_one_database_claim_each_job_once():
    n = 2000
    with Fake("--latency-ms", "5", "--jitter-ms", "10", "--quiet") as fake, \
            Env() as env:
        env.write_config(providers={"gen": provider(fake,
                                                    concurrency_start=16)},
                         env={"GEN_KEY": "k"})
        assert env.enqueue_lines(jobs(n), "--provider", "gen")[0] == 0
        a = env.daemon("--drain", "-v")
        b = env.daemon("--drain", "-v")
        assert a.wait(timeout=90) == 0, a.stderr_text()[-3000:]
        assert b.wait(timeout=90) == 0, b.stderr_text()[-3000:]
        assert states(env) == {"succeeded": n}, states(env)
        per_job = env.rows("SELECT j.id, count(a.job_id) n FROM jobs j "
                           "LEFT JOIN attempts a ON a.job_id = j.id "
                           "GROUP BY j.id HAVING n <> 1")
        assert per_job == [], per_job[:5]
        assert all(r["attempts"] == 1
                   for r in env.rows("SELECT attempts FROM jobs"))
        ledger = fake.ledger()
        keys = {k: v for k, v in ledger["keys"].items() if k}
        assert len(keys) == n
        bad = {k: v for k, v in keys.items()
               if v["executions"] != 1 or v["requests"] != 1}
        assert not bad, list(bad.items())[:5]
        # each daemon's own submissions (debug lines): both took part and
        # no job went out from both
        sub_a = submitted(a.stderr_text())
        sub_b = submitted(b.stderr_text())
        assert sub_a and sub_b, (len(sub_a), len(sub_b))
        assert not (sub_a & sub_b), sorted(sub_a & sub_b)[:5]
        assert len(sub_a) + len(sub_b) == n, (len(sub_a), len(sub_b))
        assert ledger["requests"] == n


# --- a held write lock -----------------------------------------------------


def test_write_lock_held_for_seconds_loses_no_outcome():
    n = 600
    with Fake("--latency-ms", "40", "--jitter-ms", "20", "--quiet") as fake, \
            Env() as env:
        env.write_config(providers={"gen": provider(fake,
                                                    concurrency_start=8)},
                         env={"GEN_KEY": "k"})
        assert env.enqueue_lines(jobs(n), "--provider", "gen")[0] == 0
        d = env.daemon()
        wait_for(lambda: count(env, "state = 'succeeded'") >= 50, 20)
        conn = sqlite3.connect(env.db_path, timeout=10,
                               isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            held_at = time.monotonic()
            recorded = conn.execute("SELECT count(*) FROM jobs WHERE state "
                                    "= 'succeeded'").fetchone()[0]
            time.sleep(3.0)
            executed = fake.ledger()["executions"]
            # while locked the daemon must neither die nor give up
            assert d.running(), d.stderr_text()[-2000:]
            conn.execute("COMMIT")
        finally:
            conn.close()
        assert time.monotonic() - held_at >= 3.0
        # outcomes arrived while the lock was held: they had to wait
        assert executed > recorded, (executed, recorded)
        # about 4 s of work in all; a lost outcome leaves its job running
        # under a 10 min lease, so this would time out
        wait_for(lambda: states(env) == {"succeeded": n}, 30,
                 message="every job succeeded after the lock")
        wait_for(lambda: env.rows("SELECT count(*) n FROM attempts")[0]["n"]
                 == n, 10, message="one attempt row per job")
        log = fake.log()
        attempts = env.rows("SELECT count(*) n FROM attempts")[0]["n"]
        assert attempts == len(log), (attempts, len(log))
        keys = {k: v for k, v in fake.ledger()["keys"].items() if k}
        assert len(keys) == n
        assert all(v["executions"] == 1 for v in keys.values())
        stop(d)


if __name__ == "__main__":
    run(globals())
