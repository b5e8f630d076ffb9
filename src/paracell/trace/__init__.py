"""Trace format: ``manifest.json`` and one Parquet file per event kind."""

from paracell.trace.manifest import Manifest, Workload
from paracell.trace.schema import ALLOCATOR_KINDS, EVENT_GROUPS, KINDS
from paracell.trace.shipped import shipped_trace_paths
from paracell.trace.store import Trace, load_trace, read_table, write_trace

__all__ = [
    "ALLOCATOR_KINDS",
    "EVENT_GROUPS",
    "KINDS",
    "Manifest",
    "Trace",
    "Workload",
    "load_trace",
    "read_table",
    "shipped_trace_paths",
    "write_trace",
]
