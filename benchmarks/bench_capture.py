"""Capture overhead: wall time of workloads traced by paracell versus untraced.

Runs each workload untraced and traced, interleaved, and prints the median
of each and their ratio, measured within this one run. Two ratios are
printed: the command's own wall time (start to exit, which is what tracing
slows down) and the whole ``paracell trace`` process (adds setup, decoding
and writing the Parquet files).

Needs root. Workloads whose tools are missing are skipped with the reason.

    sudo .venv/bin/python benchmarks/bench_capture.py [--reps 5] [--only http,venv]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HTTP_REQUESTS = 500
REDIS_REQUESTS = 20000

# A loopback HTTP server and a client making a fixed number of requests,
# both from the Python standard library, in one traced process tree.
HTTP_SCRIPT = textwrap.dedent(f"""
    import http.client, http.server, subprocess, sys, threading, time
    if sys.argv[1:] == ["serve"]:
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        srv = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        print(srv.server_address[1], flush=True)
        srv.serve_forever()
    server = subprocess.Popen([sys.executable, __file__, "serve"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    port = int(server.stdout.readline())
    for _ in range({HTTP_REQUESTS}):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/")
        conn.getresponse().read()
        conn.close()
    server.terminate()
    server.wait()
    """)

REDIS_SCRIPT = textwrap.dedent(f"""
    set -e
    port=16399
    redis-server --bind 127.0.0.1 --port $port --save "" --appendonly no \\
        --loglevel warning --dir "$1" &
    for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.05; done
    redis-benchmark -h 127.0.0.1 -p $port -n {REDIS_REQUESTS} -c 16 -t set,get -q >/dev/null
    redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true
    wait
    """)


def gcc_source(path: Path) -> None:
    """Write a C file with many small functions: a compile of a few seconds."""
    parts = ["#include <stdio.h>\n"]
    for i in range(1500):
        parts.append(
            f"int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) "
            f"s += (k * {i}) ^ (s >> 3); return s + {i}; }}\n"
        )
    parts.append("int main(void) { long t = 0;\n")
    parts.extend(f"t += f{i}({i % 7});\n" for i in range(1500))
    parts.append('printf("%ld\\n", t); return 0; }\n')
    path.write_text("".join(parts))


def workloads(work: Path) -> dict[str, list[str] | str]:
    """Return name -> command, or name -> reason it is skipped."""
    out: dict[str, list[str] | str] = {}
    http = work / "http_load.py"
    http.write_text(HTTP_SCRIPT)
    out["http"] = [sys.executable, str(http)]
    venv = work / "venv"
    out["venv"] = [sys.executable, "-m", "venv", "--clear", str(venv)]
    if shutil.which("gcc"):
        src = work / "many.c"
        gcc_source(src)
        out["gcc"] = ["gcc", "-O2", "-o", str(work / "many"), str(src)]
    else:
        out["gcc"] = "gcc is not installed"
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        script = work / "redis.sh"
        script.write_text(REDIS_SCRIPT)
        out["redis"] = ["bash", str(script), str(work)]
    else:
        out["redis"] = "redis-server or redis-benchmark is not installed"
    return out


NGINX_CONF = """\
worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{ listen 127.0.0.1:{port}; root {work}/www; }}
}}
"""


def nginx_rate(work: Path, traced: bool, duration_s: int = 2) -> float:
    """Start nginx (traced or not), run wrk against it, return requests/s."""
    port = 18081
    (work / "www").mkdir(exist_ok=True)
    (work / "www" / "index.html").write_text("<html>" + "paracell " * 200 + "</html>")
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port))
    pid_file = work / "nginx.pid"
    pid_file.unlink(missing_ok=True)
    command = ["nginx", "-c", str(conf), "-p", str(work)]
    if traced:
        command = [
            sys.executable,
            "-m",
            "paracell",
            "-q",
            "trace",
            "-o",
            str(work / "trace-nginx"),
            "--force",
            "--",
            *command,
        ]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not start")
            time.sleep(0.05)
        out = subprocess.run(
            [
                "wrk",
                "-t",
                "2",
                "-c",
                "16",
                "-d",
                f"{duration_s}s",
                f"http://127.0.0.1:{port}/index.html",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        os.kill(int(pid_file.read_text()), 3)  # SIGQUIT: graceful stop
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"no Requests/sec in wrk output: {out!r}")


def run_untraced(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - t0


def run_traced(command: list[str], out: Path) -> tuple[float, float, dict[str, int]]:
    """Return (command wall s, whole paracell wall s, event counts)."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "paracell",
            "-q",
            "trace",
            "-o",
            str(out),
            "--force",
            "--",
            *command,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    command_s = (manifest["end_ts_ns"] - manifest["start_ts_ns"]) / 1e9
    counts = dict(manifest["event_counts"])
    counts["lost"] = manifest["lost_events"]["total"]
    return command_s, total, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps", type=int, default=5, help="runs of each mode (default 5)"
    )
    parser.add_argument("--only", help="comma-separated workload names")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_capture: needs root for tracefs", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="paracell-bench-") as tmp:
        work = Path(tmp)
        chosen = workloads(work)
        if args.only:
            chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
        print(
            f"{'workload':<8} {'untraced s':>10} {'traced s':>9} {'ratio':>6} "
            f"{'with decode s':>13} {'ratio':>6}  events (median run)"
        )
        for name, command in chosen.items():
            if isinstance(command, str):
                print(f"{name:<8} skipped: {command}")
                continue
            run_untraced(command)  # warm the page cache
            plain, traced, total = [], [], []
            counts: dict[str, int] = {}
            for _ in range(args.reps):
                plain.append(run_untraced(command))
                c, t, counts = run_traced(command, work / f"trace-{name}")
                traced.append(c)
                total.append(t)
            p, c, t = (statistics.median(x) for x in (plain, traced, total))
            events = sum(v for k, v in counts.items() if k != "lost")
            print(
                f"{name:<8} {p:>10.3f} {c:>9.3f} {c / p:>6.2f} {t:>13.3f} {t / p:>6.2f}"
                f"  {events} events, {counts['lost']} lost"
            )
        if not args.only or "nginx" in args.only.split(","):
            bench_nginx(work, args.reps)
    return 0


def bench_nginx(work: Path, reps: int) -> None:
    """Compare the request rate of nginx under wrk, traced and untraced."""
    if not (shutil.which("nginx") and shutil.which("wrk")):
        print("nginx    skipped: nginx or wrk is not installed")
        return
    plain_rate, traced_rate = [], []
    for _ in range(reps):
        plain_rate.append(nginx_rate(work, traced=False))
        traced_rate.append(nginx_rate(work, traced=True))
    plain, traced = statistics.median(plain_rate), statistics.median(traced_rate)
    print(
        f"nginx under wrk (2 s, 16 connections): {plain:.0f} requests/s untraced, "
        f"{traced:.0f} traced, slowdown {plain / traced:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
