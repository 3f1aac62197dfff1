"""Shared pieces of the sluice benchmarks (Python 3 standard library only).

The benchmarks build nothing: the binaries come from $SLUICED, $SLUICECTL
and $FAKE_PROVIDER, else from build/ at the top of the repository (see
bench/README.md for the build command). Every child runs on loopback, in a
temp dir, and is killed when the script exits, so an interrupted or failed
run leaves no process behind.

Written for bench/ alone rather than importing tests/integration/harness.py:
the benchmarks need several daemons per run, RSS sampling and a request log
that can hold hundreds of thousands of entries, which the tests do not.
"""

import atexit
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("SLUICE_SOURCE_DIR") or os.path.dirname(HERE)
BUILD = os.path.join(REPO, "build")

SLUICED = os.environ.get("SLUICED") or os.path.join(BUILD, "sluiced")
SLUICECTL = os.environ.get("SLUICECTL") or os.path.join(BUILD, "sluicectl")
FAKE_PROVIDER = os.environ.get("FAKE_PROVIDER") or os.path.join(
    BUILD, "tests", "fake_provider")

# Bound on a start-up or a control call: a broken binary fails the bench
# instead of hanging it.
START_TIMEOUT = 30.0

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


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


# SIGTERM (e.g. from timeout(1)) must run the atexit cleanup too.
signal.signal(signal.SIGTERM, _on_sigterm)


def spawn(argv, **kw):
    """Popen whose child is killed when the script exits."""
    p = subprocess.Popen(argv, **kw)
    _children.append(p)
    return p


def check_binaries(*paths):
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    if missing:
        raise SystemExit("missing binaries: %s\nbuild first (bench/README.md) "
                         "or set SLUICED, SLUICECTL, FAKE_PROVIDER"
                         % ", ".join(missing))


