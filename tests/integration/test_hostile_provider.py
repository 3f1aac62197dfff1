"""A provider that answers in bad faith (or by mistake), through the real
sluiced and sluicectl: hints decades ahead are cut to a day and said so in
the log; text with line breaks and terminal escapes forges no log line and
drives no terminal (escaped in every log line and human table; JSON output
escapes it already)."""
import json
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


FORGED = ("bad prompt\n2026-01-01T00:00:00.000Z job 99: gen succeeded\n"
          "<3>forged priority\r\x1b]0;owned\x07\x1b[2J\u009b31m red")


def test_provider_text_forges_no_log_line_and_drives_no_terminal():
    with Fake() as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake)},
                         env={"GEN_KEY": "sk-test"})
        script = [{"status": 400,
                   "body": {"error": "bad\x1b[31m_code", "message": FORGED}}]
        enqueue_ok(env, [{"custom_id": "evil", "url": "/images",
                          "body": {"prompt": "p",
                                   "_fake": {"script": script}}}],
                   "--provider", "gen", "--batch", "b\x1b[2Jatch")
        for journal in (False, True):
            if journal:
                # journald's stream: lines carry "<N>" priorities
                env.env["JOURNAL_STREAM"] = "8:1234"
                rc, out, err = env.ctl("retry", "evil")
                assert rc == 0, err
            rc, err = env.run_drain(60)
            assert rc == 0, err
            assert job(env, "evil")["error_message"] == FORGED
            lines = err.splitlines()
            assert not [l for l in lines if l.startswith("2026-01-01") or
                        l.startswith("<3>forged")], err
            assert [l for l in lines if "bad prompt" in l], err
            assert "\x1b" not in err and "\u009b" not in err, err
        env.env.pop("JOURNAL_STREAM")
        for cmd in (["jobs"], ["show", "evil"], ["failures"], ["status"]):
            rc, out, err = env.ctl(*cmd)
            assert rc == 0, (cmd, err)
            assert "\x1b" not in out and "\u009b" not in out and \
                "\r" not in out, (cmd, out)
            assert not [l for l in out.splitlines()
                        if l.startswith("2026-01-01")], (cmd, out)
        rc, out, err = env.ctl("show", "evil")
        assert "\\x1b]0;owned" in out, out
        # JSON keeps the text exactly (escaped by JSON itself)
        rc, out, err = env.ctl("show", "evil", "--json")
        assert json.loads(out)["error_message"] == FORGED


if __name__ == "__main__":
    run(globals())
