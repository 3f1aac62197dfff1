"""Output downloads (docs/design.md §13) through the real sluiced and the fake
provider, which serves real bytes at the URLs of its FLORA run results and
FlyMyAI generations: every output of a succeeded job of a provider with
`outputs = download` lands in outputs_dir/ab/abcdef... named by the SHA-256
of its bytes; transient download failures are retried, permanent ones fail
the output row and never the job; a download cut short, by the network or
a restart, is resumed with a Range request where the server allows it;
credentials go only to the provider's own origin."""
import hashlib
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    Env, Fake, drain_ok, enqueue_ok, http, run, wait_for)


def flora(fake, **kw):
    conf = {
        "dialect": "flora",
        "base_url": fake.url + "/flora",
        "api_key": "sk-test-flora",
        "concurrency_start": 8,
        "adaptive": "no",
        "backoff_base": "20ms",
        "backoff_cap": "200ms",
        "poll_interval": "100ms",
        "timeout": "10s",
        "outputs": "download",
    }
    conf.update(kw)
    return conf


def run_job(cid, then=None, polls=1):
    step = {"async": {"polls": polls}}
    if then is not None:
        step["async"]["then"] = then
    return {"custom_id": cid, "url": "/techniques/thumbnail-v3/runs",
            "provider": "flora",
            "body": {"inputs": [{"id": "prompt", "value": cid}],
                     "mode": "async", "_fake": {"script": [step]}}}


def daemon_conf(env, **kw):
    conf = {"outputs_dir": os.path.join(env.path, "outputs")}
    conf.update(kw)
    return conf


def fake_sha(fake, url):
    """SHA-256 of the bytes the fake serves at url, read from its
    uncounted, unscripted mirror /_files/..."""
    path = url.split("/files", 1)[1]
    status, _, body = http("GET", fake.url + "/_files" + path)
    assert status == 200, (status, url)
    return hashlib.sha256(body).hexdigest(), len(body)


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def downloads(fake, path_part=""):
    return [e for e in fake.log()
            if e["method"] == "GET" and e["path"].startswith("/files/")
            and path_part in e["path"]]


def outputs_of(env, cid):
    return env.rows("SELECT o.* FROM outputs o JOIN jobs j ON j.id = "
                    "o.job_id WHERE j.custom_id = ? ORDER BY o.id", cid)


def assert_stored(env, fake, row):
    outdir = os.path.join(env.path, "outputs")
    assert row["state"] == "stored", row
    want, size = fake_sha(fake, row["url"])
    assert row["sha256"] == want, (row, want)
    assert row["bytes"] == size, row
    assert row["path"] == os.path.join(outdir, want[:2], want), row
    assert file_sha(row["path"]) == want
    assert row["content_type"] == "image/png", row
    assert row["error"] is None and row["fetched_at"] > 0, row


def test_twenty_async_flora_jobs_store_twenty_files_by_content():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)}, daemon=daemon_conf(env))
        enqueue_ok(env, [run_job("img-%02d" % i) for i in range(20)])
        drain_ok(env, timeout=120)
        jobs = env.rows("SELECT state FROM jobs")
        assert [j["state"] for j in jobs] == ["succeeded"] * 20, jobs
        rows = env.rows("SELECT * FROM outputs ORDER BY id")
        assert len(rows) == 20, rows
        for row in rows:
            assert_stored(env, fake, row)
            assert row["attempts"] == 1, row
        # 20 different files on disk, nothing left half-written
        outdir = os.path.join(env.path, "outputs")
        files = [os.path.join(d, f) for d, _, fs in os.walk(outdir)
                 for f in fs]
        assert len([f for f in files if ".partial" not in f]) == 20, files
        assert os.listdir(os.path.join(outdir, ".partial")) == []
        # the fake's origin is the provider's: its key went along
        got = downloads(fake)
        assert len(got) == 20, got
        for e in got:
            assert e["headers"].get("authorization") == \
                "Bearer sk-test-flora", e["headers"]
        # sluicectl: outputs lists them, export adds the local paths,
        # status and watch count them
        rc, out, err = env.ctl("outputs", "--json")
        assert rc == 0, err
        listed = json.loads(out)
        assert sorted(r["path"] for r in listed) == \
            sorted(r["path"] for r in rows)
        assert {r["custom_id"] for r in listed} == \
            {"img-%02d" % i for i in range(20)}
        rc, out, err = env.ctl("export")
        assert rc == 0, err
        by_job = {r["job_id"]: r["path"] for r in rows}
        lines = [json.loads(x) for x in out.splitlines()]
        assert len(lines) == 20
        for line in lines:
            job_id = int(line["id"].split("_")[1])
            assert line["outputs"] == [by_job[job_id]], line
        rc, out, _ = env.ctl("status")
        assert "outputs: 0 pending, 20 stored, 0 failed" in out, out
        rc, out, _ = env.ctl("watch", "--once")
        assert "outputs 0 pending, 20 stored, 0 failed" in out, out


