#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks: initdb into a
# temporary directory, listening only on a Unix socket in that directory,
# run as an unprivileged user (nobody when started as root: PostgreSQL
# refuses to run as root).
#   eval "$(scripts/pg_server.sh start)"   prints the exports below
#   scripts/pg_server.sh stop DIR          stops it and removes DIR
#   scripts/pg_server.sh ctl DIR stop|start    pg_ctl as the owner
# SLUICE_PG_DURABLE=1: fsync on, synchronous_commit off (benchmarks).
# Exports: SLUICE_TEST_PG (a libpq connection string to database
# "sluice"), SLUICE_TEST_PGDIR (the directory), SLUICE_TEST_PGCTL (this
# script, for stop and start from tests).
set -euo pipefail

pgbin=${SLUICE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
start)
    [ -x "$pgbin/initdb" ] || { echo "pg_server: no initdb under $pgbin" >&2; exit 1; }
    dir=$(mktemp -d /tmp/sluice-pg.XXXXXX)
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown nobody:nogroup "$dir"; fi
    as_owner "$pgbin/initdb" -D "$dir/data" -A trust -U sluice -E UTF8 \
        --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    # In the config, so a restart (ctl DIR start) keeps it. fsync off: a
    # throwaway server, the tests' durability is the daemon's, not the
    # disk's. SLUICE_PG_DURABLE=1 (benchmarks): fsync on, commits not
    # waiting for their WAL flush, as SQLite's synchronous=NORMAL.
    if [ "${SLUICE_PG_DURABLE:-0}" = 1 ]; then
        sync="synchronous_commit = off"
    else
        sync="fsync = off"
    fi
    printf "%s\n" "unix_socket_directories = '$dir'" "listen_addresses = ''" \
        "$sync" "max_connections = 200" |
        as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    as_owner "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        start >/dev/null ||
        { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$pgbin/createdb" -h "$dir" -U sluice sluice
    echo "export SLUICE_TEST_PG='host=$dir user=sluice dbname=sluice'"
    echo "export SLUICE_TEST_PGDIR='$dir'"
    echo "export SLUICE_TEST_PGCTL='$self'"
    ;;
ctl)
    dir=$2
    shift 2
    as_owner "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -m fast "$@" >/dev/null
    ;;
stop)
    dir=$2
    [ -d "$dir/data" ] && as_owner "$pgbin/pg_ctl" -D "$dir/data" -w -t 60 \
        -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start | stop DIR | ctl DIR ARGS…" >&2
    exit 64
    ;;
esac
