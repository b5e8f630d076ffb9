"""A modelled timeline: native time cut at every event that adds overhead.

The timeline is one modelled clock, not one track per CPU. It starts at the
trace's ``start_ts_ns``, and native time runs as in the trace. At each event
with overhead the clock stops for the event's share of the stretch, which is
its overhead divided by the number of busy CPUs, as in the totals. Slice
durations are whole nanoseconds and sum to the report's ``total_ns``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paracell.costs import CostTable, default_costs
from paracell.models.latency.events import TraceEvents, classify
from paracell.models.latency.model import evaluate_events
from paracell.models.latency.paths import CLASSES, SUBGROUPS, path_costs
from paracell.trace.store import Trace

NATIVE = "native"
SLICE_CLASSES: tuple[str, ...] = (NATIVE, *CLASSES)


@dataclass
class Timeline:
    """Slices of modelled time, in order; ``class_id`` indexes ``class_names``.

    ``cpu`` and ``tid`` name where an overhead arose; native slices have -1.
    """

    runtime: str
    deployment: str
    start_ns: np.ndarray
    dur_ns: np.ndarray
    class_id: np.ndarray
    cpu: np.ndarray
    tid: np.ndarray
    total_ns: int
    class_names: tuple[str, ...] = SLICE_CLASSES

    def __len__(self) -> int:
        return int(self.dur_ns.size)

    def class_of(self, index: int) -> str:
        return self.class_names[int(self.class_id[index])]


def _event_overheads(
    events: TraceEvents, costs: CostTable, runtime: str, deployment: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (ts_ns, overhead_ns, class_id, cpu, tid) of every event with overhead."""
    per_event = path_costs(costs, runtime, deployment)
    parts = []
    by_class = events.class_events()
    for cls in CLASSES:
        class_events = by_class.get(cls)
        if class_events is None or len(class_events) == 0:
            continue
        table = np.array([per_event[cls][s] for s in SUBGROUPS[cls]])
        if not table.any():
            continue
        cost = table[class_events.sub] * class_events.amount * class_events.weight
        keep = cost > 0
        parts.append(
            (
                class_events.ts_ns[keep].astype(np.int64),
                cost[keep],
                np.full(int(keep.sum()), SLICE_CLASSES.index(cls), dtype=np.int16),
                class_events.cpu[keep].astype(np.int32),
                class_events.tid[keep].astype(np.int32),
            )
        )
    if not parts:
        empty = np.zeros(0)
        return (
            empty.astype(np.int64),
            empty,
            empty.astype(np.int16),
            empty.astype(np.int32),
            empty.astype(np.int32),
        )
    ts, cost, cls_id, cpu, tid = (
        np.concatenate(column) for column in zip(*parts, strict=True)
    )
    # Stable, so events at one time keep the class order of CLASSES.
    order = np.argsort(ts, kind="stable")
    return ts[order], cost[order], cls_id[order], cpu[order], tid[order]


def _whole_ns(cost: np.ndarray, target_ns: int) -> np.ndarray:
    """Round per-event costs to whole ns whose sum is exactly ``target_ns``.

    Rounding the running sum instead of each cost keeps sub-nanosecond
    overheads from vanishing. The largest slice absorbs the last fraction of
    a ns of float error.
    """
    if cost.size == 0:
        return cost.astype(np.int64)
    running = np.rint(np.cumsum(cost)).astype(np.int64)
    whole = np.diff(running, prepend=np.int64(0))
    whole[int(np.argmax(whole))] += target_ns - int(running[-1])
    return whole


def timeline(
    trace: Trace | TraceEvents,
    costs: CostTable | None,
    runtime: str,
    deployment: str,
) -> Timeline:
    """Build the modelled timeline of ``trace`` under one runtime and deployment."""
    costs = costs if costs is not None else default_costs()
    events = trace if isinstance(trace, TraceEvents) else classify(trace)
    report = evaluate_events(events, costs, [runtime], [deployment])
    overhead_ns = report.result(runtime, deployment).overhead_ns

    ts, cost, cls_id, cpu, tid = _event_overheads(events, costs, runtime, deployment)
    start, end = events.start_ts_ns, events.end_ts_ns
    ts = np.clip(ts, start, end)
    overhead = _whole_ns(cost, overhead_ns)

    n = ts.size
    gaps = np.diff(ts, prepend=np.int64(start), append=np.int64(end))
    dur = np.empty(2 * n + 1, dtype=np.int64)
    dur[0::2] = gaps
    dur[1::2] = overhead
    class_id = np.zeros(2 * n + 1, dtype=np.int16)
    class_id[1::2] = cls_id
    cpu_out = np.full(2 * n + 1, -1, dtype=np.int32)
    cpu_out[1::2] = cpu
    tid_out = np.full(2 * n + 1, -1, dtype=np.int32)
    tid_out[1::2] = tid

    keep = dur > 0
    dur, class_id, cpu_out, tid_out = (
        dur[keep],
        class_id[keep],
        cpu_out[keep],
        tid_out[keep],
    )
    starts = start + np.cumsum(dur) - dur
    return Timeline(
        runtime=runtime,
        deployment=deployment,
        start_ns=starts,
        dur_ns=dur,
        class_id=class_id,
        cpu=cpu_out,
        tid=tid_out,
        total_ns=int(end - start) + overhead_ns,
    )
