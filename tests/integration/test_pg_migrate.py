#!/usr/bin/env python3
"""sluicectl migrate: a stopped SQLite queue moves into PostgreSQL with
every row as it was (states, attempts, keys, failures, results), the
daemon then finishes it there without sending any finished job again, and
a live source or a non-empty target is refused with nothing written.
"""
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Env, Fake, job_lines, provider_conf, run  # noqa: E402
from pg import PgEnv, psql  # noqa: E402

JOB_COLUMNS = ("id, provider, batch, custom_id, method, path, body, "
               "idempotency_key, send_key, priority, state, attempts, "
               "max_attempts, deferrals, run_after, lease_until, lease_owner, "
               "remote_id, poll_url, waiting_since, http_status, error_class, "
               "error_code, error_message, request_id, fields, result, cost, "
               "created_at, updated_at, finished_at")
ATTEMPT_COLUMNS = ("id, job_id, attempt, idempotency_key, is_poll, "
                   "started_at, finished_at, http_status, error_class, "
                   "error_code, error_message, request_id, retry_after_ms")


def sqlite_rows(path, sql):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def queue_on_sqlite(fake, env):
    """A queue in every state: drained with injected 5xx (some jobs out of
    attempts), then more enqueued, some cancelled."""
    env.write_config({"gen": provider_conf(fake, max_attempts="2")},
                     env={"GEN_KEY": "k"})
    rc, out, err = env.enqueue_lines(job_lines(200, "done"), "--provider",
                                     "gen", "--batch", "first")
    assert rc == 0, err
    d = env.daemon("--drain")
    assert d.wait(120) == 0, d.stderr_text()[-2000:]
    rc, out, err = env.enqueue_lines(job_lines(100, "todo"), "--provider",
                                     "gen", "--batch", "second")
    assert rc == 0, err
    rc, out, err = env.ctl("cancel", "todo-1", "todo-2")
    assert rc == 0, err
    states = {r["state"] for r in sqlite_rows(
        env.db_path, "SELECT DISTINCT state FROM jobs")}
    assert {"succeeded", "failed", "queued", "cancelled"} <= states, states


def test_migrate_moves_every_row_and_the_daemon_finishes_there():
    with Fake("--error-rate", "0.3", "--error-mix", "500,503", "--seed",
              "7", "--quiet") as fake, Env() as src, PgEnv() as dst:
        queue_on_sqlite(fake, src)
        executed_before = fake.ledger()["executions"]
        rc, out, err = src.ctl("migrate", "--from", src.db_path, "--to",
                               dst.db_path)
        assert rc == 0, err
        assert "300 jobs" in out, out
        for table, cols in (("jobs", JOB_COLUMNS),
                            ("attempts", ATTEMPT_COLUMNS)):
            want = sqlite_rows(src.db_path, "SELECT %s FROM %s ORDER BY id"
                               % (cols, table))
            got = dst.rows("SELECT %s FROM %s ORDER BY id" % (cols, table))
            assert len(got) == len(want), (table, len(got), len(want))
            for w, g in zip(want, got):
                assert w == g, (table, w, g)
        assert dst.rows("SELECT count(*) n FROM attempts")[0]["n"] > 200
        # the kept counts came along (status reads them)
        assert dst.rows("SELECT sum(n)::int n FROM job_counts "
                        "WHERE state = 'queued'")[0]["n"] == 98
        # the daemon finishes the queue on PostgreSQL; new ids go past the
        # migrated ones
        dst.write_config({"gen": provider_conf(fake, max_attempts="30")},
                         env={"GEN_KEY": "k"})
        rc, out, err = dst.enqueue_lines(job_lines(5, "after"),
                                         "--provider", "gen")
        assert rc == 0, err
        assert dst.rows("SELECT min(id) m FROM jobs WHERE custom_id "
                        "LIKE 'after-%'")[0]["m"] == 301
        d = dst.daemon("--drain")
        assert d.wait(120) == 0, d.stderr_text()[-2000:]
        left = dst.rows("SELECT count(*) n FROM jobs WHERE state NOT IN "
                        "('succeeded', 'failed', 'cancelled')")[0]["n"]
        assert left == 0
        # nothing that had succeeded on SQLite ran again
        ledger = fake.ledger()
        twice = {k: v for k, v in ledger["keys"].items()
                 if k and v["executions"] > 1}
        assert not twice, list(twice.items())[:3]
        # each success executed once, on one side or the other
        ok = dst.rows("SELECT count(*) n FROM jobs "
                      "WHERE state = 'succeeded'")[0]["n"]
        assert ledger["executions"] == ok, (ledger["executions"], ok)
        assert ledger["executions"] > executed_before + 90


