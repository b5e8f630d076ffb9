"""Memory model speed: allocator events per second per policy, and its scaling.

Takes the shipped trace with the most page-allocator events and tiles its
events 1, 4 and 16 times: each copy starts 1 ms after the previous one ends
and reuses the same page frames, and every allocation still live at the end
of a copy is freed there, so each copy starts from the same state and the
work per event stays the same. For every policy on its default placement
the script times ``Policy.run()`` plus the metrics of its op stream: the
whole per-policy cost once the trace is read. It also times
``evaluate(trace, costs)`` for all seven policies, reading the trace
included, and, with ``--compile``, the first run in a fresh process with an
empty numba cache (the one-off JIT compile).

The machines are shared, so rates come from the process's CPU time on one
pinned core; wall times are printed beside them. Figures are medians of
``--repeats`` runs after a warm-up.

Run: ``.venv/bin/python benchmarks/bench_memory.py [--repeats N] [--compile]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

from paracell.costs import default_costs
from paracell.models.memory import POLICIES, AllocatorEvents, CostModel, evaluate
from paracell.models.memory.events import EV_ALLOC, EV_FREE
from paracell.models.memory.replay import ReplayConfig
from paracell.trace import load_trace, shipped_trace_paths

SCALES = (1, 4, 16)
GAP_NS = 1_000_000


def largest_shipped():
    traces = [load_trace(p) for p in shipped_trace_paths()]
    traces = [t for t in traces if t.has("mm_page_alloc")]
    return max(
        traces,
        key=lambda t: (
            t.manifest.event_counts.get("mm_page_alloc", 0)
            + t.manifest.event_counts.get("mm_page_free", 0)
        ),
    )


def closing_frees(events: AllocatorEvents) -> tuple[np.ndarray, np.ndarray]:
    """Return (pfn, order) of the allocations still live at the end of ``events``."""
    live: dict[int, int] = {}
    for kind, pfn, order in zip(events.kind, events.pfn, events.order, strict=True):
        if kind == EV_ALLOC:
            live[int(pfn)] = int(order)
        elif kind == EV_FREE and pfn >= 0:
            live.pop(int(pfn), None)
    pfns = np.array(sorted(live), dtype=np.int64)
    orders = np.array([live[p] for p in pfns], dtype=np.int8)
    return pfns, orders


def tile(events: AllocatorEvents, copies: int) -> AllocatorEvents:
    """Return ``copies`` copies of ``events`` in a row, each closed by frees."""
    pfns, orders = closing_frees(events)
    span = events.end_ts_ns - events.start_ts_ns + GAP_NS
    n = len(pfns)
    columns = {"ts_ns": [], "kind": [], "pfn": [], "order": [], "cpu": []}
    for i in range(copies):
        offset = i * span
        end = events.end_ts_ns + offset
        columns["ts_ns"] += [events.ts_ns + offset, np.full(n, end, dtype=np.int64)]
        columns["kind"] += [events.kind, np.full(n, EV_FREE, dtype=np.int8)]
        columns["pfn"] += [events.pfn, pfns]
        columns["order"] += [events.order, orders]
        columns["cpu"] += [events.cpu, np.zeros(n, dtype=np.int32)]
    merged = {k: np.concatenate(v) for k, v in columns.items()}
    return replace(
        events,
        name=f"{events.name} x{copies}",
        end_ts_ns=events.end_ts_ns + (copies - 1) * span,
        **merged,
    )


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


def compile_cost(path: str) -> float:
    """Return the wall time of evaluate() in a new process with an empty numba cache."""
    code = (
        "import time; t = time.perf_counter();"
        "from paracell.costs import default_costs;"
        "from paracell.models.memory import evaluate;"
        "from paracell.trace import load_trace;"
        f"evaluate(load_trace({path!r}), default_costs());"
        "print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory(prefix="paracell-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per figure")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time a first run with an empty numba cache",
    )
    args = parser.parse_args()
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    costs = default_costs()
    config = ReplayConfig.from_costs(costs)
    cost_model = CostModel.from_costs(costs)
    trace = largest_shipped()
    base = AllocatorEvents.from_trace(trace)
    print(
        f"trace {trace.name}: {len(base):,} allocator events "
        f"({base.nr_allocs:,} allocations, {base.nr_frees:,} frees, "
        f"{base.nr_refills:,} recorded refills); pinned to CPU {core}; "
        f"median of {args.repeats} warm runs"
    )
    print()
    print(
        "| scale | events | policy | placement | cold wall s | wall s | CPU s "
        "| M events per CPU s |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    per_policy: dict[str, dict[int, float]] = {name: {} for name in POLICIES}
    sizes = {}
    for scale in SCALES:
        events = tile(base, scale)
        sizes[scale] = len(events)
        for name, policy in POLICIES.items():
            cold, wall, cpu = timed(
                lambda e=events, p=policy: p.run(e, config).compute(cost_model),
                args.repeats,
            )
            per_policy[name][scale] = cpu
            print(
                f"| {scale}x | {len(events):,} | {name} | {policy.default_placement} | "
                f"{cold:.3f} | {wall:.3f} | {cpu:.3f} | {len(events) / cpu / 1e6:.1f} |"
            )
    print()
    print("| policy | CPU s per event, 4x / 1x | 16x / 1x |")
    print("| --- | ---: | ---: |")
    for name, seconds in per_policy.items():
        per_event = {s: seconds[s] / sizes[s] for s in SCALES}
        print(
            f"| {name} | {per_event[4] / per_event[1]:.2f} "
            f"| {per_event[16] / per_event[1]:.2f} |"
        )
    print()
    cold, wall, cpu = timed(
        lambda: evaluate(load_trace(trace.path), costs), args.repeats
    )
    print(
        f"all seven policies on {trace.name}, reading the trace included: "
        f"{wall:.2f} s wall (median), {cpu:.2f} s CPU; first run in this process "
        f"{cold:.2f} s"
    )
    if args.compile:
        seconds = compile_cost(str(trace.path))
        print(
            "first run with an empty numba cache (JIT compile included): "
            f"{seconds:.1f} s wall"
        )


if __name__ == "__main__":
    main()
