"""Record a command and its descendants through tracefs into a trace directory.

The steps: mount tracefs if needed, create our instances, fork the command
blocked, arm tracing on its pid, release it, copy the ring buffers to spool
files while it runs, stop tracing when it exits, remove the instances, then
decode the pages, pair system calls, keep the allocator events that belong to
the tree, and write the trace atomically.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import pyarrow as pa

from paracell import __version__
from paracell.capture import sysinfo
from paracell.capture.decode import Columns, DecodeResult, decode_spool
from paracell.capture.events import (
    MM_PAGE_ALLOC,
    MM_PAGE_ALLOC_ZONE_LOCKED,
    MM_PAGE_FREE,
    MM_PAGE_FREE_BATCHED,
    MM_PAGE_PCPU_DRAIN,
    PAGE_FAULT_USER,
    SCHED_SWITCH,
    SYS_ENTER,
    SYS_EXIT,
    SYSTEM,
    TASK_NEWTASK,
    TREE,
    tracepoints_for,
)
from paracell.capture.launcher import BlockedChild, exit_status
from paracell.capture.pairing import pair_syscalls
from paracell.capture.reader import RawReader
from paracell.capture.session import (
    arm_session,
    close_session,
    open_session,
    read_lost_events,
    stop_session,
)
from paracell.capture.tracefs import TraceFS, mount_tracefs
from paracell.capture.tree import (
    ALLOC,
    FREE,
    FREE_BATCHED,
    PCPU_DRAIN,
    ZONE_LOCKED,
    TaskTree,
    filter_allocator_events,
)
from paracell.errors import CaptureError
from paracell.trace.manifest import Manifest, Workload
from paracell.trace.schema import ALLOCATOR_KINDS, arrow_schema
from paracell.trace.store import Trace, write_trace

log = logging.getLogger("paracell.capture")

DEFAULT_BUFFER_KB = 16384
DEFAULT_BUFFER_PERCENT = 25
# pfn of a failed allocation (the kernel records -1UL).
_NO_PFN = np.uint64(2**64 - 1)


@dataclass
class CaptureOptions:
    command: list[str]
    output: Path
    kinds: list[str]
    name: str | None = None
    workload_kind: str = "agent"
    operations: int | None = None
    # File holding the operation count, read after the command exits.
    operations_from: Path | None = None
    operation_unit: str | None = None
    recreate: str | None = None
    buffer_kb: int = DEFAULT_BUFFER_KB
    buffer_percent: int = DEFAULT_BUFFER_PERCENT
    overwrite: bool = False


@dataclass
class CaptureResult:
    trace: Trace
    exit_status: int
    lost_total: int
    wall_ns: int
    decode_s: float
    records: int
    signals: list[int] = field(default_factory=list)


class _SignalForwarder:
    """Forward SIGINT and SIGTERM to the child while it runs; SIGKILL on the third."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.received: list[int] = []
        self._old: dict[int, object] = {}

    def __enter__(self) -> _SignalForwarder:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        target = signal.SIGKILL if len(self.received) >= 3 else signum
        log.warning("received signal %d; sending %d to the traced command (pid %d)",
                    signum, target, self.pid)
        try:
            os.kill(self.pid, target)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def capture(options: CaptureOptions,
            on_started: Callable[[int], None] | None = None) -> CaptureResult:
    """Run ``options.command`` under tracing and write the trace.

    Returns once the trace is written; the command's exit status is in the
    result. Raises :class:`CaptureError` when tracing cannot start; tracefs
    is left as it was found on every path.
    """
    if options.output.exists() and not options.overwrite:
        raise CaptureError(f"{options.output}: output already exists",
                           hint="choose another -o or remove it first")
    needed = list(options.kinds)
    if any(k in ALLOCATOR_KINDS for k in needed):
        # Deciding which frees belong to the tree needs every allocation and
        # free, whichever allocator kinds end up in the trace.
        needed += ["mm_page_alloc", "mm_page_free"]
    tracepoints = tracepoints_for(needed)
    mount = mount_tracefs()
    top = TraceFS(mount.root)
    try:
        with tempfile.TemporaryDirectory(prefix="paracell-spool-") as spool:
            return _capture_mounted(options, top, tracepoints, Path(spool), on_started)
    finally:
        mount.release()


