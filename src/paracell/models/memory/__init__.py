"""Memory model: page-allocator events replayed through guest allocators and host policies.

>>> from paracell.costs import default_costs
>>> from paracell.models.memory import evaluate
>>> report = evaluate(trace, default_costs())            # doctest: +SKIP
>>> report.to_dict()["pager"]["mean_footprint_bytes"]     # doctest: +SKIP

Each policy runs on a placement (the guest allocator that decides which
guest page frames an allocation gets) and emits an op stream (``ops.py``);
every metric is computed from that stream. The numbers are modelled, not
measured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from paracell.costs import CostTable
from paracell.errors import ModelError
from paracell.models.memory.events import AllocatorEvents, select_free_events
from paracell.models.memory.metrics import CostModel, Timeline
from paracell.models.memory.ops import OpStream
from paracell.models.memory.policy import (
    ALL_POLICIES,
    PLACEMENTS,
    POLICIES,
    Policy,
    PolicyRun,
)
from paracell.models.memory.replay import ReplayConfig
from paracell.trace import Trace

log = logging.getLogger("paracell.memory")

ALL = ALL_POLICIES

# Keys of each policy's entry in MemoryReport.to_dict(), in print order.
SUMMARY_KEYS = (
    "placement",
    "mean_footprint_bytes",
    "peak_footprint_bytes",
    "gib_seconds",
    "waste_fraction",
    "secondary_faults",
    "hypercalls",
    "pages_bound",
    "pages_unbound",
    "overhead_ns",
)


@dataclass
class MemoryReport:
    """Results of every policy on one trace, and their pairwise savings."""

    trace_name: str
    duration_ns: int
    runs: dict[str, PolicyRun]
    events: AllocatorEvents

    def savings(self) -> dict[str, dict[str, float]]:
        """Return ``s[a][b]``: the fraction of b's mean footprint that a saves (negative: uses more)."""
        means = {p: float(r.metrics["mean_footprint_bytes"]) for p, r in self.runs.items()}
        table: dict[str, dict[str, float]] = {}
        for a, mean_a in means.items():
            table[a] = {}
            for b, mean_b in means.items():
                table[a][b] = 1.0 - mean_a / mean_b if mean_b > 0 else 0.0
        return table

    def to_dict(self) -> dict[str, Any]:
        """Return ``{policy: {metric: value}}`` plus ``"savings"`` and ``"trace"``."""
        out: dict[str, Any] = {}
        for name, run in self.runs.items():
            entry = {k: run.metrics[k] for k in SUMMARY_KEYS}
            entry.update({k: v for k, v in run.metrics.items() if k not in entry})
            out[name] = entry
        out["savings"] = self.savings()
        ev = self.events
        out["trace"] = {
            "name": self.trace_name,
            "duration_ns": self.duration_ns,
            "allocations": ev.nr_allocs,
            "frees": ev.nr_frees,
            "recorded_refills": ev.nr_refills,
            "free_batched_markers": ev.nr_free_batched,
            "unknown_free_pages": ev.nr_unknown_free_pages,
            "modelled": True,
        }
        return out


def evaluate(
    trace: Trace | AllocatorEvents,
    costs: CostTable,
    policies: Iterable[str] = ALL,
    placement: str | None = None,
    guest_ram_bytes: int | None = None,
    vcpus: int | None = None,
) -> MemoryReport:
    """Replay a trace's allocator events through each policy and compute its metrics.

    ``placement`` forces one guest allocator on every policy; by default each
    runs on its own (HyperAlloc on ``llfree``, the others on ``buddy``).
    Raises ModelError for an unknown policy or placement, a trace without
    allocator events, or a guest too small for the trace.
    """
    events = trace if isinstance(trace, AllocatorEvents) else AllocatorEvents.from_trace(trace)
    names = list(policies)
    for name in names:
        if name not in POLICIES:
            raise ModelError(
                f"unknown memory policy {name!r}; choose from {', '.join(ALL)}"
            )
    if placement is not None and placement not in PLACEMENTS:
        raise ModelError(
            f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}"
        )
    config = ReplayConfig.from_costs(costs, guest_ram_bytes=guest_ram_bytes, vcpus=vcpus)
    cost_model = CostModel.from_costs(costs)
    runs: dict[str, PolicyRun] = {}
    for name in names:
        run = POLICIES[name].run(events, config, placement)
        runs[name] = run.compute(cost_model)
        log.info(
            "%s on %s: %d operations, mean footprint %.1f MiB",
            name, run.placement, len(run.ops),
            float(run.metrics["mean_footprint_bytes"]) / 2**20,
        )
    return MemoryReport(
        trace_name=events.name,
        duration_ns=events.end_ts_ns - events.start_ts_ns,
        runs=runs,
        events=events,
    )


__all__ = [
    "ALL",
    "PLACEMENTS",
    "POLICIES",
    "AllocatorEvents",
    "CostModel",
    "MemoryReport",
    "OpStream",
    "Policy",
    "PolicyRun",
    "ReplayConfig",
    "Timeline",
    "evaluate",
    "select_free_events",
]
