#!/usr/bin/env python3
"""The kill test: sluiced killed with SIGKILL at random moments and
restarted, against the fake provider's ledger.

At the end every job is terminal, none is lost, and no idempotency key was
executed twice at the provider. On each restart the daemon must take back
the leases of the process it replaces (its lock file is free) before it says
READY=1, without waiting for the lease to expire (docs/design.md §8,
start-up); the default lease (10 min) is used so that a daemon that only
waits for expiry fails here instead of passing slowly.

The moments are random but seeded (SLUICE_KILL_SEED, printed), so a
failing run can be replayed.
"""
import os
import random
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Env, Fake, run  # noqa: E402
from test_service_notify import NotifySocket  # noqa: E402

SEED = int(os.environ.get("SLUICE_KILL_SEED") or random.randrange(1 << 30))
TERMINAL = ("succeeded", "failed", "cancelled")


def provider(fake, **kw):
    conf = {
        "dialect": "generic",
        "base_url": f"{fake.url}/generic",
        "auth": "bearer",
        "api_key_env": "GEN_KEY",
        # ~230 jobs/s at the fake's 20-50 ms: 3000 jobs outlast the kills
        "concurrency_start": "8",
        "adaptive": "no",
        "backoff_base": "20ms",
        "backoff_cap": "100ms",
        "timeout": "5s",
        # A job in flight at every one of the kills is charged an attempt
        # each time (the attempt counts at claim): leave room for all kills
        # so that a lost lease never fails a job here.
        "max_attempts": "10",
    }
    conf.update({k: str(v) for k, v in kw.items()})
    return conf


def jobs(n):
    return [{"custom_id": f"job-{i}", "url": "/v1/images",
             "body": {"prompt": f"image {i}"}} for i in range(n)]


def leased_by(env):
    """{lease_owner: count} of running jobs, read at once."""
    rows = env.rows("SELECT lease_owner o, count(*) n FROM jobs "
                    "WHERE state = 'running' GROUP BY lease_owner")
    return {r["o"]: r["n"] for r in rows}


def owner_of(env, pid):
    """The lease owner token of the running daemon with this pid."""
    rows = env.rows("SELECT owner FROM daemons WHERE pid = ?", pid)
    assert len(rows) == 1, rows
    return rows[0]["owner"]


def kill_and_restart(env, ns, kills, rng, check_reclaim_at_ready):
    """Starts sluiced, kills it with SIGKILL at a random moment after
    READY, kills times. Returns (dead owners, jobs orphaned per kill)."""
    dead, orphaned = [], []
    for i in range(kills):
        readies = len(ns.with_field("READY=1"))
        d = env.daemon()
        ns.wait("READY=1", count=readies + 1, timeout=20)
        if check_reclaim_at_ready:
            snap = ns.with_field("READY=1")[readies][2]
            assert isinstance(snap, dict), snap
            stale = {o: n for o, n in snap.items() if o in dead}
            # READY=1 with jobs still leased by a dead daemon: they would
            # wait for the lease (10 min) to expire
            assert not stale, "restart %d: at READY, running jobs still " \
                "leased by killed daemons %s: %s" % (i + 1, dead, stale)
        owner = owner_of(env, d.pid)
        # a random token, not host:pid
        assert len(owner) == 32 and ":" not in owner, owner
        time.sleep(rng.uniform(0.3, 1.5))
        assert d.running(), d.stderr_text()[-2000:]
        d.kill()
        dead.append(owner)
        orphaned.append(leased_by(env).get(owner, 0))
    return dead, orphaned


def check_outcome(env, fake, n):
    states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
    assert states == [{"state": "succeeded", "n": n}], states
    ids = {r["custom_id"] for r in env.rows("SELECT custom_id FROM jobs")}
    assert ids == {f"job-{i}" for i in range(n)}, "jobs lost"
    ledger = fake.ledger()
    keys = {k: v for k, v in ledger["keys"].items() if k}
    twice = {k: v for k, v in keys.items() if v["executions"] != 1}
    assert not twice, "keys not executed exactly once: %s" \
        % list(twice.items())[:5]
    assert len(keys) == n, len(keys)
    assert ledger["executions"] == n, ledger["executions"]
    job_keys = {r["idempotency_key"]
                for r in env.rows("SELECT idempotency_key FROM jobs")}
    assert job_keys == set(keys), "ledger keys differ from the jobs' keys"


