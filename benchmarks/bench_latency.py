"""Latency model speed: trace events per second per runtime-deployment pair.

Tiles the largest shipped trace 1, 4 and 16 times. Each copy starts after
the end of the previous one and uses fresh page frames, so first touches
grow with the copies. The script pins itself to one CPU and times
``evaluate(trace, costs, [runtime], [deployment])``, which classifies the
trace and costs one pair. Tables are read and validated before
timing. Each figure is the median of several runs after a warm-up run; the
first (cold) run is printed too, because it compiles or loads the numba
loops and fresh memory is slow to fault in on these PVM guests. The machines
are shared, so the rate is computed from the CPU time of the process (it
runs on one core), with the wall time beside it.

Run: ``.venv/bin/python benchmarks/bench_latency.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from paracell.costs import DEPLOYMENTS, default_costs
from paracell.models.latency import RUNTIMES, evaluate
from paracell.trace import load_trace, shipped_trace_paths, write_trace
from paracell.trace.store import Trace

SCALES = (1, 4, 16)
PFN_KINDS = (
    "mm_page_alloc",
    "mm_page_free",
    "mm_page_free_batched",
    "mm_page_alloc_zone_locked",
    "mm_page_pcpu_drain",
)


def largest_shipped() -> Trace:
    traces = [load_trace(p) for p in shipped_trace_paths()]
    return max(traces, key=lambda t: sum(t.manifest.event_counts.values()))


def tile(trace: Trace, copies: int, path: Path) -> Trace:
    """Write ``copies`` copies of ``trace`` one after another and return the result."""
    if copies == 1:
        return trace
    manifest = copy.deepcopy(trace.manifest)
    span_ns = manifest.duration_ns + 1

    # Each copy moves to page frames above the previous copy's, so the
    # distinct frames (first touches) grow with the copies. The extra 1024
    # frames cover an order-10 block that starts at the highest frame.
    ranges = [
        pc.min_max(trace.table(k).column("pfn")).as_py()
        for k in PFN_KINDS
        if trace.has(k) and trace.table(k).num_rows
    ]
    pfn_span = (
        max(r["max"] for r in ranges) - min(r["min"] for r in ranges) + 1024
        if ranges
        else 0
    )

    tables = {}
    for kind in trace.kinds:
        table = trace.table(kind)
        parts = []
        for i in range(copies):
            part = table.set_column(
                0,
                "ts_ns",
                pc.add(table.column("ts_ns"), pa.scalar(i * span_ns, pa.int64())),
            )
            if kind in PFN_KINDS:
                index = part.schema.get_field_index("pfn")
                shifted = pc.add(
                    part.column("pfn"), pa.scalar(i * pfn_span, pa.uint64())
                )
                part = part.set_column(index, "pfn", shifted)
            parts.append(part)
        tables[kind] = pa.concat_tables(parts)

    manifest.end_ts_ns = manifest.start_ts_ns + copies * span_ns
    if manifest.workload.operations:
        manifest.workload.operations *= copies
    return write_trace(path, manifest, tables)


def timed(function, repeats: int) -> tuple[float, float, float]:
    """Return (cold wall s, median warm wall s, median warm CPU s) of ``function``."""
    start = time.perf_counter()
    function()
    cold = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return cold, statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per figure")
    args = parser.parse_args()
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    costs = default_costs()
    base = largest_shipped()
    print(
        f"trace {base.name}: {sum(base.manifest.event_counts.values()):,} events; "
        f"pinned to CPU {core}; median of {args.repeats} warm runs"
    )
    print()
    print(
        "| scale | events | pair | cold wall s | wall s | CPU s | M events per CPU s |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    per_scale = {}
    with tempfile.TemporaryDirectory(prefix="paracell-bench-latency-") as directory:
        for scale in SCALES:
            trace = tile(base, scale, Path(directory) / f"x{scale}")
            trace.validate()
            nr_events = sum(trace.manifest.event_counts.values())
            cpu_times = []
            for runtime in RUNTIMES:
                for deployment in DEPLOYMENTS:
                    cold, wall, cpu = timed(
                        lambda t=trace, r=runtime, d=deployment: evaluate(
                            t, costs, [r], [d]
                        ),
                        args.repeats,
                    )
                    cpu_times.append(cpu)
                    print(
                        f"| {scale}x | {nr_events:,} | {runtime} {deployment} | "
                        f"{cold:.3f} | {wall:.3f} | {cpu:.3f} | "
                        f"{nr_events / cpu / 1e6:.1f} |"
                    )
            cold, wall, cpu = timed(lambda t=trace: evaluate(t, costs), args.repeats)
            print(
                f"| {scale}x | {nr_events:,} | all 8 pairs | {cold:.3f} | {wall:.3f} | "
                f"{cpu:.3f} | {nr_events / cpu / 1e6:.1f} |"
            )
            per_scale[scale] = (nr_events, statistics.median(cpu_times))
    print()
    print("| scale | events | median CPU s per pair | time ratio | events ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    events_1x, seconds_1x = per_scale[1]
    for scale, (nr_events, seconds) in per_scale.items():
        ratio = seconds / seconds_1x
        print(
            f"| {scale}x | {nr_events:,} | {seconds:.3f} | {ratio:.2f} | "
            f"{nr_events / events_1x:.0f} |"
        )


if __name__ == "__main__":
    main()
