#!/usr/bin/env python3
"""sluicectl enqueue, status, jobs and show against a real database.

No daemon runs here: what the daemon would have written (an attempt, a
provider's live row) is put in with sqlite3 so that show and status have
something to print. Exit codes are the sysexits of docs/contract.md.
"""
import json
import os
import sqlite3
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Env, run  # noqa: E402

EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CONFIG = 64, 65, 66, 78

PROVIDERS = {
    "flora": {"dialect": "flora", "base_url": "http://127.0.0.1:9/api/v1",
              "auth": "none"},
    "openai": {"dialect": "openai", "base_url": "http://127.0.0.1:9/v1",
               "auth": "none"},
}


def line(custom_id, provider="flora", **extra):
    d = {"custom_id": custom_id, "url": "/techniques/thumb/runs",
         "body": {"inputs": [custom_id], "mode": "async"},
         "provider": provider}
    d.update(extra)
    return d


def write_jsonl(dirname, name, items):
    """items: dicts (dumped) or raw strings (written as is)."""
    path = os.path.join(dirname, name)
    with open(path, "w") as f:
        for it in items:
            f.write((it if isinstance(it, str) else json.dumps(it)) + "\n")
    return path


def db_path(env):
    """The database file the harness's sluicectl uses."""
    rows = env.rows("PRAGMA database_list")
    return [r for r in rows if r["name"] == "main"][0]["file"]


def count_jobs(env, where="1", *params):
    return env.rows("SELECT count(*) AS n FROM jobs WHERE " + where,
                    *params)[0]["n"]