def test_download_failing_twice_then_succeeding_is_stored():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)}, daemon=daemon_conf(env))
        enqueue_ok(env, [run_job("flaky", {"download_fail": 2})])
        err = drain_ok(env, timeout=60)
        [row] = outputs_of(env, "flaky")
        assert_stored(env, fake, row)
        assert row["attempts"] == 3, row
        assert [e["status"] for e in downloads(fake)] == [503, 503, 200]
        assert "retry in" in err, err


def test_permanent_download_failure_fails_the_output_not_the_job():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)}, daemon=daemon_conf(env))
        enqueue_ok(env, [run_job("gone", {"download_fail": 1,
                                          "download_status": 404,
                                          "outputs": 2})])
        drain_ok(env, timeout=60)
        job = env.rows("SELECT state FROM jobs")[0]
        assert job["state"] == "succeeded", job
        rows = outputs_of(env, "gone")
        assert [r["state"] for r in rows] == ["failed", "failed"], rows
        for r in rows:
            assert r["error"] == "HTTP 404" and r["attempts"] == 1, r
            assert r["path"] is None, r
        assert len(downloads(fake)) == 2
        rc, out, _ = env.ctl("outputs", "--state", "failed")
        assert rc == 0 and out.count("HTTP 404") == 2, out
        rc, out, _ = env.ctl("outputs", "--state", "stored")
        assert rc == 0 and out.strip() == "no outputs", out
        # the URL works again: --retry, and the next daemon stores them
        rc, out, err = env.ctl("outputs", "--retry")
        assert rc == 0 and "2 failed outputs back to pending" in out, \
            (out, err)
        assert env.ctl("outputs", "--retry", "--state", "failed")[0] == 64
        drain_ok(env, timeout=60)
        for r in outputs_of(env, "gone"):
            assert_stored(env, fake, r)
            assert r["attempts"] == 1, r


def test_output_over_the_size_cap_fails():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)},
                         daemon=daemon_conf(env, outputs_max_size="1K"))
        enqueue_ok(env, [run_job("big", {"output_bytes": 5000})])
        drain_ok(env, timeout=60)
        [row] = outputs_of(env, "big")
        assert row["state"] == "failed", row
        assert "1024" in row["error"], row
        assert row["attempts"] == 1, row


def partial_dir(env):
    return os.path.join(env.path, "outputs", ".partial")


def partial_size(env, output_id):
    try:
        return os.path.getsize(os.path.join(partial_dir(env), str(output_id)))
    except FileNotFoundError:
        return -1


def assert_resumed(fake, got, kept):
    """got: the two fetches of one file; the second asked for the rest
    after kept bytes, under the ETag of the first, and got a 206."""
    assert len(got) == 2, got
    first, second = got
    assert "range" not in first["headers"], first["headers"]
    assert first["status"] == 200, first
    assert second["headers"].get("range") == "bytes=%d-" % kept, second
    assert second["headers"].get("if-range", "").startswith('"f'), second
    assert second["status"] == 206, second


def restart_mid_download(sig):
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)}, daemon=daemon_conf(env))
        enqueue_ok(env, [run_job("slow", {"download_stall_ms": 30000,
                                          "output_bytes": 200000})])
        d = env.daemon()
        wait_for(lambda: env.rows("SELECT id FROM outputs"), 30,
                 message="no output row")
        [row] = outputs_of(env, "slow")
        # mid-body: half the bytes written, the other half 30 s away
        wait_for(lambda: partial_size(env, row["id"]) == 100000, 30,
                 message="the first half never arrived")
        d.signal(sig)
        d.wait(30)
        [row] = outputs_of(env, "slow")
        assert row["state"] == "pending", row
        if sig == signal.SIGTERM:
            # handed back: not counted, no lease
            assert row["attempts"] == 0 and row["lease_owner"] is None, row
        else:
            assert row["lease_owner"] is not None, row
        # the bytes that came stay, beside the URL and validator they
        # came under, for the next life to resume from
        assert sorted(os.listdir(partial_dir(env))) == \
            ["%d" % row["id"], "%d.meta" % row["id"]]
        assert partial_size(env, row["id"]) == 100000
        rc, out, _ = env.ctl("status")
        assert "outputs: 1 pending, 0 stored, 0 failed" in out, out
        rc, out, _ = env.ctl("watch", "--once")
        assert "outputs 1 pending" in out, out
        # the next life asks for the rest (a dead owner's lease is freed)
        drain_ok(env, timeout=60)
        [row] = outputs_of(env, "slow")
        assert_stored(env, fake, row)
        assert_resumed(fake, downloads(fake), 100000)
        assert os.listdir(partial_dir(env)) == []


def test_sigterm_mid_download_resumes_after_restart():
    restart_mid_download(signal.SIGTERM)