def test_sigkill_at_random_moments_loses_no_job_and_runs_no_key_twice():
    n, kills = 3000, 5
    rng = random.Random(SEED)
    print("kill seed %d (SLUICE_KILL_SEED to replay)" % SEED)
    with Fake("--latency-ms", "20", "--jitter-ms", "30", "--quiet") as fake, \
            Env() as env:
        with NotifySocket(env.path, on_ready=lambda: leased_by(env)) as ns:
            env.write_config(providers={"gen": provider(fake)},
                             env={"GEN_KEY": "k"})
            rc, out, err = env.enqueue_lines(jobs(n), "--provider", "gen")
            assert rc == 0 and f"{n} enqueued" in out, (out, err)
            env.env["NOTIFY_SOCKET"] = ns.path
            start = time.monotonic()
            dead, orphaned = kill_and_restart(env, ns, kills, rng, True)
            # the kills hit work in flight, or this proved nothing
            assert sum(orphaned) > 0, orphaned
            done = env.rows("SELECT count(*) n FROM jobs WHERE "
                            "state = 'succeeded'")[0]["n"]
            assert done < n, "all done before the last kill: %d" % done
            rc, err = env.run_drain(timeout=90)
            assert rc == 0, err[-3000:]
            assert time.monotonic() - start < 150
        check_outcome(env, fake, n)
        # the resends after each kill were answered from the ledger
        # (replays), not executed again; every executed request that the
        # daemon saw was recorded once
        per_job = env.rows("SELECT count(*) n FROM attempts a JOIN jobs j "
                           "ON j.id = a.job_id AND a.http_status = 200 "
                           "GROUP BY a.job_id HAVING n > 1")
        assert per_job == [], per_job[:5]


def test_leases_of_an_unregistered_owner_wait_for_expiry_then_are_reclaimed():
    """Leases whose owner is in no daemons row (written before that table
    existed) cannot be judged: they are left alone at start (they may be
    live) and taken back once expired, by the running daemon's
    housekeeping; still nothing is lost or run twice."""
    n = 1000
    rng = random.Random(SEED + 1)
    other = "elsewhere.invalid:4242"
    with Fake("--latency-ms", "20", "--jitter-ms", "30", "--quiet") as fake, \
            Env() as env:
        with NotifySocket(env.path, on_ready=lambda: leased_by(env)) as ns:
            env.write_config(providers={"gen": provider(fake,
                                                        timeout="1s")},
                             daemon={"lease": "4s"},
                             env={"GEN_KEY": "k"})
            rc, out, err = env.enqueue_lines(jobs(n), "--provider", "gen")
            assert rc == 0, err
            env.env["NOTIFY_SOCKET"] = ns.path
            dead, orphaned = kill_and_restart(env, ns, 1, rng, False)
            assert orphaned[0] > 0, orphaned
            # the killed daemon becomes one of another host
            conn = sqlite3.connect(env.db_path, timeout=10)
            with conn:
                moved = conn.execute(
                    "UPDATE jobs SET lease_owner = ? WHERE state = 'running' "
                    "AND lease_owner = ?", (other, dead[0])).rowcount
            conn.close()
            assert moved == orphaned[0], (moved, orphaned)
            start = time.monotonic()
            d = env.daemon("--drain")
            ns.wait("READY=1", count=2, timeout=20)
            snap = ns.with_field("READY=1")[1][2]
            # still leased at READY: not expired, owner not judged dead
            assert snap.get(other) == moved, snap
            assert d.wait(timeout=90) == 0, d.stderr_text()[-3000:]
            took = time.monotonic() - start
        check_outcome(env, fake, n)
        assert leased_by(env) == {}
        print("expired leases reclaimed, drain took %.1f s" % took)


if __name__ == "__main__":
    run(globals())
