#!/bin/sh
# bench/enqueue_ctl.sh: sluicectl enqueue of one JSONL file of N lines
# (default 1,000,000) into a fresh database; prints lines/s, wall and CPU
# time and the peak RSS. The file is generated first (not timed), lines
# shaped like a real image batch: custom_id, url and a ~100-byte body.
#
#   bench/enqueue_ctl.sh [BUILD_DIR] [LINES]
#   BUILD_DIR defaults to build/; needs python3 and GNU time (/usr/bin/time).
set -eu
build=${1:-build}
lines=${2:-1000000}
ctl=$build/sluicectl
[ -x "$ctl" ] || { echo "no $ctl (build first)" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-enqueue.XXXXXX")
trap 'rm -rf "$dir"' EXIT

cat >"$dir/sluice.conf" <<CONF
[daemon]
database = $dir/queue.db

[provider "bench"]
dialect = openai
base_url = http://127.0.0.1:9/v1
auth = none
CONF

python3 - "$dir/jobs.jsonl" "$lines" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({
            "custom_id": "night-%07d" % i, "url": "/v1/images/generations",
            "body": {"model": "img-3", "n": 1, "size": "1024x1024",
                     "prompt": "a watercolor fox number %d in the snow" % i},
        }) + "\n")
PY

/usr/bin/time -f "%e %U %S %M" -o "$dir/time" \
    "$ctl" -c "$dir/sluice.conf" enqueue --provider bench "$dir/jobs.jsonl" \
    >"$dir/out"
read -r wall user sys rss <"$dir/time"
tail -n 1 "$dir/out"
awk -v n="$lines" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" \
    -v c="$(nproc)" 'BEGIN {
    fmt = "%d lines in %.2f s: %.0f lines/s (cpu %.2f s user + %.2f s sys, "
    fmt = fmt "%d cpus), peak RSS %.1f MiB\n"
    printf fmt, n, w, n / w, u, s, c, r / 1024 }'