def _capture_mounted(options: CaptureOptions, top: TraceFS, tracepoints: list,
                     spool: Path, on_started: Callable[[int], None] | None
                     ) -> CaptureResult:
    session = open_session(top, tracepoints, options.buffer_kb, options.buffer_percent)
    child = BlockedChild(list(options.command))
    reader: RawReader | None = None
    started = False
    try:
        reader = RawReader(session, spool)
        reader.open()
        # Fork before the reader thread exists: a forked child of a
        # threaded process may only call async-signal-safe functions.
        child.spawn()
        reader_tid = reader.start()
        arm_session(session, child.pid, [os.getpid(), threading.get_native_id(),
                                         reader_tid])
        with _SignalForwarder(child.pid) as forwarder:
            start_wall = _dt.datetime.now(_dt.UTC)
            start_ns = child.release()
            started = True
            if on_started is not None:
                on_started(child.pid)
            status, end_ns = child.wait()
        stop_session(session)
        reader.stop()
        lost = read_lost_events(session)
    finally:
        if reader is not None:
            reader.close()
        if not started:
            child.cancel()
        close_session(session)
    files = [(f.role, f.cpu, f.out_path) for f in reader.files]
    roles = {tp: tp.instance for tp in tracepoints}
    t0 = time.perf_counter()
    decoded = decode_spool(files, session.page_size, session.layout, session.formats, roles)
    tables, counters = build_tables(decoded, options.kinds, child.pid, start_ns, end_ns)
    decode_s = time.perf_counter() - t0
    lost_events = _lost_summary(lost, decoded)
    operations = options.operations
    if options.operations_from is not None:
        try:
            operations = read_operations(options.operations_from)
        except CaptureError as exc:
            # The events are still worth keeping; only the count is missing.
            log.warning("%s; writing the trace without an operation count", exc)
    manifest = Manifest(
        workload=Workload(
            name=options.name or os.path.basename(options.command[0]),
            kind=options.workload_kind,
            command=list(options.command),
            operations=operations,
            operation_unit=options.operation_unit or ("requests" if operations is not None
                                                      else None),
            recreate=options.recreate,
        ),
        kernel_release=sysinfo.kernel_release(),
        cpu_count=sysinfo.cpu_count(),
        page_size=sysinfo.page_size(),
        memory_bytes=sysinfo.memory_bytes(),
        start_time=start_wall.isoformat(timespec="seconds"),
        start_ts_ns=start_ns,
        end_ts_ns=end_ns,
        clock="mono",
        source="tracefs",
        event_kinds=[],
        event_counts={},
        lost_events=lost_events,
        tool_version=__version__,
        exit_status=exit_status(status),
        notes=counters,
    )
    trace = write_trace(options.output, manifest, tables, overwrite=options.overwrite)
    return CaptureResult(trace, exit_status(status), lost_events["total"],
                         end_ns - start_ns, decode_s, decoded.records,
                         forwarder.received)


def read_operations(path: Path) -> int:
    """Read a non-negative integer operation count from ``path``."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read the operation count: {exc.strerror}",
                           hint="the traced command should write it there") from None
    if not text.isdigit():
        raise CaptureError(f"{path}: operation count must be a non-negative integer, "
                           f"found {text[:40]!r}")
    return int(text)


def _lost_summary(lost: dict[str, dict[int, int]], decoded: DecodeResult) -> dict[str, int]:
    out: dict[str, int] = {}
    total = 0
    for role, per_cpu in lost.items():
        for cpu, n in per_cpu.items():
            # The page headers can report losses the stats missed (overwrite mode).
            n = max(n, decoded.missed_in_pages.get((role, cpu), 0))
            out[f"cpu{cpu}"] = out.get(f"cpu{cpu}", 0) + n
            out[f"{role}_buffer"] = out.get(f"{role}_buffer", 0) + n
            total += n
    out["total"] = total
    return dict(sorted(out.items()))


def build_tables(decoded: DecodeResult, kinds: list[str], root_pid: int, start_ns: int,
                 end_ns: int) -> tuple[dict[str, pa.Table], list[str]]:
    """Turn decoded tracepoint columns into the trace's tables."""
    cols = decoded.columns
    window = _window(start_ns, end_ns)
    newtask = window(cols[TASK_NEWTASK])
    tree = TaskTree.build(root_pid, newtask["ts_ns"], newtask["common_pid"],
                          newtask["pid"], newtask["clone_flags"])
    tables: dict[str, pa.Table] = {}
    notes = [f"tree tasks: {tree.nr_tasks}"]

    # task_newtask: tasks created by the tree.
    parent_tgid = tree.lookup(newtask["common_pid"], newtask["ts_ns"])
    mine = parent_tgid >= 0
    child_tgid = tree.lookup(newtask["pid"], newtask["ts_ns"])
    tables["task_newtask"] = _table("task_newtask", {
        "ts_ns": newtask["ts_ns"][mine], "cpu": newtask["cpu"][mine],
        "pid": parent_tgid[mine], "tid": newtask["common_pid"][mine],
        "child_tid": newtask["pid"][mine], "child_pid": child_tgid[mine],
        "clone_flags": newtask["clone_flags"][mine], "comm": newtask["comm"][mine],
    })

    if "syscalls" in kinds:
        rows = pair_syscalls(window(cols[SYS_ENTER]), window(cols[SYS_EXIT]))
        rows["pid"] = tree.tgid_of(rows["tid"], rows["ts_ns"])
        tables["syscalls"] = _table("syscalls", rows)
    if "page_fault_user" in kinds:
        c = window(cols[PAGE_FAULT_USER])
        tables["page_fault_user"] = _table("page_fault_user", {
            "ts_ns": c["ts_ns"], "cpu": c["cpu"],
            "pid": tree.tgid_of(c["common_pid"], c["ts_ns"]), "tid": c["common_pid"],
            "address": c["address"], "ip": c["ip"], "error_code": c["error_code"],
        })
    if "sched_switch" in kinds:
        c = window(cols[SCHED_SWITCH])
        tables["sched_switch"] = _table("sched_switch", {
            k: c[k] for k in ("ts_ns", "cpu", "prev_comm", "prev_pid", "prev_prio",
                              "prev_state", "next_comm", "next_pid", "next_prio")
        })
    chosen_kmem = [k for k in ALLOCATOR_KINDS if k in kinds]
    if chosen_kmem:
        kmem_tables, kmem_notes = _allocator_tables(cols, tree, window, chosen_kmem)
        tables.update(kmem_tables)
        notes += kmem_notes
    return tables, notes


