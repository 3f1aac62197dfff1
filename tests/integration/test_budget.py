#!/usr/bin/env python3
"""Spend and budgets (docs/design.md §13) with the real sluiced against the
fake provider: each job's cost lands in jobs.cost (FLORA's charged_cost, a
cost_pointer, tokens x token_price); a provider budget stops the lane
within one claim of its cap, paused with reason budget, and a raised
budget (SIGHUP) or sluicectl resume lets it go on; a batch budget on a
shared provider holds that batch only, and resume --batch lifts it.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Env, Fake, drain_ok, enqueue_ok, job_lines,  # noqa: E402
                     provider_conf, run, wait_for)
from test_metrics import (check_promtool, free_port, parse,  # noqa: E402
                          scrape, value)

RUN_COST = 0.04  # the fake's charged_cost of a completed FLORA run


def flora(fake, **kw):
    conf = {
        "dialect": "flora",
        "base_url": fake.url + "/flora",
        "api_key": "sk-test-flora",
        "concurrency_start": 4,
        "adaptive": "no",
        "poll_interval": "100ms",
        "timeout": "5s",
    }
    conf.update({k: str(v) for k, v in kw.items()})
    return conf


def runs(n, prefix="run"):
    return [{"custom_id": "%s-%d" % (prefix, i),
             "url": "/techniques/thumbnail-v3/runs",
             "body": {"inputs": [{"id": "prompt", "value": "p%d" % i}],
                      "mode": "async",
                      "_fake": {"script": [{"async": {"polls": 1}}]}}}
            for i in range(n)]


def states(env, where="1"):
    return {r["state"]: r["n"] for r in env.rows(
        "SELECT state, count(*) AS n FROM jobs WHERE %s GROUP BY state"
        % where)}


def provider_row(env, name):
    rows = env.rows("SELECT * FROM providers WHERE name = ?", name)
    return rows[0] if rows else None


def spent(env, where="1"):
    return env.rows("SELECT total(cost) AS s FROM jobs WHERE %s"
                    % where)[0]["s"]


def test_provider_budget_stops_within_one_claim_and_shows_reason_budget():
    with Fake() as fake, Env() as env:
        # 0.10 at 0.04 a run: the first run alone (no cost known yet),
        # then one more fits (0.08), a third would pass the cap
        env.write_config({"flora": flora(fake, budget="0.10")})
        enqueue_ok(env, runs(10), "--provider", "flora")
        drain_ok(env, 60)  # a provider paused for its budget is drained
        assert states(env) == {"succeeded": 2, "queued": 8}, states(env)
        costs = [r["cost"] for r in env.rows(
            "SELECT cost FROM jobs WHERE state = 'succeeded'")]
        assert costs == [RUN_COST, RUN_COST], costs  # charged_cost kept
        total = spent(env)
        assert total <= 0.10 + 1e-9 and total + RUN_COST > 0.10, total
        # the provider never saw a third run
        assert fake.ledger()["executions"] == 2, fake.ledger()
        row = provider_row(env, "flora")
        assert (row["state"], row["reason"]) == ("paused", "budget"), row
        rc, out, err = env.ctl("status", "--json")
        assert rc == 0, err
        p = json.loads(out)["spend"]["providers"][0]
        assert p["provider"] == "flora" and p["budget"] == 0.10, p
        assert abs(p["spent"] - 0.08) < 1e-9, p
        assert abs(p["left"] - 0.02) < 1e-9, p
        assert abs(p["spent_last_hour"] - 0.08) < 1e-9, p
        rc, out, err = env.ctl("status")
        assert "spend" in out and "paused: budget" in out, out


def test_raised_budget_on_sighup_and_resume_continue():
    port = free_port()
    url = "http://127.0.0.1:%d/metrics" % port
    metrics = {"metrics": "127.0.0.1:%d" % port}
    with Fake() as fake, Env() as env:
        env.write_config({"flora": flora(fake, budget="0.10")},
                         daemon=metrics)
        enqueue_ok(env, runs(10), "--provider", "flora")
        d = env.daemon()
        wait_for(lambda: (provider_row(env, "flora") or {}).get("reason")
                 == "budget", 30, message="paused for its budget")
        assert states(env).get("succeeded") == 2
        # the page is a snapshot of up to a second ago: wait for the pause
        page = wait_for(lambda: (lambda p: p if value(
            parse(p), "sluice_budget_paused", provider="flora") == 1
            else None)(scrape(url)), 30, interval=0.2,
            message="sluice_budget_paused 1 on /metrics")
        check_promtool(page)
        m = parse(page)
        assert value(m, "sluice_budget", provider="flora") == 0.10
        assert abs(value(m, "sluice_budget_spent", provider="flora")
                   - 0.08) < 1e-9
        assert value(m, "sluice_budget_paused", provider="flora") == 1
        assert value(m, "sluice_lane_state", provider="flora",
                     state="paused") == 1
        assert abs(value(m, "sluice_spend_total", provider="flora")
                   - 0.08) < 1e-9

        # 0.20: three more runs (0.20 / 0.04 = 5 in all), then paused again
        env.write_config({"flora": flora(fake, budget="0.20")},
                         daemon=metrics)
        d.signal(signal.SIGHUP)
        wait_for(lambda: states(env).get("succeeded") == 5, 30,
                 message="5 runs under the raised budget")
        wait_for(lambda: (provider_row(env, "flora") or {}).get("reason")
                 == "budget", 30, message="paused again at 0.20")
        assert spent(env) <= 0.20 + 1e-9
        assert fake.ledger()["executions"] == 5

        # the operator lets it go on past the cap
        rc, out, err = env.ctl("resume", "flora")
        assert rc == 0, err
        wait_for(lambda: states(env).get("succeeded") == 10, 30,
                 message="all 10 after resume")
        wait_for(lambda: provider_row(env, "flora")["state"] == "active",
                 10, message="provider row active after resume")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0


def test_batch_budget_on_a_shared_provider_holds_that_batch_only():
    with Fake() as fake, Env() as env:
        conf = provider_conf(fake, concurrency_start=4,
                             cost_pointer="/cost")
        env.write_config({"gen": conf}, env={"GEN_KEY": "k"})
        # every answer says it cost 0.5 (a scripted body: not executed,
        # so the fake's ledger counts requests instead)
        script = [{"status": 200, "body": {"id": "x", "cost": 0.5}}]
        enqueue_ok(env, job_lines(10, "capped", script=script),
                   "--provider", "gen", "--batch", "capped",
                   "--budget", "1.00")
        enqueue_ok(env, job_lines(10, "free", script=script),
                   "--provider", "gen", "--batch", "free")
        # the capped batch's jobs cannot move, the rest finish: drained
        drain_ok(env, 60)
        assert states(env, "batch = 'free'") == {"succeeded": 10}
        assert states(env, "batch = 'capped'") == {"succeeded": 2,
                                                   "queued": 8}
        assert abs(spent(env, "batch = 'capped'") - 1.0) < 1e-9
        assert abs(spent(env, "batch = 'free'") - 5.0) < 1e-9
        sent = [e for e in fake.log()
                if e["body"] and e["body"].get("prompt", "")
                .startswith("capped")]
        assert len(sent) == 2, len(sent)
        row = env.rows("SELECT * FROM batches WHERE name = 'capped'")[0]
        assert (row["budget"], row["state"], row["reason"]) == \
            (1.0, "paused", "budget"), row
        # the provider itself is not paused
        assert provider_row(env, "gen")["state"] == "active"
        rc, out, err = env.ctl("status", "--json")
        b = {x["batch"]: x for x in json.loads(out)["spend"]["batches"]}
        assert b["capped"]["budget"] == 1.0 and b["capped"]["left"] == 0, b
        assert "budget" not in b["free"], b
        rc, out, err = env.ctl("watch", "--once", "--batch", "capped")
        assert rc == 0 and "spent 1.00" in out and "of 1.00, 0.00 left" \
            in out, out

        rc, out, err = env.ctl("resume", "--batch", "caped")
        assert rc == 1 and "no batch 'caped'" in err, (rc, err)
        rc, out, err = env.ctl("resume", "--batch", "capped")
        assert rc == 0, err
        drain_ok(env, 60)
        assert states(env, "batch = 'capped'") == {"succeeded": 10}


def technique_runs(specs, polls=3):
    """Runs of FLORA techniques: specs is a list of (slug, charged_cost)."""
    return [{"custom_id": "t-%d" % i,
             "url": "/techniques/%s/runs" % slug,
             "body": {"inputs": [{"id": "prompt", "value": "p%d" % i}],
                      "mode": "async",
                      "_fake": {"script": [{"async": {
                          "polls": polls,
                          "then": {"charged_cost": cost}}}]}}}
            for i, (slug, cost) in enumerate(specs)]


def first_completion_ms(log, polls):
    """When the fake answered the first run completed: the (polls+1)-th
    poll of a run."""
    seen, first = {}, None
    for e in log:
        if e["method"] == "GET" and "/runs/run_" in e["path"]:
            seen[e["path"]] = seen.get(e["path"], 0) + 1
            if seen[e["path"]] == polls + 1 and \
                    (first is None or e["t_ms"] < first):
                first = e["t_ms"]
    return first


def test_stated_run_costs_bound_the_lane_from_the_first_job():
    # two techniques at different stated prices, charged what they state
    DEAR, CHEAP, BUDGET = 0.30, 0.05, 0.90
    with Fake() as fake, Env() as env:
        fake.techniques({"dear-v1": {"run_cost": DEAR},
                         "cheap-v1": {"run_cost": CHEAP}})
        env.write_config({"flora": flora(fake, budget=BUDGET,
                                         concurrency_start=8)})
        specs = [("dear-v1", DEAR) if i % 2 == 0 and i < 12
                 else ("cheap-v1", CHEAP) for i in range(20)]
        price = {"t-%d" % i: c for i, (_, c) in enumerate(specs)}
        enqueue_ok(env, technique_runs(specs), "--provider", "flora")
        err = drain_ok(env, 60)
        log = fake.log()
        posts = [e for e in log if e["method"] == "POST"]
        sent = [price["t-%s" % e["body"]["inputs"][0]["value"][1:]]
                for e in posts]
        # nothing sent beyond the cap, ever: each run cost what was stated
        assert sum(sent) <= BUDGET + 1e-9, sent
        # from the first job on, before any charged_cost was known, the
        # lane sent as many as the stated costs allowed (not one alone)
        done = first_completion_ms(log, 3)
        early = [c for e, c in zip(posts, sent) if e["t_ms"] < done]
        assert len(early) >= 3 and sum(early) <= BUDGET + 1e-9, early
        # stopped within one job of the cap: the job at the head of the
        # queue no longer fits
        total = spent(env)
        assert abs(total - sum(sent)) < 1e-9, (total, sent)
        queued = env.rows("SELECT custom_id FROM jobs WHERE state = 'queued'")
        assert queued, "the budget stopped nothing"
        assert total + DEAR > BUDGET + 1e-9, total
        row = provider_row(env, "flora")
        assert (row["state"], row["reason"]) == ("paused", "budget"), row
        # each technique asked once, with the provider's key, on its origin
        gets = [e for e in log if e["path"].startswith("/flora/techniques/")
                and e["method"] == "GET"]
        assert sorted(e["path"] for e in gets) == [
            "/flora/techniques/cheap-v1", "/flora/techniques/dear-v1"], gets
        assert all(e["headers"].get("authorization") == "Bearer sk-test-flora"
                   for e in gets), gets
        assert "states a run cost of 0.3000" in err, err
        assert "sk-test-flora" not in err


def test_failing_technique_endpoint_falls_back_to_one_at_a_time():
    with Fake() as fake, Env() as env:
        fake.techniques({"broken-v1": {"status": 503}})
        env.write_config({"flora": flora(fake, budget="0.10",
                                         concurrency_start=8)})
        enqueue_ok(env, technique_runs([("broken-v1", RUN_COST)] * 6),
                   "--provider", "flora")
        err = drain_ok(env, 60)
        log = fake.log()
        gets = [e for e in log if e["path"] == "/flora/techniques/broken-v1"]
        assert len(gets) == 1, gets  # asked once, not once per job
        assert err.count("no run cost from /techniques/broken-v1") == 1, err
        # the old rule: the first run alone until its cost is known, then
        # the mean (0.04): one more fits under 0.10
        posts = [e for e in log if e["method"] == "POST"]
        assert len(posts) == 2, posts
        assert posts[1]["t_ms"] >= first_completion_ms(log, 3), posts
        assert states(env) == {"succeeded": 2, "queued": 4}, states(env)
        row = provider_row(env, "flora")
        assert (row["state"], row["reason"]) == ("paused", "budget"), row


def test_enqueue_budget_needs_a_batch_and_an_amount():
    with Fake() as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake)}, env={"GEN_KEY": "k"})
        path = env.write_file("j.jsonl", json.dumps(job_lines(1)[0]) + "\n")
        rc, out, err = env.ctl("enqueue", "--provider", "gen", "--budget",
                               "5", path)
        assert rc == 64 and "--budget caps a batch" in err, err
        rc, out, err = env.ctl("enqueue", "--provider", "gen", "--batch",
                               "b", "--budget", "0", path)
        assert rc == 64 and "bad amount '0'" in err, err


def test_cost_from_tokens_times_price():
    with Fake() as fake, Env() as env:
        conf = provider_conf(fake, token_price="0.000002")
        env.write_config({"gen": conf}, env={"GEN_KEY": "k"})
        script = [{"status": 200,
                   "body": {"id": "c", "usage": {"total_tokens": 1500}}}]
        enqueue_ok(env, job_lines(2, "t", script=script), "--provider", "gen")
        drain_ok(env, 60)
        costs = [r["cost"] for r in env.rows("SELECT cost FROM jobs")]
        assert all(abs(c - 0.003) < 1e-12 for c in costs), costs


if __name__ == "__main__":
    run(globals())
