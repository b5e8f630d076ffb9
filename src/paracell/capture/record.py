"""Record a command and its descendants through tracefs into a trace directory.

Before anything runs, the output location is checked. While the command
runs, tracefs is mounted for this capture and our instances are created.
The command is forked and stopped in a small trampoline, and its global pid
is learned from the kernel. Tracing is armed on that pid, the trampoline is
continued to execve the command, and the ring buffers are copied to spool
files until it exits. Then tracing stops and the instances are removed.
Afterwards the pages are decoded, system calls are paired, the allocator
events of the tree are selected, and the trace is written atomically.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    TASK_NEWTASK,
    Tracepoint,
    tracepoints_for,
)
from paracell.capture.launcher import StoppedChild, exit_status
from paracell.capture.owner import (
    CaptureLock,
    instance_name,
    remove_stale_captures,
    spool_prefix,
)
from paracell.capture.pairing import pair_syscalls
from paracell.capture.pidns import PidProbe, in_init_pid_ns
from paracell.capture.reader import RawReader
from paracell.capture.session import (
    Session,
    arm_session,
    close_session,
    open_session,
    read_lost_events,
    stop_session,
    subbuffer_size,
)
from paracell.capture.tracefs import (
    DEFAULT_BUFFER_KB,
    DEFAULT_BUFFER_PERCENT,
    TraceFS,
    check_tracing_access,
    mount_tracefs,
)
from paracell.capture.tree import (
    ALLOC,
    FREE,
    FREE_BATCHED,
    PCPU_DRAIN,
    ZONE_LOCKED,
    TaskTree,
    filter_allocator_events,
)
from paracell.errors import CaptureError, Interrupted
from paracell.trace.manifest import Manifest, Workload
from paracell.trace.schema import ALLOCATOR_KINDS, MAX_SYSCALL_NR, arrow_schema
from paracell.trace.store import Trace, check_output, write_trace

log = logging.getLogger("paracell.capture")

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
    # Keep the raw ring-buffer pages here instead of a temporary directory
    # (for benchmarks and debugging of the decoder).
    spool_dir: Path | None = None


@dataclass
class CaptureResult:
    trace: Trace
    exit_status: int
    lost_total: int
    wall_ns: int
    decode_s: float
    records: int
    # Global pid of the traced command (the root of the process tree), as
    # the trace's pid columns hold it.
    root_pid: int = 0
    signals: list[int] = field(default_factory=list)

    @property
    def nr_events(self) -> int:
        """Events of every kind in the written trace."""
        return sum(self.trace.manifest.event_counts.values())


class _Signals:
    """SIGINT and SIGTERM handling for the whole capture.

    While the command runs, each signal is forwarded to it (SIGKILL on the
    third) and the capture goes on until the command exits, so the trace is
    still written. Outside that window, both raise KeyboardInterrupt so the
    cleanup in ``finally`` blocks runs, SIGTERM included.
    """

    def __init__(self) -> None:
        self.child_pid: int | None = None
        self.received: list[int] = []
        self._old: dict[int, object] = {}
        self._deferring = False
        # Signal held back while cleanup ran (0: none).
        self._pending = 0

    def __enter__(self) -> _Signals:
        # Handlers can only be installed from the main thread.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.child_pid is None:
            if self._deferring:
                self._pending = signum
                return
            raise Interrupted(signum)
        target = signal.SIGKILL if len(self.received) >= 3 else signum
        log.warning(
            "received signal %d; sending %d to the traced command (pid %d)",
            signum,
            target,
            self.child_pid,
        )
        try:
            os.kill(self.child_pid, target)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold back the interrupt during cleanup; raise it once cleanup is done."""
        outer = self._deferring
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = outer
        if self._pending and not outer:
            signum, self._pending = self._pending, 0
            raise Interrupted(signum)


@dataclass
class _Recording:
    """What the traced run left behind: spool files, layouts, times and losses."""

    files: list[tuple[str, int, Path]]
    session: Session
    # Global pid of the command.
    root_pid: int
    wait_status: int
    start_ns: int
    end_ns: int
    start_wall: _dt.datetime
    lost: dict[str, dict[int, int]]


