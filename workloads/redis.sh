#!/usr/bin/env bash
# Recreate the shipped "redis" trace: redis-server on loopback, traced with
# paracell, while redis-benchmark (not traced) sends a fixed number of
# requests. Needs root and the Debian packages redis-server and redis-tools.
#
# Usage: workloads/redis.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-src/paracell/data/traces/redis}
paracell=${PARACELL:-paracell}
port=${PORT:-16379}
requests=${REQUESTS:-20000}   # per benchmark test
tests=set,get,incr,lpush,lpop,mset
nr_tests=6

work=$(mktemp -d /tmp/paracell-redis.XXXXXX)
tracer=
cleanup() {
    if [ -n "$tracer" ] && kill -0 "$tracer" 2>/dev/null; then
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
        wait "$tracer" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$paracell" trace -o "$out" --force --name redis --kind server \
    --operations $((requests * nr_tests)) --operation-unit requests \
    --recreate workloads/redis.sh -- \
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$work" --loglevel warning &
tracer=$!

for _ in $(seq 100); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-benchmark -h 127.0.0.1 -p "$port" -n "$requests" -c 16 -t "$tests" -q
redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$tracer"
tracer=
