"""A provider without idempotency (idempotency = none) through the real
sluiced: a submission that may have reached it and got no answer (the
connection lost after the request went out, the daemon killed mid-request)
is never sent again on its own; it fails with class unknown_outcome for the
operator, the attempt our own crash cut short not charged. A request that
never left (connection refused) is retried as usual."""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, drain_ok, enqueue_ok, provider_conf, run, wait_for)


def job(env, cid):
    rows = env.rows("SELECT * FROM jobs WHERE custom_id = ?", cid)
    assert len(rows) == 1, (cid, rows)
    return rows[0]


def line(cid, script):
    return {"custom_id": cid, "url": "/images",
            "body": {"prompt": cid, "_fake": {"script": script}}}


def requests_for(fake, cid):
    return [e for e in fake.log() if e["body"] and
            isinstance(e["body"], dict) and e["body"].get("prompt") == cid]


def test_connection_lost_after_sending_is_not_resent():
    with Fake() as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake, idempotency="none")},
                         env={"GEN_KEY": "sk-test"})
        enqueue_ok(env, [line("lost", [{"reset": True}, {}])],
                   "--provider", "gen")
        drain_ok(env)
        j = job(env, "lost")
        assert (j["state"], j["error_class"]) == \
            ("failed", "unknown_outcome"), j
        assert j["error_code"].startswith("curl_"), j
        assert len(requests_for(fake, "lost")) == 1, fake.log()
        # the operator looked, and sends it again
        rc, out, err = env.ctl("retry", "--state", "failed", "--class",
                               "unknown_outcome")
        assert rc == 0, err
        drain_ok(env)
        assert job(env, "lost")["state"] == "succeeded"
        assert len(requests_for(fake, "lost")) == 2


def test_same_loss_with_idempotency_is_retried_with_the_key():
    with Fake() as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake)},
                         env={"GEN_KEY": "sk-test"})
        enqueue_ok(env, [line("keyed", [{"reset": True}, {}])],
                   "--provider", "gen")
        drain_ok(env)
        assert job(env, "keyed")["state"] == "succeeded"


def test_refused_connection_never_left_and_is_retried():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with Env() as env:
        conf = {"dialect": "generic", "auth": "none", "idempotency": "none",
                "base_url": "http://127.0.0.1:%d/g" % port,
                "max_attempts": 2, "backoff_base": "10ms",
                "backoff_cap": "20ms", "timeout": "5s"}
        env.write_config({"gen": conf})
        enqueue_ok(env, [{"custom_id": "down", "url": "/x"}],
                   "--provider", "gen")
        drain_ok(env)
        j = job(env, "down")
        assert (j["state"], j["error_class"], j["attempts"]) == \
            ("failed", "network", 2), j


def test_killed_mid_request_is_failed_at_the_next_start_not_resent():
    with Fake() as fake, Env() as env:
        env.write_config({"gen": provider_conf(fake, idempotency="none")},
                         env={"GEN_KEY": "sk-test"})
        enqueue_ok(env, [line("slow", [{"delay_ms": 20000}])],
                   "--provider", "gen")
        d = env.daemon()
        wait_for(lambda: len(requests_for(fake, "slow")) == 1 or
                 fake.ledger()["in_flight"] > 0, 30,
                 message="the request at the provider")
        d.kill()
        drain_ok(env)
        j = job(env, "slow")
        assert (j["state"], j["error_class"], j["error_code"]) == \
            ("failed", "unknown_outcome", "lease_lost"), j
        assert j["attempts"] == 0, j
        assert fake.ledger()["requests"] <= 1, fake.ledger()


if __name__ == "__main__":
    run(globals())
