"""Trace format: ``manifest.json`` and one Parquet file per event kind.

The names below load on first use, so importing a light submodule (for
example the manifest's constants) does not pull in pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from paracell.trace.manifest import Manifest, Workload
    from paracell.trace.schema import ALLOCATOR_KINDS, EVENT_GROUPS, KINDS
    from paracell.trace.shipped import shipped_trace_paths
    from paracell.trace.store import Trace, load_trace, read_table, write_trace

_EXPORTS = {
    "ALLOCATOR_KINDS": "schema",
    "EVENT_GROUPS": "schema",
    "KINDS": "schema",
    "Manifest": "manifest",
    "Trace": "store",
    "Workload": "manifest",
    "load_trace": "store",
    "read_table": "store",
    "shipped_trace_paths": "shipped",
    "write_trace": "store",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'paracell.trace' has no attribute {name!r}")
    return getattr(importlib.import_module(f"paracell.trace.{module}"), name)
