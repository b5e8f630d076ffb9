"""Metrics of an op stream: footprint over time, waste, faults, calls and their cost.

Everything here is computed from the stream alone, page by page, so the
numbers describe exactly what the live replay would execute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from paracell.costs import CostTable
from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit

# Counter indices of stream_counters().
C_FAULTS = 0
C_FAULTS_2M = 1
C_BIND_CALLS = 2
C_PAGES_BOUND_BIND = 3
C_PAGES_BOUND_FAULT = 4
C_PAGES_BOUND_2M = 5
C_UNBIND_CALLS = 6
C_PAGES_UNBOUND_UNBIND = 7
C_PAGES_UNBOUND_2M = 8
C_INSTALLS = 9
C_RECLAIMS = 10
C_HYPERCALLS = 11
C_REPORTS = 12
C_INFLATES = 13
C_DEFLATES = 14
C_INFLATE_PAGES = 15
C_PEAK_BOUND = 16
C_PEAK_ALLOC = 17
C_UNBOUND_ALLOCATED = 18  # an allocated page unbound: a policy bug
C_TOUCH_ALLOCATED = 19  # a TOUCH of a page already allocated
C_FREE_UNALLOCATED = 20  # a FREE of a page not allocated
C_TIMELINE_N = 21
C_FINAL_BOUND = 22
C_FINAL_ALLOC = 23
C_BELOW_ALLOC = 24  # timeline points with fewer bound than allocated pages
NR_COUNTERS = 25

# Integral indices, in page x ns.
I_BOUND = 0
I_ALLOC = 1
I_WASTE = 2


@njit
def _set_bound(bound, alloc, p, counters, state):
    """Bind page ``p``; state is [bound, alloc, waste]; return 1 if it was unbound."""
    if bound[p] != 0:
        return 0
    bound[p] = 1
    state[0] += 1
    if alloc[p] == 0:
        state[2] += 1
    return 1


@njit
def _clear_bound(bound, alloc, p, counters, state):
    if bound[p] == 0:
        return 0
    if alloc[p] != 0:
        counters[C_UNBOUND_ALLOCATED] += 1
    bound[p] = 0
    state[0] -= 1
    if alloc[p] == 0:
        state[2] -= 1
    return 1


@njit
def stream_counters(
    ts,
    op,
    pfn,
    nr,
    arg,
    nr_pages,
    start_ts,
    end_ts,
    tl_ts,
    tl_bound,
    tl_alloc,
    counters,
    integrals,
    bound,
    alloc,
    state,
):
    """Walk the stream once, filling the counters, integrals and timeline arrays.

    ``bound`` and ``alloc`` are zeroed uint8 arrays of ``nr_pages``; ``state``
    holds the bound, allocated and waste page counts as the walk goes.
    """
    now = start_ts
    points = 0
    for i in range(ts.size):
        t = ts[i]
        if t > now:
            tl_ts[points] = now
            tl_bound[points] = state[0]
            tl_alloc[points] = state[1]
            points += 1
            if state[0] < state[1]:
                counters[C_BELOW_ALLOC] += 1
            span = float(t - now)
            integrals[I_BOUND] += state[0] * span
            integrals[I_ALLOC] += state[1] * span
            integrals[I_WASTE] += state[2] * span
            now = t
        code = op[i]
        first = pfn[i]
        count = nr[i]
        if code == opcodes.TOUCH or code == opcodes.BASE:
            for p in range(first, first + count):
                if alloc[p] != 0:
                    counters[C_TOUCH_ALLOCATED] += 1
                    continue
                alloc[p] = 1
                state[1] += 1
                if bound[p] != 0:
                    state[2] -= 1
                elif code == opcodes.TOUCH:
                    counters[C_FAULTS] += 1
                    counters[C_PAGES_BOUND_FAULT] += 1
                    bound[p] = 1
                    state[0] += 1
                else:
                    bound[p] = 1
                    state[0] += 1
        elif code == opcodes.FREE:
            for p in range(first, first + count):
                if alloc[p] == 0:
                    counters[C_FREE_UNALLOCATED] += 1
                    continue
                alloc[p] = 0
                state[1] -= 1
                if bound[p] != 0:
                    state[2] += 1
        elif code == opcodes.BIND:
            counters[C_BIND_CALLS] += 1
            for p in range(first, first + count):
                counters[C_PAGES_BOUND_BIND] += _set_bound(
                    bound, alloc, p, counters, state
                )
        elif code == opcodes.UNBIND:
            counters[C_UNBIND_CALLS] += 1
            for p in range(first, first + count):
                counters[C_PAGES_UNBOUND_UNBIND] += _clear_bound(
                    bound, alloc, p, counters, state
                )
        elif code == opcodes.FAULT_2M or code == opcodes.INSTALL_2M:
            if code == opcodes.FAULT_2M:
                counters[C_FAULTS_2M] += count // opcodes.HUGE_PAGES
            else:
                counters[C_INSTALLS] += count // opcodes.HUGE_PAGES
            for p in range(first, min(first + count, nr_pages)):
                counters[C_PAGES_BOUND_2M] += _set_bound(
                    bound, alloc, p, counters, state
                )
        elif code == opcodes.RECLAIM_2M:
            counters[C_RECLAIMS] += count // opcodes.HUGE_PAGES
            for p in range(first, min(first + count, nr_pages)):
                counters[C_PAGES_UNBOUND_2M] += _clear_bound(
                    bound, alloc, p, counters, state
                )
        elif code == opcodes.CALL:
            kind = arg[i]
            if kind == opcodes.CALL_HYPERCALL:
                counters[C_HYPERCALLS] += 1
            elif kind == opcodes.CALL_REPORT:
                counters[C_REPORTS] += 1
            elif kind == opcodes.CALL_INFLATE:
                counters[C_INFLATES] += 1
                counters[C_INFLATE_PAGES] += count
            else:
                counters[C_DEFLATES] += 1
        if state[0] > counters[C_PEAK_BOUND]:
            counters[C_PEAK_BOUND] = state[0]
        if state[1] > counters[C_PEAK_ALLOC]:
            counters[C_PEAK_ALLOC] = state[1]
    tl_ts[points] = now
    tl_bound[points] = state[0]
    tl_alloc[points] = state[1]
    points += 1
    if end_ts > now:
        span = float(end_ts - now)
        integrals[I_BOUND] += state[0] * span
        integrals[I_ALLOC] += state[1] * span
        integrals[I_WASTE] += state[2] * span
        tl_ts[points] = end_ts
        tl_bound[points] = state[0]
        tl_alloc[points] = state[1]
        points += 1
    counters[C_TIMELINE_N] = points
    counters[C_FINAL_BOUND] = state[0]
    counters[C_FINAL_ALLOC] = state[1]


@dataclass(frozen=True)
class Timeline:
    """Footprint over time: bound and allocated bytes after the steps at ``ts_ns[i]``.

    One point per distinct time, plus the trace end.
    """

    ts_ns: np.ndarray
    bound_bytes: np.ndarray
    allocated_bytes: np.ndarray


@dataclass(frozen=True)
class CostModel:
    """Time per counted event, in ns, from a cost table."""

    secondary_fault_ns: float
    thp_fault_ns: float
    populate_per_page_ns: float
    dontneed_per_page_ns: float
    hypercall_ns: float
    notify_ns: float
    install_ns: float
    reclaim_ns: float
    balloon_per_page_ns: float

    @classmethod
    def from_costs(cls, costs: CostTable) -> CostModel:
        return cls(
            secondary_fault_ns=costs.get("memory.first_touch_unbound")
            - costs.get("memory.first_touch_bound"),
            thp_fault_ns=costs.get("memory.thp_fault"),
            populate_per_page_ns=costs.get("memory.populate_write_per_page"),
            dontneed_per_page_ns=costs.get("memory.dontneed_per_page"),
            hypercall_ns=costs.get("memory.hypercall"),
            notify_ns=costs.get("memory.report_notify"),
            install_ns=costs.get("memory.hyperalloc.install"),
            reclaim_ns=costs.get("memory.hyperalloc.reclaim"),
            balloon_per_page_ns=costs.get("memory.balloon.per_page"),
        )


def compute_metrics(
    stream: opcodes.OpStream, start_ts_ns: int, end_ts_ns: int, costs: CostModel
) -> tuple[dict[str, Any], Timeline]:
    """Return the metrics of ``stream`` from ``start_ts_ns`` to ``end_ts_ns``.

    The second value is the footprint timeline.
    """
    capacity = len(stream) + 2
    tl_ts = np.zeros(capacity, dtype=np.int64)
    tl_bound = np.zeros(capacity, dtype=np.int64)
    tl_alloc = np.zeros(capacity, dtype=np.int64)
    counters = np.zeros(NR_COUNTERS, dtype=np.int64)
    integrals = np.zeros(3, dtype=np.float64)
    stream_counters(
        stream.ts_ns,
        stream.op,
        stream.pfn,
        stream.nr_pages,
        stream.arg,
        stream.nr_guest_pages,
        start_ts_ns,
        end_ts_ns,
        tl_ts,
        tl_bound,
        tl_alloc,
        counters,
        integrals,
        np.zeros(stream.nr_guest_pages, dtype=np.uint8),
        np.zeros(stream.nr_guest_pages, dtype=np.uint8),
        np.zeros(3, dtype=np.int64),
    )
    points = int(counters[C_TIMELINE_N])
    page = opcodes.PAGE_SIZE
    timeline = Timeline(
        ts_ns=tl_ts[:points].copy(),
        bound_bytes=tl_bound[:points] * page,
        allocated_bytes=tl_alloc[:points] * page,
    )
    span_ns = max(end_ts_ns - start_ts_ns, 0)
    if span_ns > 0:
        mean_bound = integrals[I_BOUND] / span_ns
        mean_alloc = integrals[I_ALLOC] / span_ns
    else:
        mean_bound = float(counters[C_FINAL_BOUND])
        mean_alloc = float(counters[C_FINAL_ALLOC])
    waste = integrals[I_WASTE] / integrals[I_BOUND] if integrals[I_BOUND] > 0 else 0.0
    c = counters
    breakdown = {
        "secondary_faults": c[C_FAULTS] * costs.secondary_fault_ns,
        "faults_2m": c[C_FAULTS_2M] * costs.thp_fault_ns,
        "binds": c[C_PAGES_BOUND_BIND] * costs.populate_per_page_ns,
        "unbinds": c[C_PAGES_UNBOUND_UNBIND] * costs.dontneed_per_page_ns,
        "hypercalls": c[C_HYPERCALLS] * costs.hypercall_ns,
        "notifications": (c[C_REPORTS] + c[C_INFLATES] + c[C_DEFLATES])
        * costs.notify_ns,
        "installs": c[C_INSTALLS] * costs.install_ns,
        "reclaims": c[C_RECLAIMS] * costs.reclaim_ns,
        "balloon": c[C_INFLATE_PAGES] * costs.balloon_per_page_ns,
    }
    metrics: dict[str, Any] = {
        "mean_footprint_bytes": mean_bound * page,
        "peak_footprint_bytes": int(c[C_PEAK_BOUND]) * page,
        "gib_seconds": integrals[I_BOUND] * page / 2**30 / 1e9,
        "mean_allocated_bytes": mean_alloc * page,
        "peak_allocated_bytes": int(c[C_PEAK_ALLOC]) * page,
        "waste_fraction": float(waste),
        "mean_waste_bytes": (integrals[I_WASTE] / span_ns * page) if span_ns else 0.0,
        "final_footprint_bytes": int(c[C_FINAL_BOUND]) * page,
        "secondary_faults": int(c[C_FAULTS]),
        "faults_2m": int(c[C_FAULTS_2M]),
        "hypercalls": int(
            c[C_HYPERCALLS]
            + c[C_REPORTS]
            + c[C_INFLATES]
            + c[C_DEFLATES]
            + c[C_INSTALLS]
        ),
        "bind_calls": int(c[C_BIND_CALLS]),
        "unbind_calls": int(c[C_UNBIND_CALLS]),
        "pager_calls": int(c[C_HYPERCALLS]),
        "reports": int(c[C_REPORTS]),
        "balloon_requests": int(c[C_INFLATES] + c[C_DEFLATES]),
        "installs_2m": int(c[C_INSTALLS]),
        "reclaims_2m": int(c[C_RECLAIMS]),
        "pages_bound": int(
            c[C_PAGES_BOUND_BIND] + c[C_PAGES_BOUND_FAULT] + c[C_PAGES_BOUND_2M]
        ),
        "pages_unbound": int(c[C_PAGES_UNBOUND_UNBIND] + c[C_PAGES_UNBOUND_2M]),
        "overhead_ns": float(sum(breakdown.values())),
        "overhead_by_class_ns": {k: float(v) for k, v in breakdown.items()},
        "unbound_allocated_pages": int(c[C_UNBOUND_ALLOCATED]),
        "stream_errors": int(c[C_TOUCH_ALLOCATED] + c[C_FREE_UNALLOCATED]),
        "footprint_below_allocated_points": int(c[C_BELOW_ALLOC]),
    }
    return metrics, timeline


def format_faults(metrics: dict[str, Any]) -> str:
    """Return a policy's secondary faults as text, 2 MiB frame faults apart.

    A 2 MiB policy faults whole frames, so "135 x2M" is clearer than the
    69,120 pages those frames contain.
    """
    huge = int(metrics.get("faults_2m", 0))
    small = int(metrics["secondary_faults"])
    if huge and not small:
        return f"{huge:,} x2M"
    return f"{small:,}" + (f"+{huge:,}x2M" if huge else "")