def capture(
    options: CaptureOptions, on_started: Callable[[int], None] | None = None
) -> CaptureResult:
    """Run ``options.command`` under tracing and write the trace.

    Returns once the trace is written; the command's exit status is in the
    result. Raises :class:`CaptureError` when tracing cannot start and
    :class:`TraceFormatError` when the output cannot be written there; both
    before the command runs. tracefs is left as it was found on every path,
    including SIGINT and SIGTERM.
    """
    check_output(options.output, options.overwrite)
    needed = list(options.kinds)
    if any(k in ALLOCATOR_KINDS for k in needed):
        # Deciding which frees belong to the tree needs every allocation and
        # free, whichever allocator kinds end up in the trace.
        needed += ["mm_page_alloc", "mm_page_free"]
    tracepoints = tracepoints_for(needed)
    with _Signals() as signals:
        check_tracing_access()
        lock = CaptureLock.acquire()
        try:
            mount = mount_tracefs(lock.mount_point)
            try:
                top = TraceFS(mount.root)
                remove_stale_captures(top, lock, Path(tempfile.gettempdir()))
                return _capture_with_spool(
                    options, top, tracepoints, lock.token, signals, on_started
                )
            finally:
                with signals.deferred():
                    mount.release()
        finally:
            with signals.deferred():
                lock.release()


def _capture_with_spool(
    options: CaptureOptions,
    top: TraceFS,
    tracepoints: list[Tracepoint],
    token: str,
    signals: _Signals,
    on_started: Callable[[int], None] | None,
) -> CaptureResult:
    if options.spool_dir is not None:
        try:
            options.spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaptureError(
                f"cannot create spool directory {options.spool_dir}: {exc.strerror}"
            ) from None
        recording = _record(
            options, top, tracepoints, options.spool_dir, token, signals, on_started
        )
        return _write(options, recording, tracepoints, signals)
    # The token in the name lets a later capture remove the directory when
    # this one is killed with SIGKILL.
    with tempfile.TemporaryDirectory(prefix=spool_prefix(token)) as spool:
        recording = _record(
            options, top, tracepoints, Path(spool), token, signals, on_started
        )
        return _write(options, recording, tracepoints, signals)


def _record(
    options: CaptureOptions,
    top: TraceFS,
    tracepoints: list[Tracepoint],
    spool: Path,
    token: str,
    signals: _Signals,
    on_started: Callable[[int], None] | None,
) -> _Recording:
    """Run the command under tracing; tracefs is restored when this returns."""
    session = open_session(
        top, tracepoints, options.buffer_kb, options.buffer_percent, token
    )
    probe = PidProbe(
        top,
        instance_name(token, "probe"),
        session.layout,
        0,
        session.cpus,
        token,
    )
    child = StoppedChild(list(options.command))
    reader = RawReader(session, spool)
    started = False
    try:
        reader.open()
        probe.open()
        probe.page_size = subbuffer_size(top.instance(probe.name))
        # Fork before the reader thread exists: a forked child of a
        # threaded process may only call async-signal-safe functions.
        child.spawn(probe.marker_fd, probe.marker("child"))
        reader.start(on_thread_start=lambda: probe.mark("reader"))
        probe.mark("capture")
        # Decoding runs numba code, where an interrupt raised from a signal
        # handler would be lost in a callback; it is raised afterwards.
        with signals.deferred():
            global_ids = probe.collect(["child", "capture", "reader"])
        probe.close()
        root_pid = global_ids["child"]
        arm_session(session, root_pid, [global_ids["capture"], global_ids["reader"]])

        start_wall = _dt.datetime.now(_dt.UTC)
        signals.child_pid = child.pid
        start_ns = child.release()
        started = True
        if on_started is not None:
            on_started(child.pid)
        status, end_ns = child.wait()
        signals.child_pid = None

        stop_session(session)
        reader.stop()
        lost = read_lost_events(session)
    finally:
        signals.child_pid = None
        with signals.deferred():
            reader.close()
            probe.close()
            if not started:
                child.cancel()
            close_session(session)
    files = [(f.role, f.cpu, f.out_path) for f in reader.files]
    return _Recording(
        files, session, root_pid, status, start_ns, end_ns, start_wall, lost
    )


