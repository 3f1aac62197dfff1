"""PostgreSQL for integration tests: a database of its own per Env, on the
server scripts/test.sh started ($SLUICE_TEST_PG), or on one this module
starts with scripts/pg_server.sh (stopped at exit) when run alone.

    with Fake() as fake, PgEnv() as env:     # env.db_path is a conninfo
        env.write_config(...)                # database = that conninfo
        env.rows("SELECT state FROM jobs")   # through psql, as dicts

A test that stops the server (a connection cut) asks for a private one:
PgServer() (its own directory, socket and lifetime).
"""
import atexit
import json
import os
import shutil
import subprocess

from harness import REPO, Env

SCRIPT = os.path.join(REPO, "scripts", "pg_server.sh")
_counter = [0]


def _psql():
    found = shutil.which("psql")
    if found:
        return found
    for v in sorted(os.listdir("/usr/lib/postgresql"), reverse=True):
        p = os.path.join("/usr/lib/postgresql", v, "bin", "psql")
        if os.path.exists(p):
            return p
    raise RuntimeError("psql not found (Debian package postgresql-client)")


def psql(conninfo, sql, timeout=60):
    """Runs sql; returns stdout (unaligned, tuples only)."""
    r = subprocess.run([_psql(), "-X", "-q", "-A", "-t", "-v",
                        "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("psql: %s: %s" % (sql[:80], r.stderr.strip()))
    return r.stdout


class PgServer:
    """A private throwaway server (scripts/pg_server.sh), for a test that
    stops and starts it."""

    def __init__(self):
        out = subprocess.run(["bash", SCRIPT, "start"], check=True,
                             capture_output=True, text=True,
                             timeout=120).stdout
        env = {}
        for line in out.splitlines():
            k, _, v = line.replace("export ", "", 1).partition("=")
            env[k] = v.strip("'")
        self.conninfo = env["SLUICE_TEST_PG"]
        self.dir = env["SLUICE_TEST_PGDIR"]
        atexit.register(self.remove)

    def stop(self):
        subprocess.run(["bash", SCRIPT, "ctl", self.dir, "stop"],
                       check=True, timeout=90)

    def start(self):
        subprocess.run(["bash", SCRIPT, "ctl", self.dir, "start"],
                       check=True, timeout=90)

    def remove(self):
        if self.dir and os.path.isdir(self.dir):
            subprocess.run(["bash", SCRIPT, "stop", self.dir], timeout=90)
        self.dir = None


_shared = []


def server_conninfo():
    """The shared server's connection string (started on first use when
    the test script did not start one)."""
    if os.environ.get("SLUICE_TEST_PG"):
        return os.environ["SLUICE_TEST_PG"]
    if not _shared:
        _shared.append(PgServer())
    return _shared[0].conninfo


class PgEnv(Env):
    """Env whose database is a fresh PostgreSQL database (dropped at
    exit); rows() reads it through psql."""

    def __init__(self, conninfo=None):
        super().__init__()
        base = conninfo or server_conninfo()
        _counter[0] += 1
        self.dbname = "t%d_%d" % (os.getpid(), _counter[0])
        self.admin = base
        psql(base, "CREATE DATABASE " + self.dbname)
        # a later keyword wins in a libpq key=value string
        self.db_path = "%s dbname=%s" % (base, self.dbname)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        try:
            psql(self.admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)"
                 % self.dbname)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the server may be gone with a test that stopped it

    def rows(self, sql, *params):
        assert not params, "PgEnv.rows takes no parameters"
        out = psql(self.db_path,
                   "SELECT coalesce(json_agg(r), '[]') FROM (%s) r" % sql)
        return json.loads(out)

    def db(self):
        raise NotImplementedError("PostgreSQL: use rows()")
