"""The database under the real binaries: sluiced --check and sluicectl's
reading commands open it read-only and never migrate it (a new build
checked against a live database must not upgrade it under the daemon that
runs on it); pending migrations are reported instead. A full disk slows
the daemon down without flooding the log, and a stop does not wait for
space: what was not committed is taken back, with the same keys, at the
next start."""
import errno
import glob
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    REPO, Env, Fake, enqueue_ok, job_lines, provider_conf, run, wait_for)

SQL = sorted(glob.glob(os.path.join(REPO, "sql", "[0-9][0-9][0-9]_*.sql")))
LATEST = len(SQL)


def older_database(path):
    """A queue one migration behind this build, with one job in it."""
    conn = sqlite3.connect(path)
    for f in SQL[:-1]:
        with open(f) as sql:
            conn.executescript(sql.read())
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA user_version = %d" % (LATEST - 1))
    conn.execute("INSERT INTO jobs (provider, path, idempotency_key, "
                 "created_at, updated_at) VALUES ('gen', '/x', 'k', 1, 1)")
    conn.commit()
    conn.close()


def fingerprint(path):
    """The database's version and the bytes of every file that makes it."""
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    h = hashlib.sha256()
    for suffix in ("", "-wal"):
        if os.path.exists(path + suffix):
            with open(path + suffix, "rb") as f:
                h.update(f.read())
    return version, h.hexdigest()


def env_with_older_database(env):
    env.write_config({"gen": {"dialect": "generic", "auth": "none",
                              "base_url": "http://127.0.0.1:9/g"}})
    older_database(env.db_path)
    return fingerprint(env.db_path)


def test_check_reports_pending_migrations_and_leaves_the_database():
    assert LATEST >= 2, SQL
    with Env() as env:
        before = env_with_older_database(env)
        d = env.daemon("--check")
        rc = d.wait()
        out = d.stderr_text()
        assert rc == 0, out
        assert "schema %d of %d, 1 migration pending" % (
            LATEST - 1, LATEST) in out, out
        assert fingerprint(env.db_path) == before


def test_reading_commands_never_migrate():
    with Env() as env:
        before = env_with_older_database(env)
        for cmd in (["status"], ["jobs"], ["show", "1"], ["failures"],
                    ["export"]):
            rc, out, err = env.ctl(*cmd)
            assert rc == 1, (cmd, rc, out, err)
            assert "1 migration pending" in err, (cmd, err)
            assert fingerprint(env.db_path) == before, cmd
        # a command that writes migrates, as before
        rc, out, err = env.ctl("cancel", "1")
        assert rc == 0, (out, err)
        assert fingerprint(env.db_path)[0] == LATEST
        rc, out, err = env.ctl("status")
        assert rc == 0, (out, err)


def count_state(db, state):
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM jobs WHERE state = ?",
                            (state,)).fetchone()[0]
    finally:
        conn.close()


def fill(directory):
    """Writes a file until the filesystem is full; returns its path."""
    path = os.path.join(directory, "filler")
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return path


def test_full_disk_logs_little_and_the_stop_is_bounded():
    # A small tmpfs is a disk that can really fill up; mounting one takes
    # root, so elsewhere this test says so and passes.
    if os.geteuid() != 0:
        print("skipped: a full disk needs root to mount a small tmpfs")
        return
    with Fake("--latency-ms", "1500") as fake, Env() as env:
        mnt = os.path.join(env.path, "small")
        os.mkdir(mnt)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                           mnt]).returncode != 0:
            print("skipped: cannot mount a tmpfs here")
            return
        try:
            db = os.path.join(mnt, "queue.db")
            env.write_config({"gen": provider_conf(fake, concurrency_start=8)},
                             daemon={"database": db, "shutdown_grace": "1s"},
                             env={"GEN_KEY": "sk-test"})
            enqueue_ok(env, job_lines(8), "--provider", "gen")
            d = env.daemon()
            wait_for(lambda: count_state(db, "running") == 8, 30,
                     message="8 requests out")
            filler = fill(mnt)
            # the answers come back into a full disk, for a few seconds
            time.sleep(5)
            assert d.running(), d.stderr_text()
            errors = [l for l in d.stderr_text().splitlines()
                      if " error: " in l or " warn: " in l]
            assert 1 <= len(errors) <= 12, "\n".join(errors)
            t0 = time.monotonic()
            d.signal(signal.SIGTERM)
            rc = d.wait(timeout=30)
            assert rc == 0, d.stderr_text()
            assert time.monotonic() - t0 < 20
            assert "not committed by the stop" in d.stderr_text()
            assert count_state(db, "succeeded") == 0
            # space again: the next start takes the jobs back and finishes
            # them with the same keys: the provider replays, never reruns
            os.unlink(filler)
            rc, err = env.run_drain(60)
            assert rc == 0, err
            assert count_state(db, "succeeded") == 8
            ledger = fake.ledger()
            assert ledger["executions"] == 8, ledger
            assert all(k["executions"] == 1 for k in ledger["keys"].values())
        finally:
            for dm in env.daemons:
                if dm.running():
                    dm.kill()
            subprocess.run(["umount", "-l", mnt])


if __name__ == "__main__":
    run(globals())
