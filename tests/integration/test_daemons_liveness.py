#!/usr/bin/env python3
"""Several sluiced on one database: owner tokens, lock files, heartbeats.

Two real daemons share a queue; neither takes the other's jobs while both
live; one killed with SIGKILL has its jobs taken back by the other at once
(its lock file is free), long before its lease or any heartbeat timeout.
A daemon of another host (a daemons row with no lock file) is judged by
its heartbeat alone: left alone while it beats, even with its clock
jumping back and forth, taken back once it has been silent for
heartbeat_timeout. Nothing is lost and no key is executed twice.
"""
import os
import signal
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, run, wait_for, provider_conf, job_lines, enqueue_ok)


def provider(fake, **kw):
    return provider_conf(fake, **{"concurrency_start": 8, "timeout": "5s",
                                  **kw})


def owners(env):
    return {r["owner"]: r for r in env.rows("SELECT * FROM daemons")}


def running_by(env):
    rows = env.rows("SELECT lease_owner o, count(*) n FROM jobs "
                    "WHERE state = 'running' GROUP BY lease_owner")
    return {r["o"]: r["n"] for r in rows}


def assert_each_key_once(env, fake, n):
    states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
    assert states == [{"state": "succeeded", "n": n}], states
    keys = {k: v for k, v in fake.ledger()["keys"].items() if k}
    assert len(keys) == n, len(keys)
    twice = {k: v for k, v in keys.items() if v["executions"] != 1}
    assert not twice, list(twice.items())[:5]


def test_two_daemons_share_a_queue_and_a_killed_one_is_taken_back_at_once():
    n = 600
    with Fake("--latency-ms", "100", "--jitter-ms", "50", "--quiet") as fake, \
            Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "k"})
        enqueue_ok(env, job_lines(n), "--provider", "gen")
        a = env.daemon()
        b = env.daemon()
        both = wait_for(lambda: len(owners(env)) == 2 and owners(env), 20,
                        message="two daemons registered")
        by_pid = {r["pid"]: o for o, r in both.items()}
        owner_a, owner_b = by_pid[a.pid], by_pid[b.pid]
        assert len(owner_a) == 32 and ":" not in owner_a, owner_a
        lock_dir = env.db_path + ".daemons"
        assert sorted(os.listdir(lock_dir)) == sorted(
            [owner_a + ".lock", owner_b + ".lock"])
        wait_for(lambda: all(running_by(env).get(o, 0) > 0
                             for o in (owner_a, owner_b)), 20,
                 message="both daemons sending")
        time.sleep(2)  # a couple of heartbeats and verdicts
        for d in (a, b):
            assert "taken back" not in d.stderr_text(), d.stderr_text()
        orphaned = running_by(env).get(owner_a, 0)
        a.kill()
        killed = time.monotonic()
        # far below the 10 min lease and the 30 s heartbeat timeout
        wait_for(lambda: running_by(env).get(owner_a, 0) == 0, 10,
                 message="the killed daemon's jobs taken back")
        took = time.monotonic() - killed
        assert owner_a not in owners(env)
        assert not os.path.exists(os.path.join(lock_dir, owner_a + ".lock"))
        assert "is gone, its lock file free" in b.stderr_text(), \
            b.stderr_text()[-2000:]
        wait_for(lambda: env.rows("SELECT count(*) n FROM jobs WHERE "
                                  "state = 'succeeded'")[0]["n"] == n, 120,
                 message="all jobs done")
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0, b.stderr_text()[-2000:]
        assert owners(env) == {}, "a clean stop leaves its row behind"
        assert os.listdir(lock_dir) == []
        assert_each_key_once(env, fake, n)
        print("%d jobs in flight at the kill taken back in %.1f s"
              % (orphaned, took))


def fake_registered_daemon(env, owner, jobs):
    """A daemons row of another host (no lock file) holding `jobs` running
    jobs under a live-looking lease."""
    now = int(time.time() * 1000)
    conn = sqlite3.connect(env.db_path, timeout=10)
    with conn:
        conn.execute("INSERT INTO daemons VALUES (?, 'elsewhere.invalid', "
                     "4242, ?, ?)", (owner, now, now))
        moved = conn.execute(
            "UPDATE jobs SET state = 'running', attempts = 1, "
            "lease_owner = ?, lease_until = ? WHERE id IN (SELECT id FROM "
            "jobs WHERE state = 'queued' ORDER BY id LIMIT ?)",
            (owner, now + 600000, jobs)).rowcount
    conn.close()
    assert moved == jobs


def test_another_hosts_daemon_is_judged_by_its_heartbeat():
    n, held = 200, 10
    silent, beating = "a" * 32, "b" * 32
    with Fake("--latency-ms", "20", "--quiet") as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)},
                         daemon={"heartbeat_timeout": "3s"},
                         env={"GEN_KEY": "k"})
        enqueue_ok(env, job_lines(n), "--provider", "gen")
        # the daemons table exists once a program has opened the database
        fake_registered_daemon(env, silent, held)
        fake_registered_daemon(env, beating, held)
        stop = threading.Event()
        last_beat = [time.monotonic()]  # when the last beat was committed

        def beat():
            # its wall clock swings by an hour either way: only change
            # counts, never the value
            conn = sqlite3.connect(env.db_path, timeout=10)
            i = 0
            while not stop.is_set():
                i += 1
                swing = 3600000 if i % 2 else -3600000
                with conn:
                    conn.execute(
                        "UPDATE daemons SET heartbeat_at = max(?, "
                        "heartbeat_at + 1) WHERE owner = ?",
                        (int(time.time() * 1000) + swing, beating))
                last_beat[0] = time.monotonic()
                stop.wait(0.5)
            conn.close()

        t = threading.Thread(target=beat)
        t.start()
        try:
            started = time.monotonic()
            d = env.daemon("--drain")
            wait_for(lambda: running_by(env).get(silent, 0) == 0, 30,
                     message="the silent daemon's jobs taken back")
            silent_took = time.monotonic() - started
            assert silent_took >= 3.0, silent_took
            # three times the timeout: the beating one keeps its jobs
            time.sleep(9)
            assert running_by(env).get(beating, 0) == held, running_by(env)
            assert beating in owners(env)
        finally:
            stop.set()
            t.join()
        assert d.wait(60) == 0, d.stderr_text()[-3000:]
        # from its last beat, not from the stop of the thread: that beat
        # may have been up to one beat interval earlier
        beating_took = time.monotonic() - last_beat[0]
        assert beating_took >= 3.0, beating_took
        err = d.stderr_text()
        assert "daemon %s (elsewhere.invalid, pid 4242) has not beaten" \
            % silent in err, err[-3000:]
        assert "daemon %s (elsewhere.invalid, pid 4242) has not beaten" \
            % beating in err, err[-3000:]
        states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
        assert states == [{"state": "succeeded", "n": n}], states
        print("silent daemon taken back after %.1f s, the beating one %.1f s "
              "after it stopped" % (silent_took, beating_took))


if __name__ == "__main__":
    run(globals())
