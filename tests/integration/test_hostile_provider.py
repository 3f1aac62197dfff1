"""A provider that answers in bad faith (or by mistake), through the real
sluiced: hints decades ahead are cut to a day and said so in the log."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, enqueue_ok, provider_conf, run, wait_for)

DAY_MS = 24 * 3600 * 1000


def job(env, cid):
    rows = env.rows("SELECT * FROM jobs WHERE custom_id = ?", cid)
    assert len(rows) == 1, (cid, rows)
    return rows[0]


def test_retry_after_of_decades_defers_a_day_at_most():
    with Fake() as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake)},
                         env={"GEN_KEY": "sk-test"})
        script = [{"status": 429, "headers": {"Retry-After": "999999999"}}]
        enqueue_ok(env, [{"custom_id": "far", "url": "/images",
                          "body": {"prompt": "p",
                                   "_fake": {"script": script}}}],
                   "--provider", "gen")
        d = env.daemon()
        before = int(time.time() * 1000)
        wait_for(lambda: job(env, "far")["state"] == "retrying", 30,
                 message="the job deferred")
        j = job(env, "far")
        assert before < j["run_after"] <= before + DAY_MS + 60000, j
        wait_for(lambda: "capped at 86400 s" in d.stderr_text(), 10,
                 message="the cap in the log")
        # 999999999 s, or one less by the time it is logged
        assert "asked to wait 99999999" in d.stderr_text(), d.stderr_text()
        d.kill()


if __name__ == "__main__":
    run(globals())
