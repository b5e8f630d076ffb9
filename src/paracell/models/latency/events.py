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
    """The events of one class, as rows of one source table.

    ``ts_ns``, ``cpu`` and ``tid`` are whole columns of the source table. When
    ``codes`` is set, the class holds the rows whose code lies in
    ``[first_code, first_code + nr_subgroups)`` and the code minus
    ``first_code`` indexes ``SUBGROUPS[class]``; otherwise it holds every row,
    all in sub-group 0. ``amount`` is each row's multiplicity (pages for the
    page classes; ``None`` means 1) and ``weight`` its 1/k concurrency weight
    (``None`` means 1). Several classes share the columns of the system-call
    table, so classifying copies nothing per class.
    """

    ts_ns: np.ndarray
    cpu: np.ndarray
    tid: np.ndarray
    nr_subgroups: int = 1
    codes: np.ndarray | None = None
    first_code: int = 0
    amount: np.ndarray | None = None
    weight: np.ndarray | None = None

    def rows(self) -> np.ndarray | None:
        """Return the indices of this class's rows, or ``None`` for every row."""
        if self.codes is None:
            return None
        last = self.first_code + self.nr_subgroups
        return np.flatnonzero((self.codes >= self.first_code) & (self.codes < last))

    def select(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (ts_ns, cpu, tid, sub-group, amount, weight) of the class's events."""
        rows = self.rows()

        def pick(column: np.ndarray) -> np.ndarray:
            return column if rows is None else column[rows]

        n = self.ts_ns.size if rows is None else rows.size
        sub = (
            pick(self.codes).astype(np.int64) - self.first_code
            if self.codes is not None
            else np.zeros(n, dtype=np.int64)
        )
        amount = pick(self.amount) if self.amount is not None else np.ones(n)
        weight = pick(self.weight) if self.weight is not None else np.ones(n)
        return pick(self.ts_ns), pick(self.cpu), pick(self.tid), sub, amount, weight


class _Sums:
    """Counts and weighted counts per sub-group, sharing work between classes.

    Classes cut from one code array reuse one ``bincount`` of it.
    """

    def __init__(self) -> None:
        self._by_codes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def of(self, events: ClassEvents) -> tuple[np.ndarray, np.ndarray]:
        """Return (count, weighted count) per sub-group of ``events``."""
        weights = _product(events.amount, events.weight)
        if events.codes is None:
            total = (
                float(events.amount.sum())
                if events.amount is not None
                else float(events.ts_ns.size)
            )
            total_weighted = float(weights.sum()) if weights is not None else total
            return np.array([total]), np.array([total_weighted])
        key = id(events.codes)
        if key not in self._by_codes:
            size = int(events.codes.max()) + 1 if events.codes.size else 1
            count_all = np.bincount(events.codes, weights=events.amount, minlength=size)
            weighted_all = np.bincount(events.codes, weights=weights, minlength=size)
            self._by_codes[key] = (count_all.astype(float), weighted_all.astype(float))
        count_all, weighted_all = self._by_codes[key]
        span = slice(events.first_code, events.first_code + events.nr_subgroups)
        count = np.zeros(events.nr_subgroups)
        weighted = np.zeros(events.nr_subgroups)
        available = count_all[span]
        count[: available.size] = available
        weighted[: available.size] = weighted_all[span]
        return count, weighted


def _product(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a * b


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
        sums = _Sums()
        for cls, subs in SUBGROUPS.items():
            events = self.classes.get(cls)
            if events is None or events.ts_ns.size == 0:
                zeros = dict.fromkeys(subs, 0.0)
                self.counts[cls], self.weighted[cls] = zeros, dict(zeros)
                continue
            count, weighted = sums.of(events)
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


class _Columns:
    """Numpy columns of a trace, each converted from Arrow once.

    Converting a many-chunk Arrow column copies it, so a classification
    that reads a column several times converts it only once.
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, kind: str, name: str) -> np.ndarray:
        key = (kind, name)
        if key not in self._cache:
            column = self.trace.table(kind).column(name)
            self._cache[key] = column.to_numpy(zero_copy_only=False)
        return self._cache[key]


def first_touched_pages(trace: Trace | _Columns) -> np.ndarray:
    """Return, per ``mm_page_alloc`` row, how many of its pages are touched first.

    A page's first touch is taken to happen at its allocation, so the first
    allocation covering a page frame (``pfn`` to ``pfn + 2**order - 1``)
    touches it first and later allocations of the same frame do not. The sum
    is the number of distinct page frames the traced tasks allocated.
    """
    column = trace if isinstance(trace, _Columns) else _Columns(trace)
    pfn = column("mm_page_alloc", "pfn")
    if pfn.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = column("mm_page_alloc", "order")
    owner: np.ndarray | None = None
    if order.any():
        nr_pages = np.left_shift(1, order.astype(np.int64))
        owner = np.repeat(np.arange(pfn.size), nr_pages)
        first_of_owner = np.cumsum(nr_pages) - nr_pages
        offset = np.arange(owner.size, dtype=np.int64) - np.repeat(
            first_of_owner, nr_pages
        )
        pages = pfn[owner] + offset.astype(np.uint64)
    else:
        pages = pfn
    first_index = _first_occurrences(pages)
    if owner is not None:
        first_index = owner[first_index]
    return np.bincount(first_index, minlength=pfn.size).astype(np.int64)


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    """Return the index of the first occurrence of each distinct value."""
    n = values.size
    low = values.min()
    span = int(values.max() - low) + 1
    if span > (2**62) // n:
        return np.unique(values, return_index=True)[1]
    # NOTE: packing (value, index) into one int64 lets a plain sort, which
    # numpy vectorises, stand in for the stable argsort of np.unique; it is
    # several times faster on a million allocations.
    key = (values - low).astype(np.int64) * n + np.arange(n, dtype=np.int64)
    key.sort()
    value_of = key // n
    first = np.ones(n, dtype=bool)
    first[1:] = value_of[1:] != value_of[:-1]
    return key[first] % n


def count_first_touches(trace: Trace) -> int:
    """Return the number of distinct 4 KiB page frames the traced tasks allocated."""
    return int(first_touched_pages(trace).sum())


class _Concurrency:
    """Number of CPUs running a traced task, as a step function of time.

    ``busy[j]`` holds from ``ts_ns[j]`` until the next step; ``initial``
    holds before the first.
    """

    def __init__(self, ts_ns: np.ndarray, busy: np.ndarray, initial: int) -> None:
        # Only steps that change the level matter; switches between two
        # traced tasks leave it as it was.
        levels = np.concatenate(([initial], busy))
        changes = np.flatnonzero(levels[1:] != levels[:-1])
        self.ts_ns = ts_ns[changes]
        self.busy = busy[changes]
        self.initial = initial
        self._weight = 1.0 / np.maximum(np.concatenate(([initial], self.busy)), 1)

    def weights(self, ts_ns: np.ndarray) -> np.ndarray:
        """Return 1 / max(1, busy CPUs) at each of the sorted times ``ts_ns``.

        An event at the time of a step already sees the new level.
        """
        # Cutting the sorted events at each step costs O(steps x log events)
        # plus one fill, far less than a search per event.
        cuts = np.searchsorted(ts_ns, self.ts_ns, side="left")
        counts = np.diff(cuts, prepend=0, append=ts_ns.size)
        return np.repeat(self._weight, counts)

    def mean(self, start_ns: int, end_ns: int) -> float:
        """Return the time-weighted mean number of busy CPUs over the trace."""
        if end_ns <= start_ns:
            return float(max(self.initial, 1))
        edges = np.concatenate(([start_ns], self.ts_ns, [end_ns]))
        edges = np.clip(edges, start_ns, end_ns)
        levels = np.concatenate(([self.initial], self.busy))
        return float(np.sum(np.diff(edges) * levels) / (end_ns - start_ns))


def _tgid_map(column: _Columns) -> np.ndarray:
    """Return an array that maps each traced thread id to its thread-group id, or -1."""
    trace = column.trace
    tgid_of = np.full(_TID_LIMIT, -1, dtype=np.int32)
    for kind in ("mm_page_alloc", "page_fault_user", "syscalls"):
        if trace.has(kind):
            tgid_of[column(kind, "tid")] = column(kind, "pid")
    if trace.has("task_newtask"):
        tgid_of[column("task_newtask", "child_tid")] = column(
            "task_newtask", "child_pid"
        )
    tgid_of[0] = -1  # the idle task belongs to no traced process
    return tgid_of


def _classify_sched(
    column: _Columns, tgid_of: np.ndarray
) -> tuple[ClassEvents, ClassEvents, _Concurrency | None]:
    ts = column("sched_switch", "ts_ns")
    cpu = column("sched_switch", "cpu")
    prev_pid = column("sched_switch", "prev_pid")
    next_pid = column("sched_switch", "next_pid")
    if ts.size == 0:
        empty = ClassEvents(ts, cpu, next_pid)
        return empty, empty, None
    prev_tgid = tgid_of[prev_pid]
    next_tgid = tgid_of[next_pid]

    # Idle: a traced task hands its CPU to the idle task; the vCPU halts.
    idle_rows = np.flatnonzero((next_pid == 0) & (prev_tgid >= 0))
    idle = ClassEvents(ts[idle_rows], cpu[idle_rows], prev_pid[idle_rows])

    # Rows grouped by CPU, in time order within each CPU; CPU numbers fit in
    # 16 bits, for which numpy's stable sort is a radix sort.
    order = np.argsort(cpu.astype(np.uint16), kind="stable")
    grouped_cpu = cpu[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = grouped_cpu[1:] != grouped_cpu[:-1]

    # Address-space switch: a traced task of another process than the one
    # last run on this CPU. The idle task and untraced tasks keep the loaded
    # address space (lazy TLB, or outside the container), so they are skipped.
    switch_in = next_tgid[order] >= 0
    in_rows = order[switch_in]
    in_tgid = next_tgid[in_rows]
    in_cpu = cpu[in_rows]
    initial_tgid = np.full(int(cpu.max()) + 1, -2, dtype=np.int64)
    initial_tgid[grouped_cpu[first]] = prev_tgid[order[first]]
    rows = in_rows
    if in_rows.size:
        previous = np.empty(in_rows.size, dtype=np.int64)
        previous[1:] = in_tgid[:-1]
        new_cpu = np.ones(in_rows.size, dtype=bool)
        new_cpu[1:] = in_cpu[1:] != in_cpu[:-1]
        previous[new_cpu] = initial_tgid[in_cpu[new_cpu]]
        # A CPU whose loaded address space is unknown (-1, -2) counts as a switch.
        changed = (previous != in_tgid) | (previous < 0)
        rows = np.sort(in_rows[changed])
    mm_switch = ClassEvents(ts[rows], cpu[rows], next_pid[rows])

    # Concurrency: a CPU is busy from a switch to a traced task until a
    # switch away from it; before its first switch it runs that switch's prev.
    state = (next_tgid >= 0).astype(np.int64)
    grouped_state = state[order]
    old_state = np.empty_like(grouped_state)
    old_state[1:] = grouped_state[:-1]
    initial_state = (prev_tgid[order[first]] >= 0).astype(np.int64)
    old_state[first] = initial_state
    delta = np.empty_like(state)
    delta[order] = grouped_state - old_state
    initial = int(initial_state.sum())
    busy = initial + np.cumsum(delta)
    return idle, mm_switch, _Concurrency(ts, busy, initial)


# Rules that decide whether a call of a group took its extra path, by group.
_ALWAYS, _RET_POSITIVE, _RET_ZERO, _NOT_FAILED = 0, 1, 2, 3
_RULE = np.zeros(16, dtype=np.int8)
_RULE[[sc.FORK, sc.CLONE, sc.IO_OUTPUT, sc.IO_INPUT]] = _RET_POSITIVE
_RULE[[sc.EXEC, sc.IO_SYNC]] = _RET_ZERO
_RULE[sc.PT_UPDATE] = _NOT_FAILED

# Code of each group's extra path. Codes 1.. are the page-table sub-groups,
# then the I/O sub-groups, then the timer, so each class is a code range.
_IO_BASE = 1 + len(_PT)
_TIMER_CODE = _IO_BASE + len(_IO)
_CODE = np.zeros(16, dtype=np.int8)
_CODE[[sc.FORK, sc.CLONE]] = 1 + _PT["fork"]
_CODE[sc.EXEC] = 1 + _PT["exec"]
_CODE[sc.EXIT_GROUP] = 1 + _PT["exit_group"]
_CODE[sc.PT_UPDATE] = 1 + _PT["update"]
_CODE[[sc.IO_OUTPUT, sc.IO_SYNC]] = _IO_BASE + _IO["output"]
_CODE[sc.IO_INPUT] = _IO_BASE + _IO["input"]
_CODE[sc.TIMER] = _TIMER_CODE


def _classify_syscalls(
    column: _Columns, tgid_of: np.ndarray | None
) -> tuple[ClassEvents, ClassEvents, ClassEvents, ClassEvents]:
    ts = column("syscalls", "ts_ns")
    cpu = column("syscalls", "cpu")
    tid = column("syscalls", "tid")
    nr = column("syscalls", "nr")
    group = sc.SYSCALL_GROUP[nr]

    # Each call takes at most one extra path. Only the calls of a group with
    # one are examined further.
    rows = np.flatnonzero(group)
    group = group[rows]
    ret = column("syscalls", "ret")[rows]
    complete = column("syscalls", "complete")[rows]
    rule = _RULE[group]
    took = (
        (rule == _ALWAYS)
        | ((rule == _RET_POSITIVE) & (ret > 0))
        | ((rule == _RET_ZERO) & (ret == 0) & complete)
        | ((rule == _NOT_FAILED) & ~sc.failed(ret))
    )
    clones = np.flatnonzero((group == sc.CLONE) & took)
    if clones.size:
        took[clones] = _clone_copies_mm(column, ret[clones], tid[rows[clones]], tgid_of)
    codes = np.zeros(ts.size, dtype=np.int8)
    codes[rows] = np.where(took, _CODE[group], 0)

    syscall = ClassEvents(ts, cpu, tid)
    pt = ClassEvents(ts, cpu, tid, len(_PT), codes, 1)
    io = ClassEvents(ts, cpu, tid, len(_IO), codes, _IO_BASE)
    timer = ClassEvents(ts, cpu, tid, 1, codes, _TIMER_CODE)
    return syscall, pt, io, timer


def _clone_copies_mm(
    column: _Columns,
    child_tid: np.ndarray,
    caller_tid: np.ndarray,
    tgid_of: np.ndarray | None,
) -> np.ndarray:
    """Return whether each clone gave its child (``child_tid``) a copied address space.

    ``task_newtask`` records the clone flags: without CLONE_VM the kernel
    copies the page tables. Without it, a child in the caller's thread group
    is a thread; any other child is taken to be a fork, although a
    CLONE_VM | CLONE_VFORK child (posix_spawn) copies nothing.
    """
    child = child_tid.astype(np.int64)
    known = np.zeros(child.size, dtype=bool)
    copies = np.ones(child.size, dtype=bool)
    trace = column.trace
    if trace.has("task_newtask") and trace.table("task_newtask").num_rows:
        new_tid = column("task_newtask", "child_tid").astype(np.int64)
        flags = column("task_newtask", "clone_flags")
        order = np.argsort(new_tid, kind="stable")
        where = np.minimum(np.searchsorted(new_tid[order], child), new_tid.size - 1)
        known = new_tid[order][where] == child
        shares_mm = (flags[order][where] & np.uint64(sc.CLONE_VM)) != 0
        copies = ~shares_mm
    if tgid_of is not None:
        in_range = child < _TID_LIMIT
        same_group = tgid_of[np.where(in_range, child, 0)] == tgid_of[caller_tid]
        copies = np.where(~known & in_range & same_group, False, copies)
    return copies


def classify(trace: Trace) -> TraceEvents:
    """Sort the events of ``trace`` into classes and sum them per sub-group."""
    manifest = trace.manifest
    has_sched = trace.has("sched_switch") and trace.table("sched_switch").num_rows > 0
    has_clone_flags = trace.has("task_newtask")
    column = _Columns(trace)
    tgid_of = _tgid_map(column) if has_sched or not has_clone_flags else None

    classes: dict[str, ClassEvents] = {}
    concurrency: _Concurrency | None = None
    if has_sched:
        assert tgid_of is not None
        classes["idle"], classes["mm_switch"], concurrency = _classify_sched(
            column, tgid_of
        )
    if trace.has("syscalls"):
        syscall_classes = _classify_syscalls(column, tgid_of)
        for name, class_events in zip(
            ("syscall", "pt_syscall", "io", "timer"), syscall_classes, strict=True
        ):
            classes[name] = class_events
    if trace.has("page_fault_user"):
        classes["fault"] = ClassEvents(
            column("page_fault_user", "ts_ns"),
            column("page_fault_user", "cpu"),
            column("page_fault_user", "tid"),
        )
    if trace.has("mm_page_alloc"):
        pages = ClassEvents(
            column("mm_page_alloc", "ts_ns"),
            column("mm_page_alloc", "cpu"),
            column("mm_page_alloc", "tid"),
            amount=first_touched_pages(column).astype(np.float64),
        )
        classes["first_touch"] = pages
        classes["pager_bind"] = pages

    if concurrency is not None:
        # Classes cut from one table share its time column and so its weights.
        weights: dict[int, np.ndarray] = {}
        for class_events in classes.values():
            key = id(class_events.ts_ns)
            if key not in weights:
                weights[key] = concurrency.weights(class_events.ts_ns)
            class_events.weight = weights[key]

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