def _write(
    options: CaptureOptions,
    rec: _Recording,
    tracepoints: list[Tracepoint],
    signals: _Signals,
) -> CaptureResult:
    """Decode the spooled pages, build the tables and write the trace."""
    session = rec.session
    roles = {tp: tp.instance for tp in tracepoints}
    t0 = time.perf_counter()
    # numba code runs here; an interrupt is raised once it is done.
    with signals.deferred():
        decoded = decode_spool(
            rec.files, session.page_size, session.layout, session.formats, roles
        )
        tables, notes = build_tables(
            decoded,
            options.kinds,
            rec.root_pid,
            rec.start_ns,
            rec.end_ns,
            in_init_pid_ns(),
        )
    decode_s = time.perf_counter() - t0

    operations = options.operations
    if options.operations_from is not None:
        try:
            operations = read_operations(options.operations_from)
        except CaptureError as exc:
            # The events are still worth keeping; only the count is missing.
            log.warning("%s; writing the trace without an operation count", exc)
    lost_events = _lost_summary(rec.lost, decoded)
    status = exit_status(rec.wait_status)
    manifest = Manifest(
        workload=Workload(
            name=options.name or os.path.basename(options.command[0]),
            kind=options.workload_kind,
            command=list(options.command),
            operations=operations,
            operation_unit=options.operation_unit
            or ("requests" if operations is not None else None),
            recreate=options.recreate,
        ),
        kernel_release=sysinfo.kernel_release(),
        cpu_count=sysinfo.cpu_count(),
        page_size=sysinfo.page_size(),
        memory_bytes=sysinfo.memory_bytes(),
        start_time=rec.start_wall.isoformat(timespec="seconds"),
        start_ts_ns=rec.start_ns,
        end_ts_ns=rec.end_ns,
        clock="mono",
        source="tracefs",
        event_kinds=[],
        event_counts={},
        lost_events=lost_events,
        tool_version=__version__,
        exit_status=status,
        notes=notes,
    )
    trace = write_trace(options.output, manifest, tables, overwrite=options.overwrite)
    return CaptureResult(
        trace=trace,
        exit_status=status,
        lost_total=lost_events["total"],
        wall_ns=rec.end_ns - rec.start_ns,
        decode_s=decode_s,
        records=decoded.records,
        root_pid=rec.root_pid,
        signals=list(signals.received),
    )


