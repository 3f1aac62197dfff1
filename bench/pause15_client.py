#!/usr/bin/env python3
"""The common script strategy, as a baseline for bench/flow: a fixed pool of
workers sends the queue's requests, and any rate-limit error (429) pauses
everything for 15 s; the throttled request goes back to the queue.

It sends the same requests as the sluice runs (POST, JSON body, an
Idempotency-Key equal to the custom id) over keep-alive connections, one
per worker, so the fake provider's log measures both the same way.

    pause15_client.py --url http://127.0.0.1:PORT/openai --concurrency 64 \\
                      --jobs 10000 --prefix p15 --duration 40

Prints one JSON line with its own counters on exit (the bench uses the
provider's log, not these).
"""

import argparse
import collections
import http.client
import json
import sys
import threading
import time
import urllib.parse

PATH = "/v1/images/generations"


class Client:
    def __init__(self, args):
        u = urllib.parse.urlsplit(args.url)
        self.host, self.port = u.hostname, u.port or 80
        self.path = u.path.rstrip("/") + PATH
        self.pause_s = args.pause
        self.deadline = time.monotonic() + args.duration
        self.jobs = collections.deque(range(args.jobs))
        self.prefix = args.prefix
        self.tokens = args.tokens
        self.lock = threading.Lock()
        self.pause_until = 0.0
        self.counts = collections.Counter()

    def next_job(self):
        """Waits out a pause; returns a job number, or None when done."""
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                return None
            with self.lock:
                wait = self.pause_until - now
                if wait <= 0:
                    return self.jobs.popleft() if self.jobs else None
            time.sleep(min(wait, self.deadline - now, 0.05))

    def finish(self, job, status):
        with self.lock:
            self.counts[status] += 1
            if status == 429:
                # The strategy under test: any rate limit stops everyone.
                self.pause_until = max(self.pause_until,
                                       time.monotonic() + self.pause_s)
            if status == 429 or status == 0 or status >= 500:
                self.jobs.appendleft(job)

    def worker(self):
        conn = None
        while True:
            job = self.next_job()
            if job is None:
                break
            b = {"model": "bench-1",
                 "prompt": "a lighthouse at dusk, variant %d" % job,
                 "size": "1024x1024"}
            if self.tokens:
                b["max_tokens"] = 100 * (1 + job % 10)  # as benchlib's
            body = json.dumps(b)
            headers = {"Content-Type": "application/json",
                       "Authorization": "Bearer sk-bench",
                       "Idempotency-Key": "%s-%d" % (self.prefix, job)}
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port,
                                                      timeout=30)
                conn.request("POST", self.path, body, headers)
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                status = 0
            self.finish(job, status)
        if conn is not None:
            conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True,
                    help="provider base URL (the path prefix included)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--prefix", default="p15")
    ap.add_argument("--duration", type=float, default=40.0,
                    help="stop sending after this many seconds")
    ap.add_argument("--tokens", action="store_true",
                    help="bodies ask for max_tokens 100..1000 (mixed 10x)")
    ap.add_argument("--pause", type=float, default=15.0,
                    help="seconds everything stops after a 429")
    args = ap.parse_args()
    c = Client(args)
    threads = [threading.Thread(target=c.worker, daemon=True)
               for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({str(k): v for k, v in sorted(c.counts.items())}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
