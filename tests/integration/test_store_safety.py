"""The database under the real binaries: sluiced --check and sluicectl's
reading commands open it read-only and never migrate it (a new build
checked against a live database must not upgrade it under the daemon that
runs on it); pending migrations are reported instead."""
import glob
import hashlib
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, Env, run  # noqa: E402

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


if __name__ == "__main__":
    run(globals())
