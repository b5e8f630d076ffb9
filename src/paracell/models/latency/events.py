"""Sort the events of a trace into the latency model's classes, once per trace.

Classification does not depend on the runtime or the costs, so a trace is
classified once and every runtime x deployment (and every sensitivity
variation) only multiplies per-class sums by per-class path costs.

How overheads on several CPUs combine: an overhead stretches the work of
the CPU it arises on. When k CPUs run the traced tasks in parallel, the
scheduler spreads the work, so an overhead of d delays completion by about
d / k. Each event's overhead is therefore weighted by 1 / k, where k is the
number of CPUs running a traced task at the event's time, known from
``sched_switch``. Without ``sched_switch`` every weight is 1, which treats
the workload as serial and overstates the stretch of a parallel one. The
weight depends only on the time of an event, so overheads stay additive over
traces that follow each other in time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from paracell.models.latency import syscalls as sc
from paracell.models.latency.paths import SUBGROUPS
from paracell.trace.schema import KINDS
from paracell.trace.store import Trace

log = logging.getLogger("paracell.models.latency")

# Thread ids are below 2**22 (PID_MAX_LIMIT on 64-bit Linux), so a dense
# array maps a thread to its thread-group id in one indexing step.
_TID_LIMIT = 2**22 + 1

# Sub-group index of each extra system-call path, aligned with SUBGROUPS.
_PT = {name: i for i, name in enumerate(SUBGROUPS["pt_syscall"])}
_IO = {name: i for i, name in enumerate(SUBGROUPS["io"])}


@dataclass
class ClassEvents:
    """The events of one class: where and when they happened, and how much.

    ``sub`` indexes ``SUBGROUPS[class]`` (``None`` for single-group classes);
    ``amount`` is the multiplicity of each event (pages for page classes;
    ``None`` means 1); ``weight`` is the 1/k concurrency weight (``None``
    means 1).
    """

    ts_ns: np.ndarray
    cpu: np.ndarray
    tid: np.ndarray
    sub: np.ndarray | None = None
    amount: np.ndarray | None = None
    weight: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    def totals(self, nr_subgroups: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (count, weighted count) per sub-group."""
        amount = self.amount
        counts_w = amount if amount is not None else None
        if self.weight is None:
            weighted_w = amount
        elif amount is None:
            weighted_w = self.weight
        else:
            weighted_w = amount * self.weight
        if self.sub is None:
            count = float(amount.sum()) if amount is not None else float(len(self))
            weighted = (
                float(weighted_w.sum()) if weighted_w is not None else float(len(self))
            )
            return np.array([count]), np.array([weighted])
        count_arr = np.bincount(self.sub, weights=counts_w, minlength=nr_subgroups)
        weighted_arr = np.bincount(self.sub, weights=weighted_w, minlength=nr_subgroups)
        return count_arr.astype(float), weighted_arr.astype(float)


@dataclass
class TraceEvents:
    """A classified trace: native time, per-class events and their sums."""

    name: str
    start_ts_ns: int
    end_ts_ns: int
    nr_events: int
    classes: dict[str, ClassEvents]
    counts: dict[str, dict[str, float]] = field(default_factory=dict)
    weighted: dict[str, dict[str, float]] = field(default_factory=dict)
    concurrency: str = "serial"
    mean_busy_cpus: float = 1.0
    operations: int | None = None
    operation_unit: str | None = None

    @property
    def native_ns(self) -> int:
        return self.end_ts_ns - self.start_ts_ns

    def summarise(self) -> None:
        """Fill ``counts`` and ``weighted`` from the per-class events."""
        for cls, subs in SUBGROUPS.items():
            events = self.classes.get(cls)
            if events is None or len(events) == 0:
                zeros = dict.fromkeys(subs, 0.0)
                self.counts[cls], self.weighted[cls] = zeros, dict(zeros)
                continue
            count, weighted = events.totals(len(subs))
            self.counts[cls] = {s: float(count[i]) for i, s in enumerate(subs)}
            self.weighted[cls] = {s: float(weighted[i]) for i, s in enumerate(subs)}

    def scale_pages(self, event_class: str, nr_pages: int) -> None:
        """Replace the page count of a page class, keeping its mean weight.

        The memory model can supply a count for a modelled guest (its
        ``static`` policy's secondary faults, or the Pager's binds); the
        pages keep the trace's mean concurrency weight of allocations.
        """
        if nr_pages < 0:
            raise ValueError(f"page count must not be negative, not {nr_pages}")
        count = self.counts[event_class]["pages"]
        weighted = self.weighted[event_class]["pages"]
        mean_weight = weighted / count if count else self._mean_weight()
        self.counts[event_class]["pages"] = float(nr_pages)
        self.weighted[event_class]["pages"] = float(nr_pages) * mean_weight

    def _mean_weight(self) -> float:
        return 1.0 / max(1.0, self.mean_busy_cpus)


