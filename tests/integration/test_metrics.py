#!/usr/bin/env python3
"""/metrics: scraped from a real sluiced while a batch runs against the
fake provider, checked with `promtool check metrics` (Debian package
prometheus: scripts/deps.sh installs it; a missing promtool fails the
test) and asserted on values: jobs by state, requests and failures by
class, throttles, the lane's limit and state, the commit histogram.
"""
import os
import re
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Env, Fake, enqueue_ok, http, job_lines,  # noqa: E402
                     provider_conf, run, wait_for)

SAMPLE = re.compile(r'^([a-z_:][a-z0-9_:]*)(\{[^}]*\})? (\S+)$')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def promtool():
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError("promtool not found: install the Debian package "
                             "prometheus (bash scripts/deps.sh)")
    return path


def scrape(url):
    status, headers, body = http("GET", url)
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), \
        headers
    return body.decode()


def parse(text):
    """{(name, frozenset(labels)): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"',
                                      m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def check_promtool(text):
    r = subprocess.run([promtool(), "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=30)
    # promtool prints lint problems and exits 1 on any; the output
    # must be clean, not just parseable.
    assert r.returncode == 0 and not r.stdout.strip() \
        and not r.stderr.strip(), (r.returncode, r.stdout, r.stderr, text)


def test_scraped_while_a_batch_runs_and_valid_for_promtool():
    promtool()
    port = free_port()
    url = "http://127.0.0.1:%d/metrics" % port
    with Fake("--latency-ms", "150") as fake, Env() as env:
        env.write_config(
            providers={"gen": provider_conf(fake, concurrency_start=4)},
            daemon={"metrics": "127.0.0.1:%d" % port},
            env={"GEN_KEY": "k"})
        # one job answers after 6 s: the batch is surely running when a
        # snapshot (once a second) is taken, however loaded the machine
        ok = job_lines(29, "ok") + job_lines(1, "slow",
                                             script=[{"delay_ms": 6000}])
        bad = job_lines(3, "bad", script=[{"status": 400}])
        # one throttle each, then success: a deferral, not a failure of
        # the job (the request still failed, class rate_limited)
        slow = job_lines(2, "thr", script=[
            {"status": 429, "headers": {"Retry-After": "1"}},
            {"status": 200}])
        enqueue_ok(env, ok + bad + slow, "--provider", "gen",
                   "--batch", "m1")
        d = env.daemon()

        def running():
            try:
                s = parse(scrape(url))
            except OSError:
                return None
            inflight = value(s, "sluice_lane_in_flight", provider="gen")
            return s if inflight and inflight > 0 else None

        during = wait_for(running, 30, interval=0.1,
                          message="a scrape with requests in flight")
        text = scrape(url)
        check_promtool(text)
        assert value(during, "sluice_lane_limit", provider="gen") == 4
        assert value(during, "sluice_lane_state", provider="gen",
                     state="active") == 1
        assert value(during, "sluice_lane_state", provider="gen",
                     state="paused") == 0
        total = sum(value(during, "sluice_jobs", provider="gen", state=st)
                    for st in ("queued", "running", "waiting", "retrying",
                               "succeeded", "failed", "cancelled"))
        assert total == 35, total

        def finished():
            s = parse(scrape(url))
            done = value(s, "sluice_jobs", provider="gen", state="succeeded")
            return s if done == 32 else None

        after = wait_for(finished, 60, interval=0.5,
                         message="32 succeeded in sluice_jobs")
        check_promtool(scrape(url))
        assert value(after, "sluice_jobs", provider="gen",
                     state="failed") == 3
        assert value(after, "sluice_jobs", provider="gen",
                     state="queued") == 0
        # 30 + 3 + 2×2 requests, each counted once when it finished
        assert value(after, "sluice_requests_total", provider="gen") == 37
        assert value(after, "sluice_request_failures_total", provider="gen",
                     **{"class": "invalid_request"}) == 3
        assert value(after, "sluice_request_failures_total", provider="gen",
                     **{"class": "rate_limited"}) == 2
        assert value(after, "sluice_throttled_requests_total",
                     provider="gen") == 2
        assert value(after, "sluice_lane_in_flight", provider="gen") == 0
        assert value(after, "sluice_oldest_queued_job_age_seconds",
                     provider="gen") == 0
        # no provider downloads here: the gauges are there, at 0
        assert value(after, "sluice_outputs", state="pending") == 0
        assert value(after, "sluice_outputs", state="failed") == 0
        commits = value(after, "sluice_commit_duration_seconds_count")
        assert commits and commits >= 1, commits
        assert value(after, "sluice_commit_duration_seconds_bucket",
                     le="+Inf") == commits
        claims = value(after, "sluice_claim_duration_seconds_count")
        assert claims and claims >= 1, claims
        assert value(after, "sluice_claim_duration_seconds_bucket",
                     le="+Inf") == claims
        assert len(fake.log()) == 37

        status, _, _ = http("GET", "http://127.0.0.1:%d/other" % port)
        assert status == 404
        status, _, _ = http("POST", url, body="x")
        assert status == 405
        d.signal(15)
        assert d.wait() == 0


def test_oldest_queued_age_grows_while_jobs_wait_for_a_slot():
    port = free_port()
    # IPv6 loopback where the machine has it: the bracketed form works
    host = "[::1]" if ipv6_loopback() else "127.0.0.1"
    url = "http://%s:%d/metrics" % (host, port)
    with Fake() as fake, Env() as env:
        conf = provider_conf(fake, concurrency_start=1)
        env.write_config(providers={"gen": conf},
                         daemon={"metrics": "%s:%d" % (host, port)},
                         env={"GEN_KEY": "k"})
        # every job waits 2 s at the provider: with one slot, the last
        # one stays queued for 6 s
        enqueue_ok(env, job_lines(4, "w", script=[{"delay_ms": 2000}]),
                   "--provider", "gen")
        d = env.daemon()

        def aged():
            try:
                s = parse(scrape(url))
            except OSError:
                return None
            age = value(s, "sluice_oldest_queued_job_age_seconds",
                        provider="gen")
            return age if age is not None and age >= 1.0 else None

        age = wait_for(aged, 30, interval=0.2,
                       message="oldest queued age of a second")
        assert age < 60, age
        check_promtool(scrape(url))
        d.signal(15)
        assert d.wait() == 0


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def test_bad_metrics_address_is_a_config_error():
    with Env() as env:
        env.write_config(providers={}, daemon={"metrics": "localhost:9464"})
        d = env.daemon("-c", env.config_path, "--check", config=False)
        assert d.wait() == 78
        assert "metrics: bad address 'localhost:9464'" in d.stderr_text(), \
            d.stderr_text()


def test_address_in_use_stops_the_daemon_with_a_reason():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        with Fake() as fake, Env() as env:
            env.write_config(providers={"gen": provider_conf(fake)},
                             daemon={"metrics": "127.0.0.1:%d" % port},
                             env={"GEN_KEY": "k"})
            d = env.daemon()
            assert d.wait() == 1
            assert "metrics: cannot listen on 127.0.0.1:%d" % port \
                in d.stderr_text(), d.stderr_text()
    finally:
        blocker.close()


if __name__ == "__main__":
    run(globals())
