#!/usr/bin/env python3
"""sluicectl failures, retry, cancel, resume, export, watch and purge against
a database filled by a real sluiced run on the fake provider (loopback).

Each test builds its own night: jobs that succeed, fail for good (400),
time out until they run out of attempts (504), and a batch cancelled before
it starts; then asks the tool the night's questions and checks the rows.
Bad input to every command: a clear message and exit code of docs/contract.md.
"""
import json
import os
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SLUICECTL, Env, Fake, run, wait_for  # noqa: E402

EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CONFIG = 64, 65, 66, 78
DAY_MS = 86400 * 1000


def provider(fake, **kw):
    conf = {
        "dialect": "openai",
        "base_url": fake.url + "/openai",
        "auth": "none",
        "concurrency_start": "8",
        "adaptive": "no",
        "backoff_base": "10ms",
        "backoff_cap": "50ms",
        "timeout": "10s",
    }
    conf.update({k: str(v) for k, v in kw.items()})
    return conf


def job(custom_id, script=None, **extra):
    body = {"prompt": "image " + custom_id}
    if script is not None:
        body["_fake"] = {"script": script}
    d = {"custom_id": custom_id, "url": "/v1/images", "body": body}
    d.update(extra)
    return d


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def ok(env, *args):
    rc, out, err = env.ctl(*args)
    check(rc == 0, "sluicectl %s: rc %d: %s" % (" ".join(args), rc, err))
    return out


def state_of(env, custom_id):
    return env.rows("SELECT state FROM jobs WHERE custom_id = ?",
                    custom_id)[0]["state"]


def night(fake, env):
    """Batch n1: 4 successes, 3 invalid requests (400), 2 timeouts (504
    twice, with 2 attempts allowed; a third request would succeed). Batch
    later: 3 jobs cancelled before the daemon runs."""
    # max_attempts in the config: the daemon's retry policy reads the
    # provider's (a line's own max_attempts is stored but not used by it)
    env.write_config(providers={"gen": provider(fake, max_attempts=2)})
    lines = [job("ok-%d" % i) for i in range(4)]
    lines += [job("bad-%d" % i, [{"status": 400}]) for i in range(3)]
    lines += [job("slow-%d" % i, [{"status": 504}, {"status": 504},
                                  {"status": 200}])
              for i in range(2)]
    rc, out, err = env.enqueue_lines(lines, "--provider", "gen",
                                     "--batch", "n1")
    check(rc == 0, err)
    rc, out, err = env.enqueue_lines([job("later-%d" % i) for i in range(3)],
                                     "--provider", "gen", "--batch", "later")
    check(rc == 0, err)
    out = ok(env, "cancel", "--batch", "later")
    check(out.strip() == "3 jobs cancelled", out)
    rc, err = env.run_drain(60)
    check(rc == 0, err)
    states = {r["state"]: r["n"] for r in env.rows(
        "SELECT state, count(*) AS n FROM jobs GROUP BY state")}
    check(states == {"succeeded": 4, "failed": 5, "cancelled": 3}, states)


# --- failures --------------------------------------------------------------


def test_failures_group_by_provider_class_and_code_with_request_ids():
    with Fake() as fake, Env() as env:
        night(fake, env)
        groups = json.loads(ok(env, "failures", "--json"))
        by = {(g["provider"], g["error_class"], g["error_code"]): g
              for g in groups}
        check(set(by) == {("gen", "invalid_request", "invalid_request_error"),
                          ("gen", "timeout", "gateway_timeout")}, by)
        bad = by[("gen", "invalid_request", "invalid_request_error")]
        check(bad["count"] == 3 and bad["http_status"] == 400, bad)
        check(groups[0] is not None and groups[0]["count"] == 3,
              "largest group first")
        check(len(bad["sample_request_ids"]) == 3, bad)
        check(all(r.startswith("req_") for r in bad["sample_request_ids"]),
              bad)
        check(bad["first_seen"] <= bad["last_seen"], bad)
        check(bad["message"], "provider message kept: %r" % bad)
        real = {r["request_id"] for r in env.rows(
            "SELECT request_id FROM failures WHERE error_class = "
            "'invalid_request'")}
        check(set(bad["sample_request_ids"]) <= real, (bad, real))

        out = ok(env, "failures")
        lines = out.splitlines()
        head = lines[0]
        check(head.split()[:3] == ["PROVIDER", "CLASS", "CODE"], head)
        row = [ln for ln in lines if "gateway_timeout" in ln][0]
        check(row[head.index("COUNT"):].split()[0] == "2", row)
        check("req_" in row and "504" in row, row)
        check("5 failed jobs in 2 groups" in out, out)