def first_touched_pages(trace: Trace) -> np.ndarray:
    """Return, per ``mm_page_alloc`` row, how many of its pages are touched first.

    A page's first touch is taken to happen at its allocation, so the first
    allocation covering a page frame (``pfn`` to ``pfn + 2**order - 1``)
    touches it first and later allocations of the same frame do not. The sum
    is the number of distinct page frames the traced tasks allocated.
    """
    pfn = trace.column("mm_page_alloc", "pfn")
    if pfn.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = trace.column("mm_page_alloc", "order")
    if not order.any():
        pages, owner = pfn, None
    else:
        nr_pages = np.left_shift(1, order.astype(np.int64))
        owner = np.repeat(np.arange(pfn.size), nr_pages)
        first_of_owner = np.cumsum(nr_pages) - nr_pages
        offset = np.arange(owner.size, dtype=np.uint64) - np.repeat(
            first_of_owner, nr_pages
        ).astype(np.uint64)
        pages = pfn[owner] + offset
    _, first_index = np.unique(pages, return_index=True)
    if owner is not None:
        first_index = owner[first_index]
    return np.bincount(first_index, minlength=pfn.size).astype(np.int64)


def count_first_touches(trace: Trace) -> int:
    """Return the number of distinct 4 KiB page frames the traced tasks allocated."""
    return int(first_touched_pages(trace).sum())


class _Concurrency:
    """Number of CPUs running a traced task, as a step function of time."""

    def __init__(self, ts_ns: np.ndarray, busy: np.ndarray, initial: int) -> None:
        self.ts_ns = ts_ns
        self.busy = busy
        self.initial = initial

    def weights(self, ts_ns: np.ndarray) -> np.ndarray:
        """Return 1 / max(1, busy CPUs) at each time."""
        index = np.searchsorted(self.ts_ns, ts_ns, side="right") - 1
        busy = np.where(index >= 0, self.busy[np.maximum(index, 0)], self.initial)
        return 1.0 / np.maximum(busy, 1)

    def mean(self, start_ns: int, end_ns: int) -> float:
        """Return the time-weighted mean number of busy CPUs over the trace."""
        if end_ns <= start_ns:
            return float(max(self.initial, 1))
        edges = np.clip(
            np.concatenate(([start_ns], self.ts_ns, [end_ns])), start_ns, end_ns
        )
        levels = np.concatenate(([self.initial], self.busy))
        return float(np.sum(np.diff(edges) * levels) / (end_ns - start_ns))


def _tgid_map(trace: Trace) -> np.ndarray:
    """Return an array that maps each traced thread id to its thread-group id, or -1."""
    tgid_of = np.full(_TID_LIMIT, -1, dtype=np.int32)
    for kind in ("mm_page_alloc", "page_fault_user", "syscalls"):
        if trace.has(kind):
            tgid_of[trace.column(kind, "tid")] = trace.column(kind, "pid")
    if trace.has("task_newtask"):
        tgid_of[trace.column("task_newtask", "child_tid")] = trace.column(
            "task_newtask", "child_pid"
        )
    tgid_of[0] = -1  # the idle task belongs to no traced process
    return tgid_of


