#!/usr/bin/env bash
# Installs the Debian 12 packages sluice builds and tests with, those that
# are missing only. Needs root (or sudo) when something is missing.
set -euo pipefail

pkgs=(build-essential cmake pkg-config
      libuv1-dev libcurl4-openssl-dev libsqlite3-dev sqlite3 libjansson-dev
      libinih-dev libssl-dev libsystemd-dev
      libcmocka-dev libmicrohttpd-dev python3 clang
      libpq-dev postgresql util-linux
      prometheus)  # promtool, which checks /metrics in the tests
if [ "${SLUICE_BENCH_DEPS:-0}" = 1 ]; then
    pkgs+=(wrk)
fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#pkgs[@]} packages present"
    exit 0
fi
echo "deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
