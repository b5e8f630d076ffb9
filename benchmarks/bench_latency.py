"""Latency model speed: trace events per second per runtime-deployment pair.

Tiles the largest shipped trace 1, 4 and 16 times (each copy shifted past
the end of the previous one in time, and to fresh page frames so first
touches grow with it), pins the process to one CPU and times
``evaluate(trace, costs, [runtime], [deployment])``: the classification of
the trace plus the costs of one pair. Tables are read and validated before
timing. Each figure is the median of several runs after a warm-up run; the
first (cold) run is printed too, because fresh memory is slow to fault in on
these PVM guests.

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
    max_pfn = max(
        (
            int(pc.max(trace.table(k).column("pfn")).as_py() or 0)
            for k in PFN_KINDS
            if trace.has(k) and trace.table(k).num_rows
        ),
        default=0,
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
                    part.column("pfn"), pa.scalar(i * (max_pfn + 1), pa.uint64())
                )
                part = part.set_column(index, "pfn", shifted)
            parts.append(part)
        tables[kind] = pa.concat_tables(parts)
    manifest.end_ts_ns = manifest.start_ts_ns + copies * span_ns
    if manifest.workload.operations:
        manifest.workload.operations *= copies
    return write_trace(path, manifest, tables)


def timed(function, repeats: int) -> tuple[float, float]:
    """Return (cold seconds, median warm seconds) of ``function``."""
    start = time.perf_counter()
    function()
    cold = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        warm.append(time.perf_counter() - start)
    return cold, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per figure")
    args = parser.parse_args()
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    costs = default_costs()
    base = largest_shipped()
    print(
        f"trace {base.name}: {sum(base.manifest.event_counts.values()):,} events; "
        f"pinned to CPU {cpu}; median of {args.repeats} warm runs"
    )
    print()
    print("| scale | events | pair | cold s | warm s | M events/s (warm) |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    per_scale = {}
    with tempfile.TemporaryDirectory(prefix="paracell-bench-latency-") as directory:
        for scale in SCALES:
            trace = tile(base, scale, Path(directory) / f"x{scale}")
            trace.validate()
            nr_events = sum(trace.manifest.event_counts.values())
            warm_times = []
            for runtime in RUNTIMES:
                for deployment in DEPLOYMENTS:
                    cold, warm = timed(
                        lambda t=trace, r=runtime, d=deployment: evaluate(
                            t, costs, [r], [d]
                        ),
                        args.repeats,
                    )
                    warm_times.append(warm)
                    print(
                        f"| {scale}x | {nr_events:,} | {runtime} {deployment} | "
                        f"{cold:.3f} | {warm:.3f} | {nr_events / warm / 1e6:.1f} |"
                    )
            cold, warm = timed(lambda t=trace: evaluate(t, costs), args.repeats)
            print(
                f"| {scale}x | {nr_events:,} | all 8 pairs | {cold:.3f} | {warm:.3f} | "
                f"{nr_events / warm / 1e6:.1f} |"
            )
            per_scale[scale] = (nr_events, statistics.median(warm_times))
    print()
    print("| scale | events | median s per pair | time ratio | events ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    events_1x, seconds_1x = per_scale[1]
    for scale, (nr_events, seconds) in per_scale.items():
        time_ratio = seconds / seconds_1x
        print(
            f"| {scale}x | {nr_events:,} | {seconds:.3f} | {time_ratio:.2f} | "
            f"{nr_events / events_1x:.0f} |"
        )


if __name__ == "__main__":
    main()