def test_failures_filters_by_batch_provider_and_since():
    with Fake() as fake, Env() as env:
        night(fake, env)
        check(json.loads(ok(env, "failures", "--json", "--batch", "later"))
              == [], "batch later has no failures")
        check(len(json.loads(ok(env, "failures", "--json", "--batch", "n1",
                                "--provider", "gen"))) == 2, "n1 gen")
        check(json.loads(ok(env, "failures", "--json", "--provider",
                            "other")) == [], "no such provider: none")
        # age the timeouts two hours: --since 1h keeps only the 400s
        with sqlite3.connect(env.db_path) as db:
            db.execute("UPDATE jobs SET finished_at = finished_at - 7200000 "
                       "WHERE error_class = 'timeout'")
        recent = json.loads(ok(env, "failures", "--json", "--since", "1h"))
        check([g["error_class"] for g in recent] == ["invalid_request"],
              recent)
        check(ok(env, "failures", "--batch", "later").strip()
              == "no failures", "empty answer is said")


# --- retry -----------------------------------------------------------------


def test_retry_just_the_timeouts_resends_the_same_key_and_succeeds():
    with Fake() as fake, Env() as env:
        night(fake, env)
        before = {r["custom_id"]: r for r in env.rows(
            "SELECT custom_id, idempotency_key FROM jobs "
            "WHERE custom_id LIKE 'slow-%'")}
        out = ok(env, "retry", "--state", "failed", "--class", "timeout",
                 "--batch", "n1")
        check(out.strip() == "2 jobs retried", out)
        rows = env.rows("SELECT custom_id, state, attempts, deferrals, "
                        "send_key, finished_at, error_class FROM jobs "
                        "WHERE custom_id LIKE 'slow-%'")
        for r in rows:
            check(r["state"] == "queued" and r["attempts"] == 0, r)
            check(r["send_key"] is None and r["finished_at"] is None, r)
            check(r["error_class"] == "timeout", "last failure kept: %r" % r)
        check(all(state_of(env, "bad-%d" % i) == "failed" for i in range(3)),
              "the 400s were not retried")

        rc, err = env.run_drain(60)
        check(rc == 0, err)
        for cid, r in before.items():
            check(state_of(env, cid) == "succeeded", cid)
            check(fake.ledger()["keys"][r["idempotency_key"]]["requests"]
                  == 3, "same key sent again for %s" % cid)
            cleared = env.rows("SELECT error_class FROM jobs "
                               "WHERE custom_id = ?", cid)[0]
            check(cleared["error_class"] is None, "success clears it")


def test_retry_by_id_and_custom_id_in_one_transaction():
    with Fake() as fake, Env() as env:
        night(fake, env)
        bad1 = env.rows("SELECT id FROM jobs WHERE custom_id = 'bad-1'")[0]
        out = ok(env, "retry", str(bad1["id"]), "bad-2", "ok-0")
        check(out.strip() == "2 jobs retried, 1 left as it was "
              "(not failed or cancelled)", out)
        check(state_of(env, "bad-1") == "queued", "by id")
        check(state_of(env, "bad-2") == "queued", "by custom_id")
        check(state_of(env, "ok-0") == "succeeded", "success untouched")
        # one unknown id: nothing at all changes
        rc, out, err = env.ctl("retry", "bad-0", "no-such-job")
        check(rc == 1, "rc %d" % rc)
        check("retry: no job 'no-such-job'" in err, err)
        check(state_of(env, "bad-0") == "failed", "rolled back")
        res = json.loads(ok(env, "retry", "--json", "later-0"))
        check(res == {"changed": 1, "skipped": 0}, res)
        check(state_of(env, "later-0") == "queued", "cancelled is retried")


def test_retry_bad_input_exits_64_with_valid_names():
    with Fake() as fake, Env() as env:
        night(fake, env)
        cases = [
            (["retry"], "needs IDs"),
            (["retry", "--class", "timeout"], "needs IDs"),
            (["retry", "--state", "done"], "succeeded"),
            (["retry", "--state", "queued"], "failed cancelled"),
            (["retry", "--state", "failed", "--class", "slow"],
             "rate_limited"),
            (["retry", "5", "--state", "failed"], "not both"),
        ]
        for args, word in cases:
            rc, out, err = env.ctl(*args)
            check(rc == EX_USAGE, "%s: rc %d" % (args, rc))
            check(word in err, "%s: %r not in %r" % (args, word, err))
        check(env.rows("SELECT count(*) AS n FROM jobs WHERE state = "
                       "'queued'")[0]["n"] == 0, "nothing changed")