def test_sigkill_mid_download_resumes_after_restart():
    restart_mid_download(signal.SIGKILL)


def test_cut_download_is_resumed_with_range_not_restarted():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)}, daemon=daemon_conf(env))
        # the first fetch is cut halfway: the connection closes
        enqueue_ok(env, [run_job("cut", {"download_cut": True,
                                         "output_bytes": 300000})])
        err = drain_ok(env, timeout=60)
        [row] = outputs_of(env, "cut")
        # the SHA-256 of the whole file, resumed bytes and all
        assert_stored(env, fake, row)
        assert row["attempts"] == 2, row
        got = downloads(fake)
        kept = int(got[1]["headers"]["range"][6:-1])
        assert 0 < kept <= 150000, got[1]["headers"]
        assert_resumed(fake, got, kept)
        assert "fetched from the start" not in err, err
        assert os.listdir(partial_dir(env)) == []


def test_server_ignoring_range_restarts_the_download():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)}, daemon=daemon_conf(env))
        # an ETag but no Accept-Ranges: a Range is ignored, 200 again
        enqueue_ok(env, [run_job("whole", {"download_cut": True,
                                           "download_ranges": False,
                                           "output_bytes": 300000})])
        err = drain_ok(env, timeout=60)
        [row] = outputs_of(env, "whole")
        assert_stored(env, fake, row)
        got = downloads(fake)
        assert len(got) == 2, got
        assert got[1]["headers"].get("range", "").startswith("bytes="), got
        assert got[1]["status"] == 200, got[1]
        assert "the server sent the whole file" in err, err
        assert os.listdir(partial_dir(env)) == []


def test_flymyai_images_and_credentials_only_to_the_providers_origin():
    with Fake("--quiet") as fake, Env() as env:
        port = fake.url.rsplit(":", 1)[1]
        env.write_config({
            # same origin as the files (127.0.0.1:PORT): the key goes along
            "same": {"dialect": "flymyai", "base_url": fake.url + "/flymyai",
                     "api_key": "sk-same", "outputs": "download",
                     "backoff_base": "20ms", "backoff_cap": "100ms"},
            # the API on "localhost", the files on 127.0.0.1: another
            # origin, so no key
            "other": {"dialect": "flymyai",
                      "base_url": "http://localhost:%s/flymyai" % port,
                      "api_key": "sk-other", "outputs": "download",
                      "backoff_base": "20ms", "backoff_cap": "100ms"},
        }, daemon=daemon_conf(env))
        lines = [{"custom_id": "%s-%d" % (p, i), "url": "/generate",
                  "provider": p, "body": {"prompt": "%s %d" % (p, i)}}
                 for p in ("same", "other") for i in range(2)]
        enqueue_ok(env, lines)
        drain_ok(env, timeout=60)
        rows = env.rows("SELECT o.*, j.provider FROM outputs o JOIN jobs j "
                        "ON j.id = o.job_id ORDER BY o.id")
        assert len(rows) == 4, rows
        for r in rows:
            assert_stored(env, fake, r)
        posts = {e["body"]["prompt"].split()[0]: e["headers"]
                 for e in fake.log() if e["method"] == "POST"}
        assert posts["other"].get("x-api-key") == "sk-other"
        by_path = {e["path"]: e["headers"] for e in downloads(fake)}
        for r in rows:
            h = by_path[r["url"].split(port, 1)[1]]
            if r["provider"] == "same":
                assert h.get("x-api-key") == "sk-same", h
            else:
                assert "x-api-key" not in h, h
                assert "authorization" not in h, h


def test_redirect_is_followed_and_credentials_stay_on_the_origin():
    with Fake("--quiet") as fake, Env() as env:
        env.write_config({"flora": flora(fake)}, daemon=daemon_conf(env))
        # the file moved to "localhost": another origin than 127.0.0.1
        enqueue_ok(env, [run_job("moved", {"download_redirect":
                                           "localhost"})])
        drain_ok(env, timeout=60)
        [row] = outputs_of(env, "moved")
        assert_stored(env, fake, row)
        assert row["url"].startswith(fake.url + "/files/flora/"), row
        hops = downloads(fake)
        assert [e["status"] for e in hops] == [302, 200], hops
        assert hops[1]["path"].startswith("/files/redirected/"), hops
        assert hops[0]["headers"].get("authorization") == \
            "Bearer sk-test-flora"
        assert "authorization" not in hops[1]["headers"], hops[1]


def test_keep_urls_is_the_default_and_downloads_nothing():
    with Fake("--quiet") as fake, Env() as env:
        conf = flora(fake)
        del conf["outputs"]
        env.write_config({"flora": conf}, daemon=daemon_conf(env))
        enqueue_ok(env, [run_job("plain")])
        drain_ok(env, timeout=60)
        assert env.rows("SELECT * FROM outputs") == []
        assert downloads(fake) == []


if __name__ == "__main__":
    run(globals())
