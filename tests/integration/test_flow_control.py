"""Flow control end to end (docs/design.md §6): the real sluiced against the real
fake provider on loopback. A 402 answered while other requests are in
flight keeps the provider paused when those succeed; one hinted 429 under
a concurrency cap defers its job while the other slots keep working; a
window with nothing left pauses the lane until its reset; an absurd reset
parks the lane for a day at most, visibly, until sluicectl resume."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, run, wait_for, provider_conf, job_lines, enqueue_ok,
    drain_ok)


def scripted(custom_id, script):
    return {"custom_id": custom_id, "url": "/v1/images",
            "body": {"prompt": custom_id, "_fake": {"script": script}}}


def provider_row(env):
    rows = env.rows("SELECT * FROM providers WHERE name = 'gen'")
    return rows[0] if rows else None


def test_402_with_requests_in_flight_stays_paused():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"gen": provider_conf(
            fake, concurrency_start=5, probe_interval="1h")},
            env={"GEN_KEY": "k"})
        # five go out at once: the first is refused for the balance, the
        # other four were sent before that and succeed after it
        lines = [scripted("broke", [{"status": 402, "delay_ms": 200}])]
        lines += [scripted("late-%d" % i, [{"status": 200,
                                            "delay_ms": 1500}])
                  for i in range(4)]
        lines += job_lines(5, prefix="after")
        enqueue_ok(env, lines, "--provider", "gen")
        err = drain_ok(env)
        row = provider_row(env)
        assert row["state"] == "paused", (row, err)
        assert "insufficient_balance" in row["reason"], row
        states = {r["custom_id"]: r["state"] for r in
                  env.rows("SELECT custom_id, state FROM jobs")}
        assert all(states["late-%d" % i] == "succeeded" for i in range(4))
        # the successes did not resume it: nothing else was sent
        assert states["broke"] == "queued", states
        assert all(states["after-%d" % i] == "queued" for i in range(5))
        assert len(fake.log()) == 5, [e["key"] for e in fake.log()]


def test_hinted_429_under_a_concurrency_cap_defers_one_job_only():
    with Fake("--quiet", "--max-concurrent", "4", "--latency-ms", "300",
              "--retry-after", "1") as fake, Env() as env:
        env.write_config({"gen": provider_conf(
            fake, adaptive="yes", concurrency_start=5, concurrency_max=8)},
            env={"GEN_KEY": "k"})
        enqueue_ok(env, job_lines(16), "--provider", "gen")
        drain_ok(env)
        states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
        assert states == [{"state": "succeeded", "n": 16}], states
        log = fake.log()
        refused = [e for e in log if e["status"] == 429]
        assert refused, "the cap was never reached"
        first = refused[0]["t_ms"]
        # the other slots kept working: new requests went out and were
        # answered within the refused one's Retry-After
        soon = [e for e in log if first < e["t_ms"] < first + 900
                and e["status"] == 200]
        assert len(soon) >= 2, [(e["t_ms"] - first, e["status"])
                                for e in log]
        # the refused job came back after its hint, as a deferral
        again = [e for e in log if e["key"] == refused[0]["key"]
                 and e["t_ms"] > first]
        assert again and again[0]["t_ms"] >= first + 1000, again
        deferred = env.rows("SELECT count(*) n FROM jobs "
                            "WHERE deferrals > 0")[0]["n"]
        assert 1 <= deferred <= len(refused), (deferred, len(refused))
        assert env.rows("SELECT max(attempts) m FROM jobs")[0]["m"] == 1
        row = provider_row(env)
        assert row["state"] == "active" and row["pause_until"] is None, row


def test_window_with_nothing_left_pauses_the_lane_until_its_reset():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake, concurrency_start=1)},
                         env={"GEN_KEY": "k"})
        reset_s = int(time.time()) + 3
        shut = {"status": 429, "headers": {
            "X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_s)}}
        lines = [scripted("first", [shut, {"status": 200}])]
        lines += job_lines(3, prefix="next")
        enqueue_ok(env, lines, "--provider", "gen")
        drain_ok(env)
        log = fake.log()
        assert log[0]["key"] == "gen-first" or log[0]["status"] == 429, log
        refused = [e for e in log if e["status"] == 429]
        assert len(refused) == 1, log
        after = [e for e in log if e["t_ms"] > refused[0]["t_ms"]]
        assert len(after) == 4, log
        # nothing at all went out before the window's reset
        assert min(e["t_ms"] for e in after) >= reset_s * 1000, \
            (reset_s * 1000 - min(e["t_ms"] for e in after))
        states = env.rows("SELECT state, count(*) n FROM jobs GROUP BY state")
        assert states == [{"state": "succeeded", "n": 4}], states


def test_absurd_reset_and_retry_after_are_capped_at_a_day_and_visible():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake, concurrency_start=1)},
                         env={"GEN_KEY": "k"})
        ten_years = int(time.time()) + 10 * 365 * 86400
        shut = {"status": 429, "headers": {
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(ten_years)}}
        slow = {"status": 503, "headers": {"Retry-After": "999999999"}}
        enqueue_ok(env, [scripted("hint", [slow, {"status": 200}])],
                   "--provider", "gen")
        d = env.daemon()
        # one 503 with an absurd Retry-After: that job waits a day at most
        wait_for(lambda: env.rows("SELECT deferrals FROM jobs")[0]
                 ["deferrals"] == 1, 20)
        now_ms = time.time() * 1000
        run_after = env.rows("SELECT run_after FROM jobs")[0]["run_after"]
        assert run_after <= now_ms + 86400 * 1000 + 5000, run_after - now_ms
        assert run_after >= now_ms + 86400 * 1000 - 60000, run_after - now_ms
        enqueue_ok(env, [scripted("shut", [shut, {"status": 200}])],
                   "--provider", "gen")
        # a reset ten years away: parked for a day, and the reason says so
        wait_for(lambda: (provider_row(env) or {}).get("state") == "parked",
                 20, message="lane parked")
        row = provider_row(env)
        now_ms = time.time() * 1000
        assert now_ms + 86400 * 1000 - 60000 <= row["pause_until"] \
            <= now_ms + 86400 * 1000 + 5000, row
        assert "capped at 24 h" in row["reason"], row
        rc, out, err = env.ctl("status")
        assert rc == 0 and "parked" in out, (out, err)
        # the operator's resume clears it at once: new work flows (the two
        # deferred jobs keep their own capped hints: sluicectl retry)
        rc, out, err = env.ctl("resume", "gen")
        assert rc == 0, err
        wait_for(lambda: provider_row(env)["state"] == "active", 10,
                 message="lane active")
        assert provider_row(env)["pause_until"] is None
        enqueue_ok(env, job_lines(1, prefix="fresh"), "--provider", "gen")
        wait_for(lambda: env.rows("SELECT state FROM jobs WHERE "
                                  "custom_id = 'fresh-0'")[0]["state"]
                 == "succeeded", 20, message="new job ran after resume")
        d.signal(15)
        assert d.wait() == 0


if __name__ == "__main__":
    run(globals())
