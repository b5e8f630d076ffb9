"""Hand-built traces for tests, examples and generated workloads.

Rows are added in any order and sorted by time (stably) when the trace is
built, so a test can state events in the order that reads best.
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from paracell import __version__
from paracell.trace.manifest import Manifest, Workload
from paracell.trace.schema import KINDS, arrow_schema
from paracell.trace.store import Trace, write_trace

# ___GFP_HIGHUSER_MOVABLE on Linux 6.x: the usual flags of an anonymous user page.
GFP_HIGHUSER_MOVABLE = 0x140CCA
MIGRATE_MOVABLE = 1


class TraceBuilder:
    """Collects events and writes them as a valid trace directory."""

    def __init__(
        self,
        name: str = "hand-built",
        kind: str = "agent",
        cpu_count: int = 2,
        memory_bytes: int = 4 << 30,
        start_ts_ns: int = 0,
        operations: int | None = None,
    ) -> None:
        self.workload = Workload(
            name=name,
            kind=kind,
            command=["(hand-built)"],
            operations=operations,
            operation_unit="operations" if operations else None,
        )
        self.cpu_count = cpu_count
        self.memory_bytes = memory_bytes
        self.start_ts_ns = start_ts_ns
        self.end_ts_ns = start_ts_ns
        self._rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._kinds: set[str] = set()

    def _add(self, kind: str, ts_ns: int, **fields: Any) -> TraceBuilder:
        self._kinds.add(kind)
        self._rows[kind].append({"ts_ns": ts_ns, **fields})
        self.end_ts_ns = max(self.end_ts_ns, ts_ns + int(fields.get("duration_ns", 0)))
        return self

    def with_kinds(self, *kinds: str) -> TraceBuilder:
        """Declare kinds as captured even if no event of them is added."""
        for kind in kinds:
            if kind not in KINDS:
                raise KeyError(kind)
            self._kinds.add(kind)
        return self

    def syscall(
        self,
        ts_ns: int,
        nr: int,
        duration_ns: int = 100,
        ret: int = 0,
        tid: int = 1,
        pid: int | None = None,
        cpu: int = 0,
        complete: bool = True,
    ) -> TraceBuilder:
        return self._add(
            "syscalls",
            ts_ns,
            cpu=cpu,
            pid=pid or tid,
            tid=tid,
            nr=nr,
            ret=ret,
            duration_ns=duration_ns,
            complete=complete,
        )

    def page_fault(
        self,
        ts_ns: int,
        address: int,
        error_code: int = 0x6,
        tid: int = 1,
        pid: int | None = None,
        cpu: int = 0,
        ip: int = 0x401000,
    ) -> TraceBuilder:
        return self._add(
            "page_fault_user",
            ts_ns,
            cpu=cpu,
            pid=pid or tid,
            tid=tid,
            address=address,
            ip=ip,
            error_code=error_code,
        )

    def switch(
        self,
        ts_ns: int,
        prev_pid: int,
        next_pid: int,
        cpu: int = 0,
        prev_state: int = 0,
        prev_comm: str = "task",
        next_comm: str = "task",
    ) -> TraceBuilder:
        return self._add(
            "sched_switch",
            ts_ns,
            cpu=cpu,
            prev_comm=prev_comm,
            prev_pid=prev_pid,
            prev_prio=120,
            prev_state=prev_state,
            next_comm=f"swapper/{cpu}" if next_pid == 0 else next_comm,
            next_pid=next_pid,
            next_prio=120,
        )

    def alloc(
        self,
        ts_ns: int,
        pfn: int,
        order: int = 0,
        cpu: int = 0,
        tid: int = 1,
        pid: int | None = None,
        gfp_flags: int = GFP_HIGHUSER_MOVABLE,
    ) -> TraceBuilder:
        return self._add(
            "mm_page_alloc",
            ts_ns,
            cpu=cpu,
            pid=pid or tid,
            tid=tid,
            pfn=pfn,
            order=order,
            gfp_flags=gfp_flags,
            migratetype=MIGRATE_MOVABLE,
        )

    def free(
        self,
        ts_ns: int,
        pfn: int,
        order: int = 0,
        cpu: int = 0,
        tid: int = 1,
        pid: int | None = None,
    ) -> TraceBuilder:
        return self._add(
            "mm_page_free",
            ts_ns,
            cpu=cpu,
            pid=pid or tid,
            tid=tid,
            pfn=pfn,
            order=order,
        )

    def refill(
        self,
        ts_ns: int,
        pfn: int,
        order: int = 0,
        cpu: int = 0,
        tid: int = 1,
        pid: int | None = None,
        percpu_refill: int = 1,
    ) -> TraceBuilder:
        return self._add(
            "mm_page_alloc_zone_locked",
            ts_ns,
            cpu=cpu,
            pid=pid or tid,
            tid=tid,
            pfn=pfn,
            order=order,
            migratetype=MIGRATE_MOVABLE,
            percpu_refill=percpu_refill,
        )

    def drain(
        self,
        ts_ns: int,
        pfn: int,
        order: int = 0,
        cpu: int = 0,
        tid: int = 1,
        pid: int | None = None,
    ) -> TraceBuilder:
        return self._add(
            "mm_page_pcpu_drain",
            ts_ns,
            cpu=cpu,
            pid=pid or tid,
            tid=tid,
            pfn=pfn,
            order=order,
            migratetype=MIGRATE_MOVABLE,
        )

    def tables(self) -> dict[str, pa.Table]:
        """Return one time-sorted Arrow table per declared kind."""
        out = {}
        for kind in self._kinds:
            rows = sorted(self._rows[kind], key=lambda r: r["ts_ns"])
            schema = arrow_schema(kind)
            out[kind] = (
                pa.Table.from_pylist(rows, schema=schema)
                if rows
                else schema.empty_table()
            )
        return out

    def manifest(self, end_ts_ns: int | None = None) -> Manifest:
        return Manifest(
            workload=self.workload,
            kernel_release="hand-built",
            cpu_count=self.cpu_count,
            page_size=4096,
            memory_bytes=self.memory_bytes,
            start_time=_dt.datetime(2026, 1, 1, tzinfo=_dt.UTC).isoformat(),
            start_ts_ns=self.start_ts_ns,
            end_ts_ns=max(self.end_ts_ns, end_ts_ns or 0),
            clock="mono",
            source="tracefs",
            event_kinds=[],
            event_counts={},
            lost_events={"total": 0},
            tool_version=__version__,
        )

    def write(
        self, path: Path | str, end_ts_ns: int | None = None, overwrite: bool = False
    ) -> Trace:
        """Write the trace directory atomically and return it loaded."""
        return write_trace(path, self.manifest(end_ts_ns), self.tables(), overwrite)
