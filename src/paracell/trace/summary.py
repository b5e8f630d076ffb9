"""Summary figures of one trace, as printed by ``paracell info``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from paracell.trace.store import Trace


@dataclass
class SyscallCount:
    nr: int
    name: str
    count: int
    total_duration_ns: int


@dataclass
class TraceSummary:
    """Duration, event counts, losses, system calls and allocator volume."""

    name: str
    kind: str
    source: str
    duration_ns: int
    event_counts: dict[str, int]
    lost_events: dict[str, int]
    operations: int | None
    syscalls: list[SyscallCount] = field(default_factory=list)
    # Pages (of the manifest's page size) allocated and freed by the tree;
    # a free is an mm_page_free event (mm_page_free_batched repeats it).
    pages_allocated: int = 0
    pages_freed: int = 0
    peak_allocated_bytes: int = 0
    end_allocated_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(trace: Trace) -> TraceSummary:
    """Read the trace's tables (validating them) and compute its summary."""
    from paracell.capture.syscall_table import syscall_name

    m = trace.manifest
    summary = TraceSummary(
        name=m.workload.name, kind=m.workload.kind, source=m.source,
        duration_ns=m.duration_ns, event_counts=dict(m.event_counts),
        lost_events=dict(m.lost_events), operations=m.workload.operations,
    )
    if trace.has("syscalls"):
        nr = trace.column("syscalls", "nr")
        duration = trace.column("syscalls", "duration_ns")
        if nr.size:
            uniq, inverse, counts = np.unique(nr, return_inverse=True, return_counts=True)
            totals = np.bincount(inverse, weights=duration, minlength=uniq.size)
            rank = np.lexsort((uniq, -counts))
            summary.syscalls = [
                SyscallCount(int(uniq[i]), syscall_name(int(uniq[i])), int(counts[i]),
                             int(totals[i]))
                for i in rank
            ]
    if trace.has("mm_page_alloc") and trace.has("mm_page_free"):
        a_ts = trace.column("mm_page_alloc", "ts_ns")
        a_pages = np.left_shift(1, trace.column("mm_page_alloc", "order").astype(np.int64))
        f_ts = trace.column("mm_page_free", "ts_ns")
        f_pages = np.left_shift(1, trace.column("mm_page_free", "order").astype(np.int64))
        summary.pages_allocated = int(a_pages.sum())
        summary.pages_freed = int(f_pages.sum())
        ts = np.concatenate([a_ts, f_ts])
        delta = np.concatenate([a_pages, -f_pages])
        order = np.argsort(ts, kind="stable")
        level = np.cumsum(delta[order])
        if level.size:
            summary.peak_allocated_bytes = int(max(level.max(), 0)) * m.page_size
            summary.end_allocated_bytes = int(level[-1]) * m.page_size
    return summary