def read_operations(path: Path) -> int:
    """Read a non-negative integer operation count from ``path``."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise CaptureError(
            f"{path}: cannot read the operation count: {exc.strerror}",
            hint="the traced command should write it there",
        ) from None
    if not text.isdigit():
        raise CaptureError(
            f"{path}: operation count must be a non-negative integer, "
            f"found {text[:40]!r}"
        )
    return int(text)


def _lost_summary(
    lost: dict[str, dict[int, int]], decoded: DecodeResult
) -> dict[str, int]:
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


def build_tables(
    decoded: DecodeResult,
    kinds: list[str],
    root_pid: int,
    start_ns: int,
    end_ns: int,
    proc_has_global_pids: bool = True,
) -> tuple[dict[str, pa.Table], list[str]]:
    """Turn decoded tracepoint columns into the trace's tables.

    ``root_pid`` is the command's global pid. ``proc_has_global_pids`` is
    true when /proc may be asked for the tgid of tasks older than the capture.
    """
    cols = decoded.columns
    window = _window(start_ns, end_ns)
    newtask = window(cols[TASK_NEWTASK])
    tree = TaskTree.build(
        root_pid,
        newtask["ts_ns"],
        newtask["common_pid"],
        newtask["pid"],
        newtask["clone_flags"],
        resolve_from_proc=proc_has_global_pids,
    )
    tables: dict[str, pa.Table] = {}
    notes = [f"tree tasks: {tree.nr_tasks}"]
    if not proc_has_global_pids:
        notes.append(
            "/proc showed another pid namespace, so the pid column of tasks "
            "older than the capture (outside the traced tree) is their tid"
        )

    # task_newtask: tasks created by the tree.
    parent_tgid = tree.lookup(newtask["common_pid"], newtask["ts_ns"])
    mine = parent_tgid >= 0
    child_tgid = tree.lookup(newtask["pid"], newtask["ts_ns"])
    tables["task_newtask"] = _table(
        "task_newtask",
        {
            "ts_ns": newtask["ts_ns"][mine],
            "cpu": newtask["cpu"][mine],
            "pid": parent_tgid[mine],
            "tid": newtask["common_pid"][mine],
            "child_tid": newtask["pid"][mine],
            "child_pid": child_tgid[mine],
            "clone_flags": newtask["clone_flags"][mine],
            "comm": newtask["comm"][mine],
        },
    )

    if "syscalls" in kinds:
        rows = pair_syscalls(window(cols[SYS_ENTER]), window(cols[SYS_EXIT]))
        # sys_enter reports -1 for a call cancelled by seccomp or ptrace, and
        # x32 or ia32 numbers for such programs; the table holds x86-64 calls.
        native = (rows["nr"] >= 0) & (rows["nr"] <= MAX_SYSCALL_NR)
        if not native.all():
            dropped = int((~native).sum())
            notes.append(
                f"syscalls: dropped {dropped} with numbers outside 0-"
                f"{MAX_SYSCALL_NR} (x32, ia32 or cancelled calls)"
            )
            log.warning("dropped %d system calls with non-x86-64 numbers", dropped)
            rows = {k: v[native] for k, v in rows.items()}
        rows["pid"] = tree.tgid_of(rows["tid"], rows["ts_ns"])
        tables["syscalls"] = _table("syscalls", rows)
    if "page_fault_user" in kinds:
        c = window(cols[PAGE_FAULT_USER])
        tables["page_fault_user"] = _table(
            "page_fault_user",
            {
                "ts_ns": c["ts_ns"],
                "cpu": c["cpu"],
                "pid": tree.tgid_of(c["common_pid"], c["ts_ns"]),
                "tid": c["common_pid"],
                "address": c["address"],
                "ip": c["ip"],
                "error_code": c["error_code"],
            },
        )
    if "sched_switch" in kinds:
        c = window(cols[SCHED_SWITCH])
        tables["sched_switch"] = _table(
            "sched_switch",
            {
                k: c[k]
                for k in (
                    "ts_ns",
                    "cpu",
                    "prev_comm",
                    "prev_pid",
                    "prev_prio",
                    "prev_state",
                    "next_comm",
                    "next_pid",
                    "next_prio",
                )
            },
        )
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


def _allocator_tables(
    cols: dict, tree: TaskTree, window: Callable[[Columns], Columns], chosen: list[str]
) -> tuple[dict[str, pa.Table], list[str]]:
    parts = []
    for kind, tp, kind_code in _KMEM:
        if tp not in cols:
            continue
        c = window(cols[tp])
        if kind == "mm_page_alloc":
            ok = c["pfn"] != _NO_PFN  # failed allocations
            c = {k: v[ok] for k, v in c.items()}
        n = c["ts_ns"].size
        order = c["order"] if "order" in c else np.zeros(n, np.uint32)
        parts.append((kind, c, np.full(n, kind_code, np.int8), order))
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
    keep_sorted = filter_allocator_events(
        code[perm], pfn[perm], order[perm], in_tree[perm]
    )
    keep = np.empty(ts.size, bool)
    keep[perm] = keep_sorted
    tables = {}
    notes = []
    start = 0
    for kind, c, _code, _order in parts:
        n = c["ts_ns"].size
        k = keep[start : start + n]
        start += n
        notes.append(f"{kind}: kept {int(k.sum())} of {n} system-wide events")
        if kind not in chosen:
            continue
        sel = {name: v[k] for name, v in c.items()}
        row = {
            "ts_ns": sel["ts_ns"],
            "cpu": sel["cpu"],
            "pid": tree.tgid_of(sel["common_pid"], sel["ts_ns"]),
            "tid": sel["common_pid"],
            "pfn": sel["pfn"],
        }
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
            arrays.append(
                pa.array(
                    np.asarray(values).astype(f.type.to_pandas_dtype()), type=f.type
                )
            )
    return pa.Table.from_arrays(arrays, schema=schema)
