#!/usr/bin/env python3
"""Several sluiced on one database share one provider's limits (permits).

Two daemons, each configured for a fixed 6 requests at once, against a
provider that refuses a 7th: together they never have more than 6 out (the
provider's log, read as intervals, shows the peak; none is throttled), yet
both work. The same for a configured rate: together they stay under it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, run, wait_for, provider_conf, job_lines, enqueue_ok)


def peak_concurrency(log):
    """Most requests the fake was answering at once, from arrival times
    and durations. Both are whole milliseconds from two clocks (wall and
    monotonic), so each interval is trimmed by 1 ms at either end: an
    answer and the request its slot let out can share a millisecond."""
    edges = []
    for e in log:
        edges.append((e["t_ms"] + 1, 1))
        edges.append((e["t_ms"] + e["duration_ms"] - 1, -1))
    peak = cur = 0
    for _, delta in sorted(edges, key=lambda x: (x[0], x[1])):
        cur += delta
        peak = max(peak, cur)
    return peak


def two_daemons_drain(env, n):
    """Two sluiced --drain -v on the queue; asserts all n succeeded and
    that each daemon sent some."""
    a = env.daemon("--drain", "-v")
    b = env.daemon("--drain", "-v")
    owners = wait_for(lambda: env.rows("SELECT owner FROM daemons"), 20,
                      message="a daemon registered")
    assert a.wait(120) == 0, a.stderr_text()[-3000:]
    assert b.wait(120) == 0, b.stderr_text()[-3000:]
    states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
    assert states == [{"state": "succeeded", "n": n}], states
    sent = [d.stderr_text().count(" submit (attempt") for d in (a, b)]
    assert all(x > 0 for x in sent) and sum(sent) == n, sent
    print("requests sent by each daemon: %s" % sent)
    return owners, a, b


def test_two_daemons_never_exceed_concurrency_max_together():
    n, cap = 240, 6
    with Fake("--max-concurrent", cap, "--latency-ms", "150", "--quiet") \
            as fake, Env() as env:
        env.write_config(providers={"gen": provider_conf(
            fake, concurrency_start=cap, concurrency_max=cap, adaptive="no",
            timeout="5s")}, env={"GEN_KEY": "k"})
        enqueue_ok(env, job_lines(n), "--provider", "gen")
        two_daemons_drain(env, n)
        log = fake.log()
        ledger = fake.ledger()
        peak = peak_concurrency(log)
        assert ledger["throttled"] == 0, ledger["throttled"]
        assert peak <= cap, "peak %d in flight at the provider" % peak
        assert ledger["executions"] == n, ledger["executions"]
        print("peak %d in flight of %d allowed, %d requests"
              % (peak, cap, len(log)))


def test_two_daemons_stay_under_a_configured_rate_together():
    n, rate = 120, 20
    with Fake("--latency-ms", "20", "--quiet") as fake, Env() as env:
        env.write_config(providers={"gen": provider_conf(
            fake, concurrency_start=8, concurrency_max=8, adaptive="no",
            rate_limit="%d/s" % rate, timeout="5s")}, env={"GEN_KEY": "k"})
        enqueue_ok(env, job_lines(n), "--provider", "gen")
        two_daemons_drain(env, n)
        times = sorted(e["t_ms"] for e in fake.log())
        assert len(times) == n, len(times)
        # any one second holds at most the rate and its burst (a tenth of
        # a second of it): alone, each daemon would send the whole rate
        worst = max(sum(1 for t in times if t0 <= t < t0 + 1000)
                    for t0 in times)
        assert worst <= rate * 1.1 + 1, "%d requests in one second" % worst
        print("at most %d requests in any second at %d/s" % (worst, rate))


if __name__ == "__main__":
    run(globals())