# --- cancel ----------------------------------------------------------------


def test_cancel_by_batch_before_the_run_never_reaches_the_provider():
    with Fake() as fake, Env() as env:
        night(fake, env)
        rows = env.rows("SELECT state, finished_at, idempotency_key FROM "
                        "jobs WHERE batch = 'later'")
        check(all(r["state"] == "cancelled" and r["finished_at"]
                  for r in rows), rows)
        keys = fake.ledger()["keys"]
        check(not any(r["idempotency_key"] in keys for r in rows),
              "a cancelled job was sent")
        # terminal jobs are not cancelled again
        out = ok(env, "cancel", "ok-1", "later-1")
        check(out.strip().startswith("0 jobs cancelled, 2 left"), out)
        rc, out, err = env.ctl("cancel", "nope")
        check(rc == 1 and "cancel: no job 'nope'" in err, (rc, err))
        rc, out, err = env.ctl("cancel")
        check(rc == EX_USAGE and "--batch" in err, (rc, err))
        rc, out, err = env.ctl("cancel", "--batch", "n1", "--state",
                               "failed")
        check(rc == EX_USAGE and "queued" in err, (rc, err))


def test_cancel_of_a_running_job_aborts_its_transfer():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(fake)})
        rc, out, err = env.enqueue_lines(
            [job("stuck", [{"status": 200, "delay_ms": 4000}]),
             job("quick")], "--provider", "gen", "--batch", "b")
        check(rc == 0, err)
        d = env.daemon()
        wait_for(lambda: state_of(env, "stuck") == "running", 20,
                 message="stuck job running")
        t0 = time.monotonic()
        # the tool works while the daemon runs
        watch = ok(env, "watch", "--once", "--batch", "b")
        check("batch b/gen" in watch, watch)
        out = ok(env, "cancel", "stuck")
        check(out.strip() == "1 job cancelled", out)
        wait_for(lambda: "cancelled in flight" in d.stderr_text(), 10,
                 message="daemon aborts the transfer")
        check(time.monotonic() - t0 < 3.5, "aborted before the answer came")
        wait_for(lambda: state_of(env, "quick") == "succeeded", 20)
        check(state_of(env, "stuck") == "cancelled", "stays cancelled")
        d.signal(15)
        check(d.wait(30) == 0, d.stderr_text())
        check(state_of(env, "stuck") == "cancelled", "after the stop too")
        n = env.rows("SELECT count(*) AS n FROM attempts a JOIN jobs j "
                     "ON j.id = a.job_id WHERE j.custom_id = 'stuck'")[0]
        check(n["n"] == 0, "an aborted transfer is no attempt")


# --- resume ----------------------------------------------------------------


def test_resume_unpauses_a_provider_paused_for_balance():
    with Fake() as fake, Env() as env:
        env.write_config(providers={"gen": provider(
            fake, concurrency_start=1, probe_interval="1h")})
        rc, out, err = env.enqueue_lines(
            [job("broke", [{"status": 402}, {"status": 200}]),
             job("next-0"), job("next-1")], "--provider", "gen")
        check(rc == 0, err)
        d = env.daemon()
        wait_for(lambda: env.rows("SELECT state FROM providers WHERE name "
                                  "= 'gen' AND state = 'paused'"), 20,
                 message="provider paused")
        time.sleep(0.3)  # integration: let a wrongly running lane show
        check(state_of(env, "next-1") == "queued", "paused lane holds jobs")
        status = json.loads(ok(env, "status", "--json"))
        lane = [ln for ln in status["lanes"] if ln["name"] == "gen"][0]
        check(lane["state"] == "paused", lane)

        out = ok(env, "resume", "gen")
        check("gen: resume requested (was paused" in out, out)
        wait_for(lambda: all(state_of(env, c) == "succeeded"
                             for c in ("broke", "next-0", "next-1")), 20,
                 message="jobs run after resume")
        d.signal(15)
        check(d.wait(30) == 0, d.stderr_text())

        rc, out, err = env.ctl("resume", "nope")
        check(rc == 1, "rc %d" % rc)
        check("no provider 'nope'" in err and "gen" in err, err)
        rc, out, err = env.ctl("resume")
        check(rc == EX_USAGE, "rc %d" % rc)


# --- export ----------------------------------------------------------------


