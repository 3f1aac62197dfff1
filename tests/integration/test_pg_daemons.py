#!/usr/bin/env python3
"""PostgreSQL: several daemons on one queue, a daemon killed, the server
cut off. Against the fake provider's ledger: every job succeeds and no
idempotency key is executed twice.

The kill moments are random but seeded (SLUICE_KILL_SEED, printed).
"""
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Env, Fake, job_lines, provider_conf, run,  # noqa: E402
                     wait_for)
from pg import PgEnv, PgServer  # noqa: E402

SEED = int(os.environ.get("SLUICE_KILL_SEED") or random.randrange(1 << 30))


def provider(fake, **kw):
    # injected 5xx and kills each cost attempts: room for all of them
    conf = {"concurrency_start": 8, "timeout": "5s", "max_attempts": 30}
    conf.update(kw)
    return provider_conf(fake, **conf)


def succeeded(env):
    return env.rows("SELECT count(*) n FROM jobs "
                    "WHERE state = 'succeeded'")[0]["n"]


def held_by(env, daemon):
    """Running jobs leased by daemon (its owner token, by its pid in the
    daemons table)."""
    return env.rows("SELECT count(*) n FROM jobs j JOIN daemons d "
                    "ON d.owner = j.lease_owner WHERE j.state = 'running' "
                    "AND d.pid = %d" % daemon.pid)[0]["n"]


def check_exactly_once(env, fake, n):
    states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
    assert states == [{"state": "succeeded", "n": n}], states
    ledger = fake.ledger()
    keys = {k: v for k, v in ledger["keys"].items() if k}
    twice = {k: v for k, v in keys.items() if v["executions"] != 1}
    assert not twice, "keys not executed exactly once: %s" \
        % list(twice.items())[:5]
    job_keys = {r["idempotency_key"]
                for r in env.rows("SELECT idempotency_key FROM jobs")}
    assert job_keys == set(keys), "ledger keys differ from the jobs' keys"
    assert ledger["executions"] == n, ledger["executions"]


def stop_all(daemons):
    for d in daemons:
        if d.running():
            d.signal(signal.SIGTERM)
    for d in daemons:
        assert d.wait(timeout=60) == 0, d.stderr_text()[-2000:]


def test_three_daemons_one_killed_twice_every_job_once():
    n = 1500
    rng = random.Random(SEED)
    print("kill seed %d (SLUICE_KILL_SEED to replay)" % SEED)
    with Fake("--latency-ms", "20", "--jitter-ms", "30", "--error-rate",
              "0.15", "--error-mix", "500,502,503", "--seed", str(SEED),
              "--quiet") as fake, PgEnv() as env:
        env.write_config(providers={"gen": provider(fake)},
                         env={"GEN_KEY": "k"})
        rc, out, err = env.enqueue_lines(job_lines(n), "--provider", "gen")
        assert rc == 0 and f"{n} enqueued" in out, (out, err)
        daemons = [env.daemon() for _ in range(3)]
        victim = daemons[0]
        for kill in range(2):
            # mid-run: some done, most not
            wait_for(lambda: succeeded(env) >= (kill + 1) * n // 6, 60,
                     message="progress before kill %d" % (kill + 1))
            time.sleep(rng.uniform(0.1, 0.8))
            # with requests in flight, or the kill proves nothing
            held = wait_for(lambda: held_by(env, victim), 30,
                            interval=0.01, message="victim holds jobs")
            victim.kill()
            print("kill %d: daemon %d held %d jobs" % (kill + 1, victim.pid,
                                                       held))
            victim = env.daemon()  # takes back the dead pid's leases
            daemons.append(victim)
        done = succeeded(env)
        assert done < n, "all done before the last kill"
        wait_for(lambda: succeeded(env) == n, 120, interval=0.5,
                 message="all jobs succeeded")
        stop_all([d for d in daemons if d.running()])
        check_exactly_once(env, fake, n)
        errors = env.rows("SELECT count(*) n FROM attempts "
                          "WHERE http_status >= 500")[0]["n"]
        assert errors > 0, "no 5xx was injected: proves nothing"


