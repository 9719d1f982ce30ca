#!/usr/bin/env bash
# What `make bench` needs beyond the build and test packages: wrk, Node.js
# and npm (Debian's, unless a node is already there), perf (for
# BENCH_SYSCALLS=1 of bench/cluster.pl), and the validate service's npm
# packages (bench/validate/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v perf >/dev/null || missing+=(linux-perf)   # BENCH_SYSCALLS=1
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench/setup.sh: installing ${missing[*]}"
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -d validate/node_modules ] \
   || [ validate/package-lock.json -nt validate/node_modules ]; then
    (cd validate && npm ci --no-audit --no-fund --loglevel=error \
        && touch node_modules)
fi