_KMEM = (
    ("mm_page_alloc", MM_PAGE_ALLOC, ALLOC),
    ("mm_page_free", MM_PAGE_FREE, FREE),
    ("mm_page_free_batched", MM_PAGE_FREE_BATCHED, FREE_BATCHED),
    ("mm_page_alloc_zone_locked", MM_PAGE_ALLOC_ZONE_LOCKED, ZONE_LOCKED),
    ("mm_page_pcpu_drain", MM_PAGE_PCPU_DRAIN, PCPU_DRAIN),
)


def _allocator_tables(cols: dict, tree: TaskTree, window: Callable[[Columns], Columns],
                      chosen: list[str]) -> tuple[dict[str, pa.Table], list[str]]:
    parts = []
    for kind, tp, code in _KMEM:
        if tp not in cols:
            continue
        c = window(cols[tp])
        if kind == "mm_page_alloc":
            ok = c["pfn"] != _NO_PFN  # failed allocations
            c = {k: v[ok] for k, v in c.items()}
        n = c["ts_ns"].size
        order = c["order"] if "order" in c else np.zeros(n, np.uint32)
        parts.append((kind, c, np.full(n, code, np.int8), order))
    ts = np.concatenate([p[1]["ts_ns"] for p in parts])
    code = np.concatenate([p[2] for p in parts])
    seq = np.concatenate([p[1]["seq"] for p in parts])
    cpu = np.concatenate([p[1]["cpu"] for p in parts])
    pfn = np.concatenate([p[1]["pfn"].astype(np.int64) for p in parts])
    order = np.concatenate([p[3].astype(np.int64) for p in parts])
    tid = np.concatenate([p[1]["common_pid"].astype(np.int64) for p in parts])
    # Same-CPU events keep their buffer order; across CPUs time decides.
    perm = np.lexsort((seq, cpu, ts))
    in_tree = np.empty(ts.size, bool)
    in_tree[perm] = tree.lookup(tid[perm], ts[perm]) >= 0
    keep_sorted = filter_allocator_events(code[perm], pfn[perm], order[perm], in_tree[perm])
    keep = np.empty(ts.size, bool)
    keep[perm] = keep_sorted
    tables = {}
    notes = []
    start = 0
    for kind, c, _code, _order in parts:
        n = c["ts_ns"].size
        k = keep[start:start + n]
        start += n
        notes.append(f"{kind}: kept {int(k.sum())} of {n} system-wide events")
        if kind not in chosen:
            continue
        sel = {name: v[k] for name, v in c.items()}
        row = {"ts_ns": sel["ts_ns"], "cpu": sel["cpu"],
               "pid": tree.tgid_of(sel["common_pid"], sel["ts_ns"]),
               "tid": sel["common_pid"], "pfn": sel["pfn"]}
        for name in ("order", "gfp_flags", "migratetype", "percpu_refill"):
            if name in sel:
                row[name] = sel[name]
        tables[kind] = _table(kind, row)
    return tables, notes


def _window(start_ns: int, end_ns: int) -> Callable[[Columns], Columns]:
    def cut(c: Columns) -> Columns:
        ok = (c["ts_ns"] >= start_ns) & (c["ts_ns"] <= end_ns)
        return {k: v[ok] for k, v in c.items()}
    return cut


def _table(kind: str, columns: dict[str, np.ndarray]) -> pa.Table:
    schema = arrow_schema(kind)
    arrays = []
    for f in schema:
        values = columns[f.name]
        if pa.types.is_string(f.type):
            arrays.append(pa.array(list(values), type=f.type))
        else:
            arrays.append(pa.array(np.asarray(values).astype(f.type.to_pandas_dtype()),
                                   type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