def raw_ctl(*args, extra_env=None, input=None):
    """sluicectl outside the harness: no -c added, SLUICE_CONFIG unset."""
    environ = {k: v for k, v in os.environ.items() if k != "SLUICE_CONFIG"}
    environ.update(extra_env or {})
    p = subprocess.run([os.environ["SLUICECTL"], *args], input=input,
                       capture_output=True, text=True, env=environ,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


def check(cond, what):
    if not cond:
        raise AssertionError(what)


# --- enqueue ---------------------------------------------------------------


def test_enqueue_counts_jobs_and_skips_blank_lines():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        path = write_jsonl(d, "a.jsonl",
                           [line("a1"), "", "   ", line("a2"), line("a3")])
        rc, out, err = env.ctl("enqueue", "--batch", "nightly", path)
        check(rc == 0, f"rc {rc}: {err}")
        check(f"{path}: 3 enqueued, 0 duplicates skipped" in out, out)
        check(out.rstrip().endswith("3 enqueued, 0 duplicates skipped"), out)
        check(count_jobs(env, "batch = ? AND state = 'queued'",
                         "nightly") == 3, "3 queued rows in batch nightly")


def test_reenqueue_same_file_skips_all_as_duplicates():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        path = write_jsonl(d, "a.jsonl", [line("a1"), line("a2")])
        rc, out, err = env.ctl("enqueue", path)
        check(rc == 0, err)
        rc, out, err = env.ctl("enqueue", path)
        check(rc == 0, err)
        check(f"{path}: 0 enqueued, 2 duplicates skipped" in out, out)
        check(count_jobs(env) == 2, "still 2 rows")


def test_unique_enqueues_the_same_file_again():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        path = write_jsonl(d, "a.jsonl", [line("a1"), line("a2")])
        check(env.ctl("enqueue", path)[0] == 0, "first enqueue")
        rc, out, err = env.ctl("enqueue", "--unique", path)
        check(rc == 0, err)
        check("2 enqueued, 0 duplicates skipped" in out, out)
        check(count_jobs(env) == 4, "4 rows")
        keys = env.rows("SELECT DISTINCT idempotency_key FROM jobs")
        check(len(keys) == 4, f"4 distinct keys, got {keys}")


def test_stdin_dash_enqueues_with_default_provider():
    with Env() as env:
        env.write_config(providers=PROVIDERS)
        text = "\n".join(json.dumps({"custom_id": f"s{i}", "url": "/v"})
                         for i in range(5)) + "\n"
        rc, out, err = env.ctl("enqueue", "--provider", "openai", "-",
                               input=text)
        check(rc == 0, err)
        check(out.rstrip().endswith("5 enqueued, 0 duplicates skipped"), out)
        check(count_jobs(env, "provider = 'openai'") == 5, "5 openai rows")


BAD_LINES = [
    # (what, the bad third line, a word the message must name)
    ("bad json", '{"custom_id": "x3", "url": ', None),
    ("unknown key", json.dumps(dict(line("x3"), colour="red")), "colour"),
    ("unknown provider", json.dumps(line("x3", provider="nope")),
     "provider"),
    ("missing url", json.dumps({"custom_id": "x3", "provider": "flora"}),
     "url"),
]


def test_bad_line_rejects_the_whole_file():
    for what, bad, field in BAD_LINES:
        with Env() as env, tempfile.TemporaryDirectory() as d:
            env.write_config(providers=PROVIDERS)
            path = write_jsonl(d, "bad.jsonl", [line("x1"), line("x2"), bad,
                                                line("x4")])
            rc, out, err = env.ctl("enqueue", path)
            check(rc == EX_DATAERR, f"{what}: rc {rc}")
            check(f"{path}:3:" in err, f"{what}: no FILE:LINE in {err!r}")
            if field:
                check(field in err, f"{what}: field not named in {err!r}")
            check(count_jobs(env) == 0, f"{what}: rows were enqueued")


def test_bad_second_file_keeps_the_first_file():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        good = write_jsonl(d, "good.jsonl", [line("g1"), line("g2")])
        bad = write_jsonl(d, "bad.jsonl", [line("b1"), "{nope"])
        rc, out, err = env.ctl("enqueue", good, bad)
        check(rc == EX_DATAERR, f"rc {rc}")
        check(f"{good}: 2 enqueued" in out, out)
        check(f"{bad}:2:" in err, err)
        check("stay" in err, f"earlier files not mentioned: {err!r}")
        ids = sorted(r["custom_id"] for r in env.rows(
            "SELECT custom_id FROM jobs"))
        check(ids == ["g1", "g2"], ids)


def test_missing_file_exits_66_naming_it():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        missing = os.path.join(d, "nowhere.jsonl")
        rc, out, err = env.ctl("enqueue", missing)
        check(rc == EX_NOINPUT, f"rc {rc}")
        check(missing in err, err)


def test_enqueue_without_any_config_exits_78():
    if os.path.exists("/etc/sluice/sluice.conf"):
        return  # the default path exists on this machine: not testable
    with tempfile.TemporaryDirectory() as d:
        path = write_jsonl(d, "a.jsonl", [line("a1")])
        rc, out, err = raw_ctl("--db", os.path.join(d, "q.db"), "enqueue",
                               path)
        check(rc == EX_CONFIG, f"rc {rc}")
        check("providers unknown" in err, err)


# --- status ----------------------------------------------------------------


def enqueue_mix(env, d):
    """3 flora jobs in batch b1, 2 openai jobs without a batch."""
    a = write_jsonl(d, "a.jsonl", [line(f"f{i}") for i in range(3)])
    b = write_jsonl(d, "b.jsonl", [line(f"o{i}", "openai") for i in range(2)])
    check(env.ctl("enqueue", "--batch", "b1", a)[0] == 0, "enqueue a")
    check(env.ctl("enqueue", b)[0] == 0, "enqueue b")


def test_status_json_and_table_carry_counts_and_live_state():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        enqueue_mix(env, d)
        with sqlite3.connect(db_path(env)) as db:
            db.execute("UPDATE jobs SET state = 'failed' "
                       "WHERE custom_id = 'f0'")
            db.execute("DELETE FROM providers WHERE name = 'flora'")
            db.execute("INSERT INTO providers (name, state, reason, "
                       "concurrency_limit, in_flight, pause_until, "
                       "updated_at) VALUES ('flora', 'paused', "
                       "'insufficient_balance', 17, 3, 0, ?)",
                       (1763719200000,))
        rc, out, err = env.ctl("status", "--json")
        check(rc == 0, err)
        st = json.loads(out)
        flora = st["providers"]["flora"]
        check(flora.get("queued") == 2 and flora.get("failed") == 1, flora)
        check(st["providers"]["openai"].get("queued") == 2, st)
        lanes = {ln["name"]: ln for ln in st["lanes"]}
        check(lanes["flora"]["state"] == "paused", lanes)
        check(lanes["flora"]["concurrency_limit"] == 17, lanes)
        check(any("b1" in json.dumps(b) for b in st["batches"]),
              st["batches"])

        rc, out, err = env.ctl("status")
        check(rc == 0, err)
        lines = out.splitlines()
        head = lines[0].split()
        check(head[0] == "PROVIDER" and "QUEUED" in head, lines[0])
        row = [ln.split() for ln in lines if ln.startswith("flora ")][0]
        check(row[head.index("QUEUED")] == "2", row)
        check(row[head.index("FAILED")] == "1", row)
        check(row[-1] == "3", f"total {row}")
        check(any("paused" in ln and "17" in ln for ln in lines), out)
        check("2025-11-21T10:00:00Z" in out, "updated time as ISO-8601")


# --- jobs ------------------------------------------------------------------


def test_jobs_lists_filters_and_limits():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        enqueue_mix(env, d)
        rc, out, err = env.ctl("jobs", "--json")
        check(rc == 0, err)
        jobs = json.loads(out)
        check(len(jobs) == 5, jobs)
        rc, out, err = env.ctl("jobs", "--json", "--provider", "flora",
                               "--state", "queued")
        check(sorted(j["custom_id"] for j in json.loads(out))
              == ["f0", "f1", "f2"], out)
        rc, out, err = env.ctl("jobs", "--json", "--batch", "b1",
                               "--limit", "2")
        check(len(json.loads(out)) == 2, out)

        rc, out, err = env.ctl("jobs", "--provider", "openai")
        check(rc == 0, err)
        lines = out.splitlines()
        check(lines[0].split()[:2] == ["ID", "PROVIDER"], lines[0])
        check(len(lines) == 3, out)
        check(all(" openai " in ln and " queued " in ln for ln in lines[1:]),
              out)
        # aligned: every row puts STATE under its header
        col = lines[0].index("STATE")
        check(all(ln[col:col + 6] == "queued" for ln in lines[1:]), out)

        rc, out, err = env.ctl("jobs", "--limit", "1")
        check(rc == 0 and len(out.splitlines()) == 2, out)


def test_jobs_unknown_state_exits_64_listing_valid_states():
    with Env() as env:
        env.write_config(providers=PROVIDERS)
        rc, out, err = env.ctl("jobs", "--state", "done")
        check(rc == EX_USAGE, f"rc {rc}")
        for s in ("queued", "running", "waiting", "retrying", "succeeded",
                  "failed", "cancelled"):
            check(s in err, f"{s} missing from {err!r}")


# --- show ------------------------------------------------------------------


def test_show_prints_job_body_failure_and_attempts():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        enqueue_mix(env, d)
        job = env.rows("SELECT id, idempotency_key FROM jobs "
                       "WHERE custom_id = 'f1'")[0]
        with sqlite3.connect(db_path(env)) as db:
            db.execute("INSERT INTO attempts (job_id, attempt, "
                       "idempotency_key, started_at, finished_at, "
                       "http_status, error_class, error_code, "
                       "error_message, request_id, retry_after_ms) "
                       "VALUES (?, 1, ?, 1763719200000, 1763719200250, "
                       "429, 'rate_limited', 'rate_limit_exceeded', "
                       "'slow down', 'req_ab12', 2000)",
                       (job["id"], job["idempotency_key"]))
            db.execute("UPDATE jobs SET state = 'retrying', attempts = 1, "
                       "http_status = 429, error_class = 'rate_limited', "
                       "error_code = 'rate_limit_exceeded', "
                       "request_id = 'req_ab12' WHERE id = ?", (job["id"],))

        rc, out, err = env.ctl("show", "f1", "--json")
        check(rc == 0, err)
        shown = json.loads(out)
        check(shown["id"] == job["id"] and shown["custom_id"] == "f1", shown)
        check(shown["error_code"] == "rate_limit_exceeded", shown)
        atts = [v for v in shown.values() if isinstance(v, list)]
        check(atts and atts[0][0]["request_id"] == "req_ab12", shown)

        rc, out, err = env.ctl("show", str(job["id"]))
        check(rc == 0, err)
        check("custom_id" in out and "f1" in out, out)
        check('"inputs": [' in out, f"body not pretty-printed: {out}")
        check("last failure" in out and "rate_limit_exceeded" in out, out)
        att = [ln for ln in out.splitlines() if "req_ab12" in ln
               and "429" in ln]
        check(att, f"no attempt row in {out}")
        check("2025-11-21T10:00:00Z" in att[0], att)
        check(" 250 " in att[0], f"duration ms in {att}")
        check(job["idempotency_key"] in att[0], att)


def test_show_unknown_job_exits_1():
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        enqueue_mix(env, d)
        rc, out, err = env.ctl("show", "no-such-job")
        check(rc == 1, f"rc {rc}")
        check("no job 'no-such-job'" in err, err)


# --- config, usage ---------------------------------------------------------


def test_bad_or_missing_chosen_config_exits_78():
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "bad.conf")
        with open(bad, "w") as f:
            f.write("[daemon]\nthis line is not ini\n")
        rc, out, err = raw_ctl("-c", bad, "status")
        check(rc == EX_CONFIG, f"bad -c: rc {rc}")
        check(bad in err, err)
        missing = os.path.join(d, "missing.conf")
        rc, out, err = raw_ctl("-c", missing, "--db",
                               os.path.join(d, "q.db"), "jobs")
        check(rc == EX_CONFIG, f"missing -c: rc {rc}")
        rc, out, err = raw_ctl("jobs", extra_env={"SLUICE_CONFIG": missing})
        check(rc == EX_CONFIG, f"missing SLUICE_CONFIG: rc {rc}")