def wait_for(predicate, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SystemExit("timed out after %.0f s waiting for %s"
                             % (timeout, what))
        time.sleep(interval)


def http(method, url, body=None, timeout=START_TIMEOUT):
    """One request; returns (status, body bytes). HTTP errors are answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Fake:
    """tests/fake_provider on a free loopback port; args are its options."""

    def __init__(self, workdir, *args):
        self.dir = workdir
        port_file = os.path.join(workdir, "fake.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.err = open(os.path.join(workdir, "fake.log"), "wb")
        self.proc = spawn([FAKE_PROVIDER, "--port", "0", "--port-file",
                           port_file, "--quiet"] + [str(a) for a in args],
                          stdout=subprocess.DEVNULL, stderr=self.err,
                          stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise SystemExit("fake_provider exited %s"
                                 % self.proc.returncode)
            return os.path.exists(port_file)

        wait_for(ready, START_TIMEOUT, "fake_provider port file")
        with open(port_file) as f:
            self.port = int(f.read().strip())
        self.url = "http://127.0.0.1:%d" % self.port

    def log(self):
        """GET /_log: one dict per request, in arrival order."""
        status, raw = http("GET", self.url + "/_log", timeout=300)
        if status != 200:
            raise SystemExit("fake /_log answered %d" % status)
        return json.loads(raw)

    def ledger(self):
        status, raw = http("GET", self.url + "/_ledger", timeout=300)
        return json.loads(raw)

    def reset(self):
        http("POST", self.url + "/_reset")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


NGINX = os.environ.get("NGINX") or "/usr/sbin/nginx"

# A small JSON body like a generation API's answer (a URL, not a payload).
NGINX_BODY = ('{"id":"gen-bench","object":"image","created":1764547200,'
              '"data":[{"url":"https://cdn.example.invalid/gen-bench.png"}]}')

NGINX_CONF = """\
worker_processes %(workers)s;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            default_type application/json;
            return 200 '%(body)s';
        }
    }
}
"""


def free_port():
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx with its own config in workdir/nginx on a free loopback port,
    answering every request with 200 and NGINX_BODY; stop() ends it."""

    def __init__(self, workdir, workers="auto"):
        self.dir = os.path.join(workdir, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {"dir": self.dir, "port": self.port,
                                  "workers": workers, "body": NGINX_BODY})
        self.err = open(os.path.join(self.dir, "stderr.log"), "wb")
        self.proc = spawn([NGINX, "-p", self.dir, "-c", conf, "-e",
                           os.path.join(self.dir, "error.log"), "-g",
                           "daemon off;"], stdout=subprocess.DEVNULL,
                          stderr=self.err, stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise SystemExit("nginx exited %s: %s" % (
                    self.proc.returncode, open(self.err.name).read()))
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return True
            except OSError:
                return False

        wait_for(ready, START_TIMEOUT, "nginx on port %d" % self.port)

    def stop(self):
        # SIGQUIT: graceful shutdown; the master waits for its workers.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


class Sluice:
    """One sluiced with its own config and database in workdir/name."""

    def __init__(self, workdir, name, provider_keys, daemon_keys=None,
                 keep_db=False):
        """keep_db: reuse the database already in workdir/name (with this
        new config) instead of starting from an empty one."""
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.db = os.path.join(self.dir, "queue.db")
        for suffix in ("", "-wal", "-shm"):
            if not keep_db and os.path.exists(self.db + suffix):
                os.unlink(self.db + suffix)
        self.config = os.path.join(self.dir, "sluice.conf")
        d = {"database": self.db, "shutdown_grace": "1s"}
        d.update(daemon_keys or {})
        lines = ["[daemon]"] + ["%s = %s" % kv for kv in d.items()]
        lines += ["", '[provider "bench"]']
        lines += ["%s = %s" % kv for kv in provider_keys.items()]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("JOURNAL_STREAM", "SLUICE_CONFIG",
                                 "NOTIFY_SOCKET")}
        self.proc = None
        self.log_path = os.path.join(self.dir, "sluiced.log")

    def enqueue(self, path):
        """sluicectl enqueue of a JSONL file; returns seconds taken."""
        t = time.monotonic()
        r = subprocess.run([SLUICECTL, "-c", self.config, "enqueue",
                            "--provider", "bench", path], env=self.env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("enqueue failed (%d): %s"
                             % (r.returncode, r.stderr.strip()))
        return time.monotonic() - t

    def start(self, *args, prefix=()):
        """prefix: argv put before sluiced (perf record ... --)."""
        self.log = open(self.log_path, "wb")
        self.proc = spawn(list(prefix) + [SLUICED, "-c", self.config]
                          + list(args),
                          env=self.env, stdout=self.log, stderr=self.log,
                          stdin=subprocess.DEVNULL)
        return self

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit code (SIGKILL after timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def db_mib(self):
        return sum(os.path.getsize(self.db + x) for x in ("", "-wal")
                   if os.path.exists(self.db + x)) / 2**20

    def rows(self, sql):
        conn = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True,
                               timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


def token_size(i):
    """max_tokens of job i when sizes are mixed 10x: 100, 200, ... 1000."""
    return 100 * (1 + i % 10)


def write_jobs(path, n, prefix, start=0, tokens=False):
    """n OpenAI-Batch-style lines with custom ids PREFIX-<i> (the
    idempotency key, so the fake's log tells whose request it was).
    tokens: each body asks for max_tokens = token_size(i)."""
    with open(path, "w") as f:
        for i in range(start, start + n):
            extra = ',"max_tokens":%d' % token_size(i) if tokens else ""
            f.write('{"custom_id":"%s-%d","url":"/v1/images/generations",'
                    '"body":{"model":"bench-1","prompt":"a lighthouse at '
                    'dusk, variant %d","size":"1024x1024"%s}}\n'
                    % (prefix, i, i, extra))
    return path


def vm_status(pid):
    """VmRSS, VmHWM, RssAnon (heap: SQLite's page cache lives there) and
    RssFile of pid in KiB, from /proc (None when gone)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:",
                                    "RssFile:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        return None
    return out


def machine():
    """One line naming the machine and the date, for the README."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, nproc %d, %s, Linux %s, %s" % (
        datetime.date.today().isoformat(), os.cpu_count() or 0, model,
        platform.release(), "Python " + platform.python_version())


def table(header, rows):
    """A Markdown table; cells are str()'d."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def tempdir(prefix):
    """A scratch directory, removed afterwards unless $BENCH_KEEP is set
    (then its path is printed on stderr, logs and databases kept)."""
    if os.environ.get("BENCH_KEEP"):
        path = tempfile.mkdtemp(prefix=prefix)
        print("bench: keeping %s" % path, file=sys.stderr)
        return contextlib.nullcontext(path)
    return tempfile.TemporaryDirectory(prefix=prefix)


README = os.path.join(HERE, "README.md")


def update_readme(section, text):
    """Replaces the text between <!-- SECTION:begin --> and
    <!-- SECTION:end --> in bench/README.md (the markers stay)."""
    begin, end = "<!-- %s:begin -->" % section, "<!-- %s:end -->" % section
    with open(README) as f:
        doc = f.read()
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        raise SystemExit("bench/README.md has no %s ... %s markers"
                         % (begin, end))
    doc = doc[:i + len(begin)] + "\n" + text.strip() + "\n" + doc[j:]
    with open(README + ".tmp", "w") as f:
        f.write(doc)
    os.replace(README + ".tmp", README)
