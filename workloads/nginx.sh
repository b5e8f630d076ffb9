#!/usr/bin/env bash
# Recreate the shipped "nginx" trace: nginx (master and two workers) serving
# static files on loopback, traced with paracell, while wrk (not traced)
# sends requests for a fixed time. The request count reported by wrk goes
# into the manifest. Needs root and the Debian packages nginx-light and wrk.
#
# Usage: workloads/nginx.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-src/paracell/data/traces/nginx}
paracell=${PARACELL:-paracell}
port=${PORT:-18080}
duration=${DURATION:-2s}

work=$(mktemp -d /tmp/paracell-nginx.XXXXXX)
tracer=
cleanup() {
    if [ -n "$tracer" ] && kill -0 "$tracer" 2>/dev/null; then
        [ -f "$work/nginx.pid" ] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null
        wait "$tracer" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/www"
# A small page and a 64 KiB object, as a static site would serve.
python3 -c "print('<html><body>' + 'paracell ' * 200 + '</body></html>')" \
    > "$work/www/index.html"
head -c 65536 /dev/zero | tr '\0' 'x' > "$work/www/object.bin"
chmod -R a+rX "$work"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 512; }
http {
    access_log off;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    server {
        listen 127.0.0.1:$port;
        root $work/www;
    }
}
CONF
cat > "$work/count.lua" <<'LUA'
done = function(summary, latency, requests)
    local f = io.open(os.getenv("OPS_FILE"), "w")
    f:write(string.format("%d\n", summary.requests))
    f:close()
end
LUA

"$paracell" trace -o "$out" --force --name nginx --kind server \
    --operations-from "$work/operations" --operation-unit requests \
    --recreate workloads/nginx.sh -- \
    nginx -c "$work/nginx.conf" -p "$work" &
tracer=$!

for _ in $(seq 100); do
    [ -s "$work/nginx.pid" ] && break
    sleep 0.1
done
OPS_FILE="$work/operations" wrk -t 2 -c 16 -d "$duration" -s "$work/count.lua" \
    "http://127.0.0.1:$port/index.html"
kill -QUIT "$(cat "$work/nginx.pid")"
wait "$tracer"
tracer=