def test_db_flag_works_without_config():
    if os.path.exists("/etc/sluice/sluice.conf"):
        return
    with Env() as env, tempfile.TemporaryDirectory() as d:
        env.write_config(providers=PROVIDERS)
        enqueue_mix(env, d)
        rc, out, err = raw_ctl("--db", db_path(env), "jobs", "--json")
        check(rc == 0, err)
        check(len(json.loads(out)) == 5, out)


def test_reading_a_missing_database_exits_66_without_creating_it():
    with tempfile.TemporaryDirectory() as d:
        missing = os.path.join(d, "typo.db")
        for cmd in (["status"], ["jobs"], ["show", "1"]):
            rc, out, err = raw_ctl("--db", missing, *cmd)
            check(rc == EX_NOINPUT, f"{cmd}: rc {rc}")
            check(missing in err, err)
        check(not os.path.exists(missing), "database file was created")


def test_unknown_command_or_option_exits_64_with_usage():
    rc, out, err = raw_ctl("frobnicate")
    check(rc == EX_USAGE and "usage:" in err, f"{rc} {err!r}")
    rc, out, err = raw_ctl("--frob", "status")
    check(rc == EX_USAGE and "usage:" in err, f"{rc} {err!r}")
    rc, out, err = raw_ctl("jobs", "--frob")
    check(rc == EX_USAGE and "usage:" in err, f"{rc} {err!r}")
    rc, out, err = raw_ctl()
    check(rc == EX_USAGE, f"no command: rc {rc}")


def test_help_prints_usage_on_stdout():
    for args in (["--help"], ["help"]):
        rc, out, err = raw_ctl(*args)
        check(rc == 0, f"{args}: rc {rc}")
        for cmd in ("enqueue", "status", "jobs", "show"):
            check(cmd in out, f"{args}: {cmd} missing")
    rc, out, err = raw_ctl("enqueue", "--help")
    check(rc == 0 and "--unique" in out, out)


if __name__ == "__main__":
    sys.exit(run([v for k, v in sorted(globals().items())
                  if k.startswith("test_") and callable(v)]))