def _first_per_cpu(cpu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows grouped by CPU, in time order, and a mask of each CPU's first."""
    order = np.argsort(cpu, kind="stable")
    grouped = cpu[order]
    first = np.ones(grouped.size, dtype=bool)
    first[1:] = grouped[1:] != grouped[:-1]
    return order, first


def _classify_sched(
    trace: Trace, tgid_of: np.ndarray
) -> tuple[ClassEvents, ClassEvents, _Concurrency | None]:
    table = trace.table("sched_switch")
    ts = table.column("ts_ns").to_numpy()
    cpu = table.column("cpu").to_numpy()
    prev_pid = table.column("prev_pid").to_numpy()
    next_pid = table.column("next_pid").to_numpy()
    if ts.size == 0:
        empty = ClassEvents(ts, cpu, next_pid)
        return empty, empty, None
    prev_tgid = tgid_of[prev_pid]
    next_tgid = tgid_of[next_pid]

    # Idle: a traced task hands its CPU to the idle task; the vCPU halts.
    idle_mask = (next_pid == 0) & (prev_tgid >= 0)
    idle = ClassEvents(ts[idle_mask], cpu[idle_mask], prev_pid[idle_mask])

    order, first = _first_per_cpu(cpu)

    # Address-space switch: a traced task of another process than the one
    # last run on this CPU. The idle task and untraced tasks keep the loaded
    # address space (lazy TLB, or outside the container), so they are skipped.
    switch_in = next_tgid[order] >= 0
    in_rows = order[switch_in]
    in_tgid = next_tgid[in_rows]
    in_cpu = cpu[in_rows]
    initial_tgid = np.full(int(cpu.max()) + 1, -2, dtype=np.int64)
    initial_tgid[cpu[order[first]]] = prev_tgid[order[first]]
    previous = np.empty(in_rows.size, dtype=np.int64)
    if in_rows.size:
        previous[1:] = in_tgid[:-1]
        new_cpu = np.ones(in_rows.size, dtype=bool)
        new_cpu[1:] = in_cpu[1:] != in_cpu[:-1]
        previous[new_cpu] = initial_tgid[in_cpu[new_cpu]]
        # A CPU whose loaded address space is unknown (-1, -2) counts as a switch.
        changed = (previous != in_tgid) | (previous < 0)
        rows = np.sort(in_rows[changed])
    else:
        rows = in_rows
    mm_switch = ClassEvents(ts[rows], cpu[rows], next_pid[rows])

    # Concurrency: a CPU is busy from a switch to a traced task until a
    # switch away from it; before its first switch it runs that switch's prev.
    state = (next_tgid >= 0).astype(np.int64)
    grouped_state = state[order]
    old_state = np.empty_like(grouped_state)
    old_state[1:] = grouped_state[:-1]
    old_state[first] = (prev_tgid[order[first]] >= 0).astype(np.int64)
    delta = np.empty_like(state)
    delta[order] = grouped_state - old_state
    initial = int((prev_tgid[order[first]] >= 0).sum())
    busy = initial + np.cumsum(delta)
    return idle, mm_switch, _Concurrency(ts, busy, initial)


def _classify_syscalls(
    trace: Trace, tgid_of: np.ndarray | None
) -> tuple[ClassEvents, ClassEvents, ClassEvents, ClassEvents]:
    table = trace.table("syscalls")
    ts = table.column("ts_ns").to_numpy()
    cpu = table.column("cpu").to_numpy()
    tid = table.column("tid").to_numpy()
    nr = table.column("nr").to_numpy()
    ret = table.column("ret").to_numpy()
    complete = table.column("complete").to_numpy(zero_copy_only=False)
    group = sc.SYSCALL_GROUP[nr]

    # Each call takes at most one extra path; ``extra`` holds its code:
    # 0 none, 1 + _PT index for page-table work, 1 + len(_PT) + _IO index for
    # I/O, and _TIMER_CODE for a timer programming.
    io_base = 1 + len(_PT)
    timer_code = io_base + len(_IO)
    extra = np.zeros(ts.size, dtype=np.int8)
    ok = ~sc.failed(ret)
    extra[(group == sc.FORK) & (ret > 0)] = 1 + _PT["fork"]
    clone_rows = np.flatnonzero((group == sc.CLONE) & (ret > 0))
    if clone_rows.size:
        copies = _clone_copies_mm(trace, clone_rows, ret, tid, tgid_of)
        extra[clone_rows[copies]] = 1 + _PT["fork"]
    extra[(group == sc.EXEC) & (ret == 0) & complete] = 1 + _PT["exec"]
    extra[group == sc.EXIT_GROUP] = 1 + _PT["exit_group"]
    extra[(group == sc.PT_UPDATE) & ok] = 1 + _PT["update"]
    extra[(group == sc.IO_OUTPUT) & (ret > 0)] = io_base + _IO["output"]
    extra[(group == sc.IO_SYNC) & (ret == 0) & complete] = io_base + _IO["output"]
    extra[(group == sc.IO_INPUT) & (ret > 0)] = io_base + _IO["input"]
    extra[group == sc.TIMER] = timer_code

    syscall = ClassEvents(ts, cpu, tid)
    pt_rows = np.flatnonzero((extra >= 1) & (extra < io_base))
    pt = ClassEvents(
        ts[pt_rows], cpu[pt_rows], tid[pt_rows], sub=extra[pt_rows].astype(np.int64) - 1
    )
    io_rows = np.flatnonzero((extra >= io_base) & (extra < timer_code))
    io = ClassEvents(
        ts[io_rows],
        cpu[io_rows],
        tid[io_rows],
        sub=extra[io_rows].astype(np.int64) - io_base,
    )
    timer_rows = np.flatnonzero(extra == timer_code)
    timer = ClassEvents(ts[timer_rows], cpu[timer_rows], tid[timer_rows])
    return syscall, pt, io, timer


def _clone_copies_mm(
    trace: Trace,
    rows: np.ndarray,
    ret: np.ndarray,
    tid: np.ndarray,
    tgid_of: np.ndarray | None,
) -> np.ndarray:
    """Return whether each clone call at ``rows`` gave its child a copied address space.

    ``task_newtask`` records the clone flags: without CLONE_VM the kernel
    copies the page tables. Without it, a child in the caller's thread group
    is a thread; any other child is taken to be a fork, although a
    CLONE_VM | CLONE_VFORK child (posix_spawn) copies nothing.
    """
    child = ret[rows].astype(np.int64)
    if trace.has("task_newtask") and trace.table("task_newtask").num_rows:
        child_tid = trace.column("task_newtask", "child_tid").astype(np.int64)
        flags = trace.column("task_newtask", "clone_flags")
        order = np.argsort(child_tid, kind="stable")
        where = np.searchsorted(child_tid[order], child)
        where = np.minimum(where, child_tid.size - 1)
        found = child_tid[order][where] == child
        shares_mm = (flags[order][where] & np.uint64(sc.CLONE_VM)) != 0
        known = found
        result = ~shares_mm
    else:
        known = np.zeros(rows.size, dtype=bool)
        result = np.ones(rows.size, dtype=bool)
    if tgid_of is not None:
        unknown = ~known & (child < _TID_LIMIT)
        same_group = tgid_of[np.clip(child, 0, _TID_LIMIT - 1)] == tgid_of[tid[rows]]
        result = np.where(unknown & same_group, False, result)
    return result


def classify(trace: Trace) -> TraceEvents:
    """Sort the events of ``trace`` into classes and sum them per sub-group."""
    manifest = trace.manifest
    has_sched = trace.has("sched_switch") and trace.table("sched_switch").num_rows > 0
    needs_map = has_sched or (
        trace.has("syscalls")
        and not trace.has("task_newtask")
        and trace.table("syscalls").num_rows > 0
    )
    tgid_of = _tgid_map(trace) if needs_map else None

    classes: dict[str, ClassEvents] = {}
    concurrency: _Concurrency | None = None
    if has_sched:
        assert tgid_of is not None
        classes["idle"], classes["mm_switch"], concurrency = _classify_sched(
            trace, tgid_of
        )
    if trace.has("syscalls"):
        (classes["syscall"], classes["pt_syscall"], classes["io"], classes["timer"]) = (
            _classify_syscalls(trace, tgid_of)
        )
    if trace.has("page_fault_user"):
        table = trace.table("page_fault_user")
        classes["fault"] = ClassEvents(
            table.column("ts_ns").to_numpy(),
            table.column("cpu").to_numpy(),
            table.column("tid").to_numpy(),
        )
    if trace.has("mm_page_alloc"):
        new_pages = first_touched_pages(trace)
        rows = np.flatnonzero(new_pages)
        table = trace.table("mm_page_alloc")
        pages = ClassEvents(
            table.column("ts_ns").to_numpy()[rows],
            table.column("cpu").to_numpy()[rows],
            table.column("tid").to_numpy()[rows],
            amount=new_pages[rows].astype(np.float64),
        )
        classes["first_touch"] = pages
        classes["pager_bind"] = pages

    if concurrency is not None:
        for class_events in classes.values():
            if class_events.weight is None:
                class_events.weight = concurrency.weights(class_events.ts_ns)

    nr_events = sum(trace.table(kind).num_rows for kind in KINDS if trace.has(kind))
    events = TraceEvents(
        name=manifest.workload.name,
        start_ts_ns=manifest.start_ts_ns,
        end_ts_ns=manifest.end_ts_ns,
        nr_events=nr_events,
        classes=classes,
        concurrency="sched_switch" if concurrency is not None else "serial",
        mean_busy_cpus=(
            concurrency.mean(manifest.start_ts_ns, manifest.end_ts_ns)
            if concurrency is not None
            else 1.0
        ),
        operations=manifest.workload.operations,
        operation_unit=manifest.workload.operation_unit,
    )
    events.summarise()
    if concurrency is None and trace.has("syscalls"):
        log.info(
            "%s: no sched_switch events, so overheads are summed as if the "
            "workload ran on one CPU",
            events.name,
        )
    return events
