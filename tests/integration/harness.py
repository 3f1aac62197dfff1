"""Integration harness: the real sluiced, sluicectl and fake_provider.

Every tests/integration/test_*.py imports this (it sits in the same
directory, which Python puts on sys.path). Python standard library only.

Binaries come from $SLUICED, $SLUICECTL and $FAKE_PROVIDER (ctest sets
them), else from build/ at the top of the repository. Every child process
is killed at exit and every wait is bounded, so a broken daemon fails a
test instead of hanging it.

    with Fake("--rate", "20") as fake, Env() as env:
        env.write_config({"flora": {"dialect": "flora",
                                    "base_url": fake.url + "/flora"}})
        env.enqueue_lines([{"custom_id": "a", "url": "/runs",
                            "body": {"prompt": "x"}}], "--provider", "flora")
        rc, err = env.run_drain(60)
        assert env.rows("SELECT state FROM jobs")[0]["state"] == "succeeded"
"""

import atexit
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("SLUICE_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(HERE))
BUILD = os.path.join(REPO, "build")

SLUICED = os.environ.get("SLUICED") or os.path.join(BUILD, "sluiced")
SLUICECTL = os.environ.get("SLUICECTL") or os.path.join(BUILD, "sluicectl")
FAKE_PROVIDER = os.environ.get("FAKE_PROVIDER") or os.path.join(
    BUILD, "tests", "fake_provider")

# Bound on any single wait for a child (start-up, exit, a control call).
DEFAULT_TIMEOUT = 30.0

_children = []


def _kill_children():
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass


atexit.register(_kill_children)


def _spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    _children.append(p)
    return p


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited."""


def wait_for(predicate, timeout, interval=0.05, message=None):
    """Calls predicate until it returns a true value (returned) or timeout
    seconds pass (raises with message, or the predicate's name)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise WaitTimeout("timed out after %.1f s waiting for %s"
                                % (timeout, what))
        time.sleep(interval)


def http(method, url, body=None, headers=None, timeout=DEFAULT_TIMEOUT):
    """One request with urllib. body: dict/list (sent as JSON), str or
    bytes. Returns (status, headers as a dict with lower-case names, body
    bytes); HTTP errors are answers too, not exceptions."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return (r.status, {k.lower(): v for k, v in r.headers.items()},
                    r.read())
    except urllib.error.HTTPError as e:
        return (e.code, {k.lower(): v for k, v in e.headers.items()},
                e.read())


def http_json(method, url, body=None, headers=None, timeout=DEFAULT_TIMEOUT):
    """Like http() but decodes the body as JSON."""
    status, hdrs, raw = http(method, url, body, headers, timeout)
    return status, hdrs, json.loads(raw) if raw else None


class Fake:
    """The fake provider on a free loopback port, as a context manager.
    Arguments are fake_provider options (--rate 20, --latency-ms 50, …)."""

    def __init__(self, *args):
        self.args = [str(a) for a in args]
        self.dir = tempfile.TemporaryDirectory(prefix="sluice-fake-")
        self.proc = None
        self.port = None
        self.url = None

    def start(self):
        port_file = os.path.join(self.dir.name, "port")
        self.stdout_path = os.path.join(self.dir.name, "stdout")
        self.stderr_path = os.path.join(self.dir.name, "stderr")
        with open(self.stdout_path, "wb") as out, \
                open(self.stderr_path, "wb") as err:
            self.proc = _spawn([FAKE_PROVIDER, "--port", "0", "--port-file",
                                port_file] + self.args,
                               stdout=out, stderr=err,
                               stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("fake_provider exited with %s: %s"
                                     % (self.proc.returncode,
                                        self.stderr_text()))
            return os.path.exists(port_file)

        wait_for(ready, DEFAULT_TIMEOUT, message="fake_provider port file")
        with open(port_file) as f:
            self.port = int(f.read().strip())
        self.url = "http://127.0.0.1:%d" % self.port
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        try:
            rc = self.stop()
            # A clean exit is part of the contract (and, in sanitizer
            # builds, how leaks show); never mask the test's own error.
            if exc_type is None and rc != 0:
                raise AssertionError("fake_provider exited %s: %s"
                                     % (rc, self.stderr_text()[-2000:]))
        finally:
            self.dir.cleanup()

    def stdout_text(self):
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr_text(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def ledger(self):
        """GET /_ledger: {"keys": {key: {requests, executions, replays}},
        "requests", "executions", "throttled", "replays", …}."""
        return http_json("GET", self.url + "/_ledger")[2]

    def log(self):
        """GET /_log: one dict per request, in arrival order."""
        return http_json("GET", self.url + "/_log")[2]

    def reset(self):
        status = http("POST", self.url + "/_reset")[0]
        assert status == 200, "reset answered %d" % status

    def config(self, **kw):
        """POST /_config: rate, burst, max_concurrent, error_rate,
        latency_ms, jitter_ms, retry_after. Returns the new settings."""
        status, _, body = http_json("POST", self.url + "/_config", kw)
        assert status == 200, "config answered %d: %s" % (status, body)
        return body

    def techniques(self, specs):
        """POST /_techniques: slug → {"run_cost": X} (null: none stated)
        or {"status": S} (GET /techniques/{slug} fails with S)."""
        status, _, body = http_json("POST", self.url + "/_techniques", specs)
        assert status == 200, "techniques answered %d: %s" % (status, body)
        return body

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after timeout. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError("fake_provider ignored SIGTERM")


def _ini_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class Daemon:
    """A started sluiced."""

    def __init__(self, argv, env, stderr_path):
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = _spawn(argv, env=env, stdout=err, stderr=err,
                               stdin=subprocess.DEVNULL)

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc.poll() is None

    def wait(self, timeout=DEFAULT_TIMEOUT):
        """Waits for exit; returns the code, or raises after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout("sluiced did not exit within %.1f s; "
                                "stderr:\n%s" % (timeout, self.stderr_text()))

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL (a crash), and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=DEFAULT_TIMEOUT)

    def stderr_text(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


class Env:
    """A temp dir with a config, a database path and the environment the
    children get (API keys travel there, never in the config file)."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="sluice-env-")
        self.path = self.dir.name
        self.config_path = os.path.join(self.path, "sluice.conf")
        self.db_path = os.path.join(self.path, "queue.db")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("JOURNAL_STREAM", "SLUICE_CONFIG",
                                 "NOTIFY_SOCKET")}
        self.daemons = []
        self._files = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for d in self.daemons:
            if d.running():
                d.kill()
        self.dir.cleanup()

    def write_config(self, providers, daemon=None, env=None):
        """providers: name → dict of INI keys. A key "api_key" is not
        written: it goes to an env var named in api_key_env (one is made
        up per provider unless the dict sets auth = none or a key source).
        "header" may be a list (the key repeats). daemon: extra [daemon]
        keys; database defaults to <tmp>/queue.db. env: more variables for
        the children (e.g. the key behind an explicit api_key_env)."""
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        lines = ["[daemon]"]
        d = {"database": self.db_path}
        d.update(daemon or {})
        for k, v in d.items():
            lines.append("%s = %s" % (k, _ini_value(v)))
        for name, keys in providers.items():
            keys = dict(keys)
            lines.append("")
            lines.append('[provider "%s"]' % name)
            key = keys.pop("api_key", None)
            has_source = "api_key_env" in keys or "api_key_file" in keys
            if keys.get("auth") != "none" and not has_source:
                var = "SLUICE_TEST_KEY_" + "".join(
                    c if c.isalnum() else "_" for c in name).upper()
                self.env[var] = key if key is not None else \
                    "sk-test-" + name
                keys["api_key_env"] = var
            for k, v in keys.items():
                for item in (v if isinstance(v, list) else [v]):
                    lines.append("%s = %s" % (k, _ini_value(item)))
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return self.config_path

    def ctl(self, *args, input=None, timeout=DEFAULT_TIMEOUT):
        """Runs sluicectl -c CONFIG ARGS…; returns (rc, stdout, stderr)."""
        r = subprocess.run([SLUICECTL, "-c", self.config_path]
                           + [str(a) for a in args],
                           input=input, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        return r.returncode, r.stdout, r.stderr

    def enqueue_lines(self, lines, *extra):
        """Writes dicts (or ready strings) as a .jsonl file and runs
        sluicectl enqueue EXTRA… FILE. Returns (rc, stdout, stderr)."""
        self._files += 1
        path = os.path.join(self.path, "jobs-%d.jsonl" % self._files)
        with open(path, "w") as f:
            for line in lines:
                f.write(line if isinstance(line, str) else json.dumps(line))
                f.write("\n")
        return self.ctl("enqueue", *extra, path)

    def write_file(self, name, text):
        """Writes text to NAME in the temp dir; returns the path."""
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def daemon(self, *args, config=True):
        """Starts sluiced [-c CONFIG] ARGS… and returns its handle;
        config=False leaves -c to ARGS."""
        n = len(self.daemons) + 1
        pre = ["-c", self.config_path] if config else []
        d = Daemon([SLUICED] + pre + [str(a) for a in args], self.env,
                   os.path.join(self.path, "sluiced-%d.log" % n))
        self.daemons.append(d)
        return d

    def run_drain(self, timeout=60):
        """Runs sluiced --drain to completion; returns (rc, stderr).
        Raises if it does not finish within timeout."""
        d = self.daemon("--drain")
        try:
            rc = d.wait(timeout)
        except WaitTimeout:
            d.kill()
            raise
        return rc, d.stderr_text()

    def db(self):
        """A read-only sqlite3 connection to the queue (rows as dicts via
        rows())."""
        conn = sqlite3.connect("file:%s?mode=ro" % self.db_path, uri=True,
                               timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def rows(self, sql, *params):
        conn = self.db()
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()



def provider_conf(fake, prefix="generic", **kw):
    """A [provider] section for the generic dialect on the fake's
    /<prefix>, fixed concurrency and short backoff; kw overrides."""
    conf = {
        "dialect": "generic",
        "base_url": f"{fake.url}/{prefix}",
        "auth": "bearer",
        "api_key_env": "GEN_KEY",
        "concurrency_start": "4",
        "adaptive": "no",
        "backoff_base": "20ms",
        "backoff_cap": "100ms",
        "timeout": "10s",
    }
    conf.update({k: str(v) for k, v in kw.items()})
    return conf


def job_lines(n, prefix="job", script=None):
    """n JSONL job objects with custom ids <prefix>-<i>, each with a `_fake`
    script when given."""
    out = []
    for i in range(n):
        body = {"prompt": f"{prefix} image {i}"}
        if script is not None:
            body["_fake"] = {"script": script}
        out.append({"custom_id": f"{prefix}-{i}", "url": "/v1/images",
                    "body": body})
    return out


def enqueue_ok(env, lines, *extra):
    """Enqueues lines and asserts that every one of them went in."""
    rc, out, err = env.enqueue_lines(lines, *extra)
    assert rc == 0, (out, err)
    assert "%d enqueued" % len(lines) in out, out


def drain_ok(env, timeout=60):
    """Runs sluiced --drain to its end; asserts exit 0; returns stderr."""
    rc, err = env.run_drain(timeout)
    assert rc == 0, err
    return err


def run(tests):
    """Runs each test function (a list, or a module's globals() filtered
    to test_*), prints ok/FAIL per test and a summary; exits 1 on any
    failure."""
    if isinstance(tests, dict):
        tests = [v for k, v in sorted(tests.items())
                 if k.startswith("test_") and callable(v)]
    passed = failed = 0
    for t in tests:
        name = t.__name__
        try:
            t()
        except Exception:
            failed += 1
            print("FAIL %s" % name)
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print("ok %s" % name)
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)
