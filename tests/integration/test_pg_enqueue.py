#!/usr/bin/env python3
"""sluicectl enqueue into PostgreSQL (COPY straight into jobs, a duplicate
replayed through a temporary table): files of several chunks with a
duplicate of an earlier chunk or of an earlier file are counted as on
SQLite, ids keep file order, the kept counts follow, and a file with a bad
line leaves nothing of it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Fake, job_lines, provider_conf, run  # noqa: E402
from pg import PgEnv  # noqa: E402

# sluicectl parses and inserts 8,192 lines at a time (daemon/ctl/
# enqueue.c): these files span three of its calls to the store.
LINES = 20000


def jobs_in_id_order(env):
    return [r["custom_id"]
            for r in env.rows("SELECT custom_id FROM jobs ORDER BY id")]


def kept_total(env):
    return env.rows("SELECT coalesce(sum(n), 0) AS n FROM job_counts "
                    "WHERE state = 'queued'")[0]["n"]


def test_duplicates_across_chunks_and_files_are_skipped_and_counted():
    with Fake() as fake, PgEnv() as env:
        env.write_config({"gen": provider_conf(fake)}, env={"GEN_KEY": "k"})
        first = job_lines(LINES, "a")
        first[17000] = dict(first[10], body={"prompt": "a later copy"})
        rc, out, err = env.enqueue_lines(first, "--provider", "gen")
        assert rc == 0, err
        assert f"{LINES - 1} enqueued, 1 duplicates skipped" in out, out
        expected = [j["custom_id"] for i, j in enumerate(first)
                    if i != 17000]
        assert jobs_in_id_order(env) == expected
        body = env.rows("SELECT body FROM jobs WHERE custom_id = 'a-10'")
        assert "a later copy" not in body[0]["body"], body

        # the same file again: all duplicates, nothing new
        rc, out, err = env.enqueue_lines(first, "--provider", "gen")
        assert rc == 0, err
        assert f"0 enqueued, {LINES} duplicates skipped" in out, out

        # new lines, one of them a key of the first file, deep inside
        second = job_lines(LINES, "b")
        second[12000] = first[7]
        rc, out, err = env.enqueue_lines(second, "--provider", "gen")
        assert rc == 0, err
        assert f"{LINES - 1} enqueued, 1 duplicates skipped" in out, out
        total = 2 * LINES - 2
        assert env.rows("SELECT count(*) AS n FROM jobs")[0]["n"] == total
        assert kept_total(env) == total


def test_a_bad_line_after_many_chunks_leaves_nothing_of_its_file():
    with Fake() as fake, PgEnv() as env:
        env.write_config({"gen": provider_conf(fake)}, env={"GEN_KEY": "k"})
        rc, out, err = env.enqueue_lines(job_lines(10, "kept"), "--provider",
                                         "gen")
        assert rc == 0, err
        lines = job_lines(LINES, "c") + ["{not json"]
        rc, out, err = env.enqueue_lines(lines, "--provider", "gen")
        assert rc != 0
        assert f":{LINES + 1}:" in err and "nothing of it" in err, err
        assert env.rows("SELECT count(*) AS n FROM jobs")[0]["n"] == 10
        assert kept_total(env) == 10
        # and the same lines, fixed, go in whole afterwards
        rc, out, err = env.enqueue_lines(lines[:-1], "--provider", "gen")
        assert rc == 0, err
        assert f"{LINES} enqueued, 0 duplicates skipped" in out, out


if __name__ == "__main__":
    run(globals())