def test_migrate_refuses_a_target_with_rows_and_a_live_source():
    with Fake("--quiet") as fake, Env() as src, PgEnv() as dst:
        src.write_config({"gen": provider_conf(fake)}, env={"GEN_KEY": "k"})
        rc, out, err = src.enqueue_lines(job_lines(10, "a"), "--provider",
                                         "gen")
        assert rc == 0, err
        # a target with a job in it
        dst.write_config({"gen": provider_conf(fake)}, env={"GEN_KEY": "k"})
        rc, out, err = dst.enqueue_lines(job_lines(1, "there"),
                                         "--provider", "gen")
        assert rc == 0, err
        rc, out, err = src.ctl("migrate", "--from", src.db_path, "--to",
                               dst.db_path)
        assert rc == 65, (rc, err)
        assert "not empty" in err, err
        assert dst.rows("SELECT count(*) n FROM jobs")[0]["n"] == 1
        # a source with a daemon registered
        psql(dst.db_path, "DELETE FROM jobs")
        conn = sqlite3.connect(src.db_path)
        with conn:
            conn.execute("INSERT INTO daemons VALUES "
                         "('abc', 'h', 1, 0, 0)")
        conn.close()
        rc, out, err = src.ctl("migrate", "--from", src.db_path, "--to",
                               dst.db_path)
        assert rc == 1, (rc, err)
        assert "stop every sluiced" in err, err
        assert dst.rows("SELECT count(*) n FROM jobs")[0]["n"] == 0


def test_migrate_refuses_bad_arguments_and_a_missing_source():
    with Env() as src, PgEnv() as dst:
        src.write_config({})
        for args in ((), ("--from", src.db_path),
                     ("--to", dst.db_path),
                     ("--from", src.db_path, "--to", dst.db_path, "more")):
            rc, out, err = src.ctl("migrate", *args)
            assert rc == 64, (args, rc, err)
            assert "needs --from DATABASE and --to DATABASE" in err, err
        # a source that does not exist: not created, the target untouched
        missing = os.path.join(src.path, "nothing.db")
        rc, out, err = src.ctl("migrate", "--from", missing, "--to",
                               dst.db_path)
        assert rc == 66, (rc, err)
        assert "cannot open " + missing in err, err
        assert not os.path.exists(missing)
        assert dst.rows("SELECT count(*) n FROM pg_tables "
                        "WHERE schemaname = 'public'")[0]["n"] == 0
        # a server not answering is not a missing file; a string libpq
        # cannot parse is a config error, on either side
        rc, out, err = src.ctl("migrate", "--from",
                               "postgresql://localhost:1/q", "--to",
                               dst.db_path)
        assert rc == 1, (rc, err)
        rc, out, err = src.ctl("migrate", "--from", "postgresql://%zz",
                               "--to", dst.db_path)
        assert rc == 78, (rc, err)
        # a source whose schema is behind (an empty database: 0)
        rc, out, err = src.ctl("migrate", "--from", dst.db_path, "--to",
                               src.db_path)
        assert rc == 1, (rc, err)
        assert "is at schema 0" in err, err
        assert not os.path.exists(src.db_path)
        src.write_config({"gen": {"dialect": "generic", "auth": "none",
                                  "base_url": "http://127.0.0.1:9/x"}})
        rc, out, err = src.ctl("enqueue", "--provider", "gen", "-",
                               input="")
        assert rc == 0, err
        rc, out, err = src.ctl("migrate", "--from", src.db_path, "--to",
                               "postgresql://%zz")
        assert rc == 78, (rc, err)


if __name__ == "__main__":
    run(globals())