def test_export_writes_openai_batch_shaped_lines():
    with Fake() as fake, Env() as env:
        night(fake, env)
        path = os.path.join(env.path, "results.jsonl")
        rc, out, err = env.ctl("export", "--batch", "n1", path)
        check(rc == 0, err)
        check("9 results written to %s" % path in err, err)
        with open(path) as f:
            lines = [json.loads(ln) for ln in f]
        by = {ln["custom_id"]: ln for ln in lines}
        check(sorted(by) == sorted(["ok-%d" % i for i in range(4)] +
                                   ["bad-%d" % i for i in range(3)] +
                                   ["slow-0", "slow-1"]), sorted(by))
        good = by["ok-0"]
        check(set(good) >= {"custom_id", "response", "error"}, good)
        check(good["error"] is None, good)
        check(good["response"]["status_code"] == 200, good)
        check(good["response"]["request_id"].startswith("req_"), good)
        check(good["response"]["body"]["object"] == "generation", good)
        bad = by["bad-0"]
        check(bad["response"]["status_code"] == 400, bad)
        check(bad["error"]["code"] == "invalid_request_error", bad)
        check(bad["error"]["message"], bad)
        req = env.rows("SELECT request_id FROM jobs WHERE custom_id = "
                       "'bad-0'")[0]["request_id"]
        check(bad["response"]["request_id"] == req, (bad, req))

        # stdout, and --state
        out = ok(env, "export", "--state", "cancelled")
        lines = [json.loads(ln) for ln in out.splitlines()]
        check(len(lines) == 3, out)
        check(all(ln["error"]["code"] == "cancelled"
                  and ln["response"] is None for ln in lines), lines)

        rc, out, err = env.ctl("export", "/nonexistent/dir/out.jsonl")
        check(rc == 1, "rc %d" % rc)
        check("/nonexistent/dir/out.jsonl" in err, err)
        rc, out, err = env.ctl("export", "--state", "finished")
        check(rc == EX_USAGE and "succeeded" in err, (rc, err))


# --- watch and status ------------------------------------------------------


def test_watch_once_prints_progress_and_lanes_as_plain_lines():
    with Fake() as fake, Env() as env:
        night(fake, env)
        out = ok(env, "watch", "--once")
        check("\033[" not in out, "no ANSI without a TTY: %r" % out)
        n1 = [ln for ln in out.splitlines() if "batch n1/gen" in ln]
        check(n1 and " 9/9 100%" in n1[0], out)
        check("ok 4 failed 5" in n1[0], n1)
        later = [ln for ln in out.splitlines() if "batch later/gen" in ln]
        check(later and "cancelled 3" in later[0], out)
        check(any(" provider gen " in ln for ln in out.splitlines()), out)
        out = ok(env, "watch", "--once", "--batch", "none-such")
        check("no jobs in this batch" in out, out)

        rows = env.rows("SELECT * FROM batch_progress WHERE batch = 'n1'")
        check(rows[0]["done"] == 9 and rows[0]["remaining"] == 0, rows)
        check(rows[0]["done_last_minute"] == 9, rows)
        check(rows[0]["eta_s"] is None, "nothing left: no ETA")


def test_watch_redraws_until_interrupted():
    with Fake() as fake, Env() as env:
        night(fake, env)
        p = subprocess.Popen([SLUICECTL, "-c", env.config_path,
                              "watch", "--batch", "n1"],
                             stdout=subprocess.PIPE, text=True, env=env.env)
        first = p.stdout.readline()
        second = p.stdout.readline()
        third = p.stdout.readline()
        p.send_signal(2)
        p.stdout.read()
        check(p.wait(10) == 0, "SIGINT ends watch with 0")
        check("batch n1/gen" in first and "batch n1/gen" in third,
              (first, second, third))
        check(second.split()[1:3] == ["provider", "gen"], second)


# --- purge -----------------------------------------------------------------


def test_purge_deletes_old_finished_jobs_and_their_attempts():
    with Fake() as fake, Env() as env:
        night(fake, env)
        # a queued job that is old must survive: only finished jobs go
        rc, out, err = env.enqueue_lines([job("waiting-0")], "--provider",
                                         "gen")
        check(rc == 0, err)
        with sqlite3.connect(env.db_path) as db:
            db.execute("UPDATE jobs SET finished_at = finished_at - ? , "
                       "created_at = created_at - ? WHERE batch = 'n1' "
                       "OR custom_id = 'waiting-0'",
                       (40 * DAY_MS, 40 * DAY_MS))
        attempts_old = env.rows(
            "SELECT count(*) AS n FROM attempts WHERE job_id IN "
            "(SELECT id FROM jobs WHERE batch = 'n1' AND state = 'failed')"
        )[0]["n"]
        check(attempts_old == 7, "3 + 2x2 attempts, got %d" % attempts_old)

        out = ok(env, "purge", "--older-than", "30d", "--state", "failed")
        check(out.startswith("5 jobs purged (7 attempts)"), out)
        res = json.loads(ok(env, "purge", "--older-than", "30d", "--json"))
        check(res["jobs"] == 4 and res["attempts"] == 4, res)
        left = {r["custom_id"] for r in env.rows("SELECT custom_id FROM "
                                                 "jobs")}
        check(left == {"later-0", "later-1", "later-2", "waiting-0"}, left)
        check(env.rows("SELECT count(*) AS n FROM attempts")[0]["n"] == 0,
              "attempts of purged jobs are gone")
        check(env.rows("PRAGMA auto_vacuum")[0]["auto_vacuum"] == 2,
              "new databases vacuum incrementally")
        check(env.rows("PRAGMA freelist_count")[0]["freelist_count"] == 0,
              "space given back")
        res = json.loads(ok(env, "purge", "--older-than", "1h", "--json"))
        check(res["jobs"] == 0, "recent jobs stay: %r" % res)


