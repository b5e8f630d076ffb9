"""Warnings about what a trace lacks, printed beside every model result."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paracell.trace.store import Trace


def trace_caveats(trace: Trace) -> list[str]:
    """Return one sentence per gap in ``trace`` that makes model results incomplete."""
    from paracell.trace.schema import ALLOCATOR_KINDS

    manifest = trace.manifest
    notes = []
    lost = manifest.lost_total
    if lost:
        recorded = sum(manifest.event_counts.values())
        share = lost / (lost + recorded) if recorded else 1.0
        notes.append(
            f"{lost:,} events ({share:.1%}) were lost during capture, so counts "
            "and overheads are lower bounds; capture again with a larger "
            "--buffer-kb"
        )
    missing = []
    if not trace.has("page_fault_user"):
        missing.append("page faults")
    if not trace.has("sched_switch"):
        missing.append("scheduler switches")
    if not any(trace.has(kind) for kind in ALLOCATOR_KINDS):
        missing.append("page-allocator events")
    if missing:
        notes.append(
            f"the trace has no {', '.join(missing)} (source: {manifest.source}); "
            "their event classes cost nothing in the models"
        )
    return notes
