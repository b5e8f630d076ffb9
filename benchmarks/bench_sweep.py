"""Sweep scaling: throughput of a CPU-bound sweep with 1 and with 2 local workers.

Run: ``.venv/bin/python benchmarks/bench_sweep.py [--repeats N] [TRACE ...]``

The sweep is every memory policy on the shipped traces (or the given ones)
on two placements and five free-page-reporting delays: 280 cells with the
shipped traces. Memory cells replay every allocator event through a
policy; on this project's machines a cell takes 28 ms of CPU on average
(the agent traces longest), and the whole sweep about 8 s on one worker. Fewer, shorter sweeps made the ratio noisy: with
under 2 s per sweep, loading each trace once per worker was a large share.
Each configuration runs the whole sweep into a fresh results directory
through ``paracell sweep``. Throughput is measured between the first and
the last cell written to the store, so starting the worker processes (and
loading their compiled code) is not counted. The script prints the ratio
of the two throughputs, measured within one run, and its median over the
repeats. It also prints how much CPU other processes took during each run
(from /proc/stat), and the median over the pairs that had the machine
nearly to themselves, because a shared 2-CPU machine cannot give a second
worker a CPU that another program is using.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paracell.reports.store import ResultsStore

SPEC = """
name = "bench-sweep"
traces = {traces}

[memory]
placements = ["default", "buddy"]

[[params]]
name = "memory.fpr.delay"
values = [500, 1000, 2000, 4000, 8000]
"""


# A pair of runs counts as quiet when all other processes together used less
# than this many CPUs during each run. The choice does not look at the
# sweep's own result, so it does not bias the ratio.
QUIET_OTHERS_SHARE = 0.2


def _throughput(results: Path) -> tuple[int, float]:
    """Return the number of cells and cells per second between first and last write."""
    with ResultsStore(results) as store:
        _, rows = store.query("SELECT created_at FROM runs WHERE cell_id IS NOT NULL")
    times = sorted(datetime.datetime.fromisoformat(r[0]) for r in rows)
    span_s = (times[-1] - times[0]).total_seconds()
    return len(times), (len(times) - 1) / span_s


def _machine_busy_s() -> float:
    """Return the CPU seconds all CPUs of the machine have spent busy since boot."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    ticks = [int(v) for v in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _run(spec: Path, results: Path, workers: int) -> tuple[int, float, float, float]:
    """Run one sweep; return cells, cells per second, and two CPU shares.

    The first share is the CPU time of the sweep process and its pool
    workers (all waited-for descendants) per wall second: the parallelism
    the sweep reached. The second is the CPU time every other process on the
    machine used per wall second: the competition the sweep had.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = _machine_busy_s()
    started = time.monotonic()
    nr_cells, rate = _run_sweep(spec, results, workers)
    wall_s = time.monotonic() - started
    busy_s = _machine_busy_s() - busy_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return nr_cells, rate, cpu_s / wall_s, max(0.0, busy_s - cpu_s) / wall_s


def _run_sweep(spec: Path, results: Path, workers: int) -> tuple[int, float]:
    command = [
        sys.executable,
        "-m",
        "paracell",
        "-q",
        "sweep",
        str(spec),
        "--workers",
        str(workers),
        "--results",
        str(results),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return _throughput(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="*", type=Path, help="trace directories")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each configuration"
    )
    args = parser.parse_args()
    traces = [str(p.resolve()) for p in args.traces] or ["shipped"]
    ratios: list[float] = []
    quiet_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(SPEC.format(traces=repr(traces).replace("'", '"')))
        # One untimed run fills numba's on-disk cache of the memory model, so
        # no timed run pays for compiling it.
        _run_sweep(spec, Path(tmp) / "warm-up", 2)
        for repeat in range(args.repeats):
            # Alternate which configuration goes first, so a slow drift of
            # the machine's other load does not favour one of them.
            order = (1, 2) if repeat % 2 == 0 else (2, 1)
            rates = {}
            parallelism = {}
            others = {}
            for workers in order:
                nr_cells, rates[workers], parallelism[workers], others[workers] = _run(
                    spec, Path(tmp) / f"w{workers}-{repeat}", workers
                )
            ratios.append(rates[2] / rates[1])
            if max(others.values()) < QUIET_OTHERS_SHARE:
                quiet_ratios.append(ratios[-1])
            print(
                f"run {repeat + 1}: {nr_cells} cells, 1 worker {rates[1]:.2f} cells/s, "
                f"2 workers {rates[2]:.2f} cells/s, ratio {ratios[-1]:.2f}x; "
                f"sweep CPU/wall {parallelism[1]:.2f} and {parallelism[2]:.2f}; "
                f"other processes CPU/wall {others[1]:.2f} and {others[2]:.2f}"
            )
    print(
        f"median ratio 2 vs 1 workers: {statistics.median(ratios):.2f}x over "
        f"{len(ratios)} pairs (target >= 1.6x)"
    )
    if quiet_ratios:
        quiet_median = statistics.median(quiet_ratios)
        print(
            f"median ratio over the {len(quiet_ratios)} pairs where other processes "
            f"used under {QUIET_OTHERS_SHARE:g} CPU: {quiet_median:.2f}x"
        )
    else:
        print("no pair ran without competition from other processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