def test_purge_bad_input_exits_64():
    with Fake() as fake, Env() as env:
        night(fake, env)
        for args, word in ((["purge"], "--older-than"),
                           (["purge", "--older-than", "soon"], "duration"),
                           (["purge", "--older-than", "30d", "--state",
                             "queued"], "succeeded failed cancelled"),
                           (["failures", "--since", "5x"], "duration")):
            rc, out, err = env.ctl(*args)
            check(rc == EX_USAGE, "%s: rc %d" % (args, rc))
            check(word in err, "%s: %r in %r" % (args, word, err))
        check(env.rows("SELECT count(*) AS n FROM jobs")[0]["n"] == 12,
              "nothing deleted")


# --- every command: --help, missing database, unreadable input -------------


COMMANDS = ["failures", "retry", "cancel", "resume", "export", "watch",
            "purge"]


def test_every_command_has_help_and_reports_a_missing_database():
    with Env() as env:
        env.write_config(providers={"gen": {"dialect": "openai",
                                            "base_url": "http://127.0.0.1:9",
                                            "auth": "none"}})
        for cmd in COMMANDS:
            rc, out, err = env.ctl(cmd, "--help")
            check(rc == 0 and out.startswith("usage: sluicectl") and
                  cmd in out, "%s --help: %d %r" % (cmd, rc, out))
        rc, out, err = env.ctl("help")
        for cmd in COMMANDS:
            check(cmd in out, "%s missing from help" % cmd)
        args = {"retry": ["retry", "1"], "cancel": ["cancel", "1"],
                "resume": ["resume", "gen"],
                "purge": ["purge", "--older-than", "1d"],
                "watch": ["watch", "--once"]}
        for cmd in COMMANDS:
            rc, out, err = env.ctl(*args.get(cmd, [cmd]))
            check(rc == EX_NOINPUT, "%s: rc %d" % (cmd, rc))
            check(env.db_path in err, err)
        check(not os.path.exists(env.db_path), "database created")


def test_bulk_enqueue_names_the_exact_bad_line_past_many_chunks():
    with Env() as env:
        env.write_config(providers={"gen": {"dialect": "openai",
                                            "base_url": "http://127.0.0.1:9",
                                            "auth": "none"}})
        lines = [job("j-%d" % i) for i in range(5000)]
        lines[4321] = dict(lines[4321], colour="red")
        rc, out, err = env.enqueue_lines(lines, "--provider", "gen")
        check(rc == EX_DATAERR, "rc %d" % rc)
        check(":4322: colour" in err, err)
        check(env.rows("SELECT count(*) AS n FROM jobs")[0]["n"] == 0,
              "nothing of the file enqueued")
        # duplicates inside the file and against the database, counted
        lines[4321] = job("j-7")
        rc, out, err = env.enqueue_lines(lines[:3000] + [""] + lines,
                                         "--provider", "gen")
        check(rc == 0, err)
        check(out.rstrip().endswith("4999 enqueued, 3001 duplicates "
                                    "skipped"), out)
        rc, out, err = env.enqueue_lines(lines, "--provider", "gen")
        check(out.rstrip().endswith("0 enqueued, 5000 duplicates skipped"),
              out)


def test_enqueue_of_an_unreadable_file_exits_66():
    with Env() as env:
        env.write_config(providers={"gen": {"dialect": "openai",
                                            "base_url": "http://127.0.0.1:9",
                                            "auth": "none"}})
        rc, out, err = env.ctl("enqueue", "--provider", "gen", env.path)
        check(rc == EX_NOINPUT, "a directory: rc %d" % rc)
        check(env.path in err, err)


if __name__ == "__main__":
    run(globals())