def test_server_stopped_for_seconds_loses_nothing():
    n = 600
    server = PgServer()
    try:
        with Fake("--latency-ms", "20", "--jitter-ms", "30",
                  "--quiet") as fake, PgEnv(server.conninfo) as env:
            env.write_config(providers={"gen": provider(
                fake, concurrency_start="4")}, env={"GEN_KEY": "k"})
            rc, out, err = env.enqueue_lines(job_lines(n), "--provider",
                                             "gen")
            assert rc == 0, err
            d = env.daemon()
            wait_for(lambda: succeeded(env) >= n // 5, 60,
                     message="progress before the cut")
            server.stop()
            time.sleep(3)
            assert d.running(), d.stderr_text()[-2000:]
            server.start()
            wait_for(lambda: succeeded(env) == n, 120, interval=0.5,
                     message="all jobs succeeded after the cut")
            stop_all([d])
            check_exactly_once(env, fake, n)
            log = d.stderr_text()
            # said once, not every tick
            assert log.count("connection lost") == 1, log[-3000:]
            assert log.count("connection back") == 1, log[-3000:]
    finally:
        server.remove()


def claim_backend(env):
    """The pid of the server process behind the daemon's claims (its last
    statement a claim), or None."""
    rows = env.rows("SELECT pid FROM pg_stat_activity WHERE datname = '%s' "
                    "AND application_name = 'sluice' "
                    "AND query LIKE 'UPDATE jobs SET state = ''running''%%'"
                    % env.dbname)
    return rows[0]["pid"] if len(rows) == 1 else None


def heartbeat(env, daemon):
    return env.rows("SELECT heartbeat_at FROM daemons WHERE pid = %d"
                    % daemon.pid)[0]["heartbeat_at"]


def test_a_stalled_claim_connection_does_not_stop_the_loop():
    """The claim/commit path runs off the loop (storeq.h): with the server
    process behind the daemon's claims stopped (SIGSTOP), the loop still
    beats, once a second, through its own connection. With libpq blocking
    on the loop, the daemon would freeze at its next claim or commit."""
    n = 1000
    with Fake("--latency-ms", "50", "--quiet") as fake, PgEnv() as env:
        env.write_config(providers={"gen": provider(
            fake, concurrency_start="4")}, env={"GEN_KEY": "k"})
        rc, out, err = env.enqueue_lines(job_lines(n), "--provider", "gen")
        assert rc == 0, err
        d = env.daemon()
        wait_for(lambda: succeeded(env) >= 20, 60,
                 message="progress before the stall")
        pid = wait_for(lambda: claim_backend(env), 30, interval=0.01,
                       message="the claims' server process")
        os.kill(pid, signal.SIGSTOP)
        try:
            before = heartbeat(env, d)
            # beats every second; generous for a loaded machine
            wait_for(lambda: heartbeat(env, d) > before, 20, interval=0.2,
                     message="a heartbeat while the claims are stalled")
            stalled = succeeded(env)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert d.running(), d.stderr_text()[-2000:]
        assert stalled < n, "all done before the stall: proves nothing"
        wait_for(lambda: succeeded(env) == n, 120, interval=0.5,
                 message="all jobs succeeded after the stall")
        stop_all([d])
        check_exactly_once(env, fake, n)


def test_a_malformed_string_is_a_config_error_an_unreachable_server_not():
    """78 (the unit does not restart it) for a string libpq cannot parse;
    1 (restarted until the server is up) for a server not answering."""
    for database, code in (("postgresql://u:secret@%zz/q", 78),
                           ("host=/nonexistent bogus=1", 78),
                           ("postgresql://u:secret@localhost:1/q", 1)):
        with Env() as env:
            env.write_config({}, daemon={"database": database})
            d = env.daemon()
            assert d.wait(30) == code, (database, d.stderr_text())
            err = d.stderr_text()
            assert "secret" not in err, err
            rc, out, err = env.ctl("status")
            assert rc == code, (database, rc, err)
            assert "cannot open database" in err and "secret" not in err, err


if __name__ == "__main__":
    run(globals())
