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

The large tables (system calls, faults, allocations) are summed one Arrow
record batch at a time through zero-copy views, so classifying a trace
allocates little beyond a batch. Per-event arrays, which only the timeline
needs, are built on request by :meth:`TraceEvents.class_events`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from paracell.models.latency import _kernels as kernels
from paracell.models.latency import syscalls as sc
from paracell.models.latency.paths import SUBGROUPS
from paracell.trace.schema import KINDS
from paracell.trace.store import Trace

log = logging.getLogger("paracell.models.latency")

# Thread ids are below 2**22 (PID_MAX_LIMIT on 64-bit Linux), so a dense
# array maps a thread to its thread-group id in one indexing step.
_TID_LIMIT = 2**22 + 1

# Allocations are tracked in a byte map with one byte per frame of their span
# when the span is at most _BYTE_MAP_LIMIT frames (256 GiB of 4 KiB pages) and
# at most _BYTE_MAP_DENSITY frames per allocated page. Sparser or wider
# spreads are sorted instead, which costs O(pages log pages), not O(span).
_BYTE_MAP_LIMIT = 2**26
_BYTE_MAP_DENSITY = 8

# Sub-group index of each extra system-call path, aligned with SUBGROUPS.
_PT = {name: i for i, name in enumerate(SUBGROUPS["pt_syscall"])}
_IO = {name: i for i, name in enumerate(SUBGROUPS["io"])}

# Code of each group's extra path. Codes 1.. are the page-table sub-groups,
# then the I/O sub-groups, then the timer, so each class is a code range.
_IO_BASE = 1 + len(_PT)
_TIMER_CODE = _IO_BASE + len(_IO)
_NR_CODES = _TIMER_CODE + 1
_CODE = np.zeros(16, dtype=np.int8)
_CODE[[sc.FORK, sc.CLONE]] = 1 + _PT["fork"]
_CODE[sc.EXEC] = 1 + _PT["exec"]
_CODE[sc.EXIT_GROUP] = 1 + _PT["exit_group"]
_CODE[sc.PT_UPDATE] = 1 + _PT["update"]
_CODE[[sc.IO_OUTPUT, sc.IO_SYNC]] = _IO_BASE + _IO["output"]
_CODE[sc.IO_INPUT] = _IO_BASE + _IO["input"]
_CODE[sc.TIMER] = _TIMER_CODE

# Rules that decide whether a call of a group took its extra path, by group.
_ALWAYS, _RET_POSITIVE, _RET_ZERO, _NOT_FAILED = 0, 1, 2, 3
_RULE = np.zeros(16, dtype=np.int8)
_RULE[[sc.FORK, sc.CLONE, sc.IO_OUTPUT, sc.IO_INPUT]] = _RET_POSITIVE
_RULE[[sc.EXEC, sc.IO_SYNC]] = _RET_ZERO
_RULE[sc.PT_UPDATE] = _NOT_FAILED

# The system-call classes as (class, first code, number of sub-groups).
_SYSCALL_CODE_CLASSES = (
    ("pt_syscall", 1, len(_PT)),
    ("io", _IO_BASE, len(_IO)),
    ("timer", _TIMER_CODE, 1),
)


@dataclass
class ClassEvents:
    """Per-event arrays of one class, in time order, for the timeline.

    ``sub`` indexes ``SUBGROUPS[class]``, ``amount`` is the multiplicity of
    each event (pages for the page classes, else 1) and ``weight`` its 1/k
    concurrency weight.
    """

    ts_ns: np.ndarray
    cpu: np.ndarray
    tid: np.ndarray
    sub: np.ndarray
    amount: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return int(self.ts_ns.size)


@dataclass
class TraceEvents:
    """A classified trace: native time and per-class sums of its events.

    ``counts[class][subgroup]`` is how often a path is taken, in pages for the
    page classes. ``weighted`` is the same sum with each event weighted by
    1/k, as the module docstring explains.
    """

    name: str
    start_ts_ns: int
    end_ts_ns: int
    nr_events: int
    counts: dict[str, dict[str, float]]
    weighted: dict[str, dict[str, float]]
    concurrency: str = "serial"
    mean_busy_cpus: float = 1.0
    operations: int | None = None
    operation_unit: str | None = None
    trace: Trace | None = field(default=None, repr=False, compare=False)

    @property
    def native_ns(self) -> int:
        return self.end_ts_ns - self.start_ts_ns

    def scale_pages(self, event_class: str, nr_pages: int) -> None:
        """Replace the page count of a page class, keeping its mean weight.

        The memory model can supply a count for a modelled guest, such as its
        ``static`` policy's secondary faults or the Pager's binds. The pages
        keep the trace's mean concurrency weight of allocations.
        """
        if nr_pages < 0:
            raise ValueError(f"page count must not be negative, not {nr_pages}")
        count = self.counts[event_class]["pages"]
        weighted = self.weighted[event_class]["pages"]
        mean_weight = weighted / count if count else 1.0 / max(1.0, self.mean_busy_cpus)
        self.counts[event_class]["pages"] = float(nr_pages)
        self.weighted[event_class]["pages"] = float(nr_pages) * mean_weight

    def class_events(self) -> dict[str, ClassEvents]:
        """Return the per-event arrays of every class (read from the trace again)."""
        if self.trace is None:
            raise ValueError(f"{self.name}: classified without its trace")
        return _Classifier(self.trace).class_events()


def first_touched_pages(trace: Trace) -> np.ndarray:
    """Return, per ``mm_page_alloc`` row, how many of its pages are touched first.

    A page's first touch is taken to happen at its allocation, so the first
    allocation covering a page frame (``pfn`` to ``pfn + 2**order - 1``)
    touches it first and later allocations of the same frame do not. The sum
    is the number of distinct page frames the traced tasks allocated.
    """
    if not trace.has("mm_page_alloc"):
        return np.zeros(0, dtype=np.int64)
    pfn = trace.column("mm_page_alloc", "pfn")
    if pfn.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = trace.column("mm_page_alloc", "order")
    low = int(pfn.min())
    span = int(pfn.max()) - low + (1 << int(order.max()))
    nr_pages = int(np.left_shift(1, order.astype(np.int64)).sum())
    if span <= min(_BYTE_MAP_LIMIT, _BYTE_MAP_DENSITY * nr_pages):
        return kernels.first_touches(pfn, order, np.uint64(low), span)
    return _first_touches_by_sorting(pfn, order)


def _first_touches_by_sorting(pfn: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Return what :func:`first_touched_pages` returns, by sorting the page frames."""
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
    # numpy vectorises, stand in for the stable argsort of np.unique. That is
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

    After the ``j``-th step (``ts_ns[j]``) the level is ``busy[j]``; before
    the first it is ``initial``.
    """

    def __init__(self, ts_ns: np.ndarray, busy: np.ndarray, initial: int) -> None:
        # Only steps that change the level matter; switches between two
        # traced tasks leave it as it was.
        levels = np.concatenate(([initial], busy))
        changes = np.flatnonzero(levels[1:] != levels[:-1])
        self.ts_ns = ts_ns[changes]
        self.busy = busy[changes]
        self.initial = initial
        # Weight after j steps, for j = 0 .. number of steps.
        self.step_weight = 1.0 / np.maximum(np.concatenate(([initial], self.busy)), 1)

    def weights(self, ts_ns: np.ndarray) -> np.ndarray:
        """Return 1 / max(1, busy CPUs) at each of the sorted times ``ts_ns``.

        An event at the time of a step gets the level after the step.
        """
        if ts_ns.size == 0:
            return np.zeros(0)
        # Only the steps within the events' time range cut them, so a batch
        # of events costs O(its steps x log batch) plus one fill.
        first = int(np.searchsorted(self.ts_ns, ts_ns[0], side="right"))
        last = int(np.searchsorted(self.ts_ns, ts_ns[-1], side="right"))
        cuts = np.searchsorted(ts_ns, self.ts_ns[first:last], side="left")
        counts = np.diff(cuts, prepend=0, append=ts_ns.size)
        return np.repeat(self.step_weight[first : last + 1], counts)

    def mean(self, start_ns: int, end_ns: int) -> float:
        """Return the time-weighted mean number of busy CPUs over the trace."""
        if end_ns <= start_ns:
            return float(max(self.initial, 1))
        edges = np.concatenate(([start_ns], self.ts_ns, [end_ns]))
        edges = np.clip(edges, start_ns, end_ns)
        levels = np.concatenate(([self.initial], self.busy))
        return float(np.sum(np.diff(edges) * levels) / (end_ns - start_ns))


@dataclass
class _SchedEvents:
    idle: ClassEvents
    mm_switch: ClassEvents
    concurrency: _Concurrency | None


def _batches(trace: Trace, kind: str, names: tuple[str, ...]) -> Iterator[dict]:
    """Yield the columns of each record batch of a table as numpy views."""
    if not trace.has(kind):
        return
    for batch in trace.table(kind).to_batches():
        if batch.num_rows:
            yield {
                name: batch.column(name).to_numpy(zero_copy_only=False)
                for name in names
            }


def _classify_sched(trace: Trace, tgid_of: np.ndarray) -> _SchedEvents:
    ts = trace.column("sched_switch", "ts_ns")
    cpu = trace.column("sched_switch", "cpu")
    prev_pid = trace.column("sched_switch", "prev_pid")
    next_pid = trace.column("sched_switch", "next_pid")
    prev_tgid = tgid_of[prev_pid]
    next_tgid = tgid_of[next_pid]

    # Idle: a traced task hands its CPU to the idle task; the vCPU halts.
    idle_rows = np.flatnonzero((next_pid == 0) & (prev_tgid >= 0))

    # Rows grouped by CPU, in time order within each CPU; CPU numbers fit in
    # 16 bits, for which numpy's stable sort is a radix sort.
    order = np.argsort(cpu.astype(np.uint16), kind="stable")
    grouped_cpu = cpu[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = grouped_cpu[1:] != grouped_cpu[:-1]

    # Address-space switch: a traced task of another process than the one
    # last run on this CPU. The idle task and untraced tasks keep the loaded
    # address space (lazy TLB, or outside the container), so they are skipped.
    in_rows = order[next_tgid[order] >= 0]
    in_tgid = next_tgid[in_rows]
    in_cpu = cpu[in_rows]
    initial_tgid = np.full(int(cpu.max()) + 1, -2, dtype=np.int64)
    initial_tgid[grouped_cpu[first]] = prev_tgid[order[first]]
    switch_rows = in_rows
    if in_rows.size:
        previous = np.empty(in_rows.size, dtype=np.int64)
        previous[1:] = in_tgid[:-1]
        new_cpu = np.ones(in_rows.size, dtype=bool)
        new_cpu[1:] = in_cpu[1:] != in_cpu[:-1]
        previous[new_cpu] = initial_tgid[in_cpu[new_cpu]]
        # A CPU whose loaded address space is unknown (-1, -2) counts as a switch.
        changed = (previous != in_tgid) | (previous < 0)
        switch_rows = np.sort(in_rows[changed])

    # Concurrency: a CPU is busy from a switch to a traced task until a
    # switch away from it. Before its first switch it runs that switch's prev.
    state = (next_tgid >= 0).astype(np.int64)
    grouped_state = state[order]
    old_state = np.empty_like(grouped_state)
    old_state[1:] = grouped_state[:-1]
    initial_state = (prev_tgid[order[first]] >= 0).astype(np.int64)
    old_state[first] = initial_state
    delta = np.empty_like(state)
    delta[order] = grouped_state - old_state
    initial = int(initial_state.sum())
    concurrency = _Concurrency(ts, initial + np.cumsum(delta), initial)

    def events(rows: np.ndarray, tid: np.ndarray) -> ClassEvents:
        return ClassEvents(
            ts[rows],
            cpu[rows],
            tid[rows],
            sub=np.zeros(rows.size, dtype=np.int64),
            amount=np.ones(rows.size),
            weight=concurrency.weights(ts[rows]),
        )

    return _SchedEvents(
        events(idle_rows, prev_pid), events(switch_rows, next_pid), concurrency
    )


class _CloneFlags:
    """Decides whether a clone call copied its caller's address space."""

    def __init__(self, trace: Trace, tgid_of: np.ndarray | None) -> None:
        self.tgid_of = tgid_of
        self.new_tid = np.zeros(0, dtype=np.int64)
        self.shares_mm = np.zeros(0, dtype=bool)
        if trace.has("task_newtask") and trace.table("task_newtask").num_rows:
            new_tid = trace.column("task_newtask", "child_tid").astype(np.int64)
            flags = trace.column("task_newtask", "clone_flags")
            order = np.argsort(new_tid, kind="stable")
            self.new_tid = new_tid[order]
            self.shares_mm = (flags[order] & np.uint64(sc.CLONE_VM)) != 0

    def copies_mm(self, child_tid: np.ndarray, caller_tid: np.ndarray) -> np.ndarray:
        """Return whether each clone gave its child a copied address space.

        ``task_newtask`` records the clone flags: without CLONE_VM the kernel
        copies the page tables. Without a record, a child in the caller's
        thread group is a thread; any other child is taken to be a fork,
        although a CLONE_VM | CLONE_VFORK child (posix_spawn) copies nothing.
        """
        child = child_tid.astype(np.int64)
        known = np.zeros(child.size, dtype=bool)
        copies = np.ones(child.size, dtype=bool)
        if self.new_tid.size:
            where = np.minimum(
                np.searchsorted(self.new_tid, child), self.new_tid.size - 1
            )
            known = self.new_tid[where] == child
            copies = ~self.shares_mm[where]
        if self.tgid_of is not None:
            in_range = child < _TID_LIMIT
            same_group = (
                self.tgid_of[np.where(in_range, child, 0)] == self.tgid_of[caller_tid]
            )
            copies = np.where(~known & in_range & same_group, False, copies)
        return copies


class _Classifier:
    """Classifies one trace; shared by the streaming sums and the timeline arrays."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        has_sched = (
            trace.has("sched_switch") and trace.table("sched_switch").num_rows > 0
        )
        needs_map = has_sched or not trace.has("task_newtask")
        self.tgid_of = self._tgid_map() if needs_map else None
        self.sched = None
        if has_sched and self.tgid_of is not None:
            self.sched = _classify_sched(trace, self.tgid_of)
        self.clones = _CloneFlags(trace, self.tgid_of)

    @property
    def concurrency(self) -> _Concurrency | None:
        return self.sched.concurrency if self.sched is not None else None

    def _tgid_map(self) -> np.ndarray:
        """Return an array mapping each traced thread id to its thread group, or -1."""
        tgid_of = np.full(_TID_LIMIT, -1, dtype=np.int32)
        for kind in ("mm_page_alloc", "page_fault_user", "syscalls"):
            for batch in _batches(self.trace, kind, ("tid", "pid")):
                tgid_of[batch["tid"]] = batch["pid"]
        for batch in _batches(self.trace, "task_newtask", ("child_tid", "child_pid")):
            tgid_of[batch["child_tid"]] = batch["child_pid"]
        tgid_of[0] = -1  # the idle task belongs to no traced process
        return tgid_of

    def _steps(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the step times of the concurrency and the weight after each step."""
        concurrency = self.concurrency
        if concurrency is None:
            return np.zeros(0, dtype=np.int64), np.ones(1)
        return concurrency.ts_ns.astype(np.int64), concurrency.step_weight

    def _weights(self, ts_ns: np.ndarray) -> np.ndarray | None:
        concurrency = self.concurrency
        return concurrency.weights(ts_ns) if concurrency is not None else None

    def syscall_codes(
        self, nr: np.ndarray, ret: np.ndarray, complete: np.ndarray, tid: np.ndarray
    ) -> np.ndarray:
        """Return each call's extra-path code (0: none)."""
        group = sc.SYSCALL_GROUP[nr]
        codes = np.zeros(nr.size, dtype=np.int8)
        # Each call takes at most one extra path; only the calls of a group
        # with one are examined further.
        rows = np.flatnonzero(group)
        if rows.size == 0:
            return codes
        group = group[rows]
        ret = ret[rows]
        rule = _RULE[group]
        took = (
            (rule == _ALWAYS)
            | ((rule == _RET_POSITIVE) & (ret > 0))
            | ((rule == _RET_ZERO) & (ret == 0) & complete[rows])
            | ((rule == _NOT_FAILED) & ~sc.failed(ret))
        )
        clones = np.flatnonzero((group == sc.CLONE) & took)
        if clones.size:
            took[clones] = self.clones.copies_mm(ret[clones], tid[rows[clones]])
        codes[rows] = np.where(took, _CODE[group], 0)
        return codes

    def summarise(self) -> TraceEvents:
        """Return the per-class sums, streaming over the large tables."""
        trace = self.trace
        counts = {c: dict.fromkeys(subs, 0.0) for c, subs in SUBGROUPS.items()}
        weighted = {c: dict.fromkeys(subs, 0.0) for c, subs in SUBGROUPS.items()}

        def add(cls: str, sub: str, count: float, weight_sum: float) -> None:
            counts[cls][sub] += count
            weighted[cls][sub] += weight_sum

        step_ts, step_weight = self._steps()
        no_amount = np.zeros(0)

        # The last slot of the code arrays counts every call.
        code_counts = np.zeros(_NR_CODES + 1)
        code_weighted = np.zeros(_NR_CODES + 1)
        clone_rows = np.empty(0, dtype=np.int64)
        names = ("ts_ns", "tid", "nr", "ret", "complete")
        for batch in _batches(trace, "syscalls", names):
            ts = batch["ts_ns"]
            if clone_rows.size < ts.size:
                clone_rows = np.empty(ts.size, dtype=np.int64)
            nr_clones = kernels.syscall_totals(
                ts,
                batch["nr"],
                batch["ret"],
                batch["complete"],
                step_ts,
                step_weight,
                sc.SYSCALL_GROUP,
                _RULE,
                _CODE,
                sc.CLONE,
                code_counts,
                code_weighted,
                clone_rows,
            )
            if nr_clones:
                rows = clone_rows[:nr_clones]
                copies = rows[
                    self.clones.copies_mm(batch["ret"][rows], batch["tid"][rows])
                ]
                fork = 1 + _PT["fork"]
                code_counts[fork] += copies.size
                w = self._weights(ts[copies])
                code_weighted[fork] += float(w.sum()) if w is not None else copies.size
        add("syscall", "all", code_counts[-1], code_weighted[-1])
        for cls, first_code, nr_subgroups in _SYSCALL_CODE_CLASSES:
            for i, sub in enumerate(SUBGROUPS[cls][:nr_subgroups]):
                add(
                    cls, sub, code_counts[first_code + i], code_weighted[first_code + i]
                )

        for batch in _batches(trace, "page_fault_user", ("ts_ns",)):
            add(
                "fault",
                "all",
                *kernels.weighted_total(
                    batch["ts_ns"], no_amount, step_ts, step_weight
                ),
            )

        new_pages = first_touched_pages(trace).astype(np.float64)
        offset = 0
        for batch in _batches(trace, "mm_page_alloc", ("ts_ns",)):
            n = batch["ts_ns"].size
            totals = kernels.weighted_total(
                batch["ts_ns"], new_pages[offset : offset + n], step_ts, step_weight
            )
            offset += n
            add("first_touch", "pages", *totals)
            add("pager_bind", "pages", *totals)

        if self.sched is not None:
            for cls, class_events in (
                ("idle", self.sched.idle),
                ("mm_switch", self.sched.mm_switch),
            ):
                add(cls, "all", len(class_events), float(class_events.weight.sum()))

        manifest = trace.manifest
        concurrency = self.concurrency
        return TraceEvents(
            name=manifest.workload.name,
            start_ts_ns=manifest.start_ts_ns,
            end_ts_ns=manifest.end_ts_ns,
            nr_events=sum(trace.table(k).num_rows for k in KINDS if trace.has(k)),
            counts=counts,
            weighted=weighted,
            concurrency="sched_switch" if concurrency is not None else "serial",
            mean_busy_cpus=(
                concurrency.mean(manifest.start_ts_ns, manifest.end_ts_ns)
                if concurrency is not None
                else 1.0
            ),
            operations=manifest.workload.operations,
            operation_unit=manifest.workload.operation_unit,
            trace=trace,
        )

    def _events(
        self,
        ts: np.ndarray,
        cpu: np.ndarray,
        tid: np.ndarray,
        sub: np.ndarray,
        amount: np.ndarray | None = None,
    ) -> ClassEvents:
        w = self._weights(ts)
        return ClassEvents(
            ts,
            cpu,
            tid,
            sub,
            amount if amount is not None else np.ones(ts.size),
            w if w is not None else np.ones(ts.size),
        )

    def class_events(self) -> dict[str, ClassEvents]:
        """Return the per-event arrays of every class present in the trace."""
        trace = self.trace
        out: dict[str, ClassEvents] = {}
        if self.sched is not None:
            out["idle"], out["mm_switch"] = self.sched.idle, self.sched.mm_switch
        if trace.has("syscalls"):
            column = {
                n: trace.column("syscalls", n)
                for n in ("ts_ns", "cpu", "tid", "nr", "ret", "complete")
            }
            codes = self.syscall_codes(
                column["nr"], column["ret"], column["complete"], column["tid"]
            )
            ts, cpu, tid = column["ts_ns"], column["cpu"], column["tid"]
            out["syscall"] = self._events(ts, cpu, tid, np.zeros(ts.size, np.int64))
            for cls, first_code, nr_subgroups in _SYSCALL_CODE_CLASSES:
                rows = np.flatnonzero(
                    (codes >= first_code) & (codes < first_code + nr_subgroups)
                )
                sub = codes[rows].astype(np.int64) - first_code
                out[cls] = self._events(ts[rows], cpu[rows], tid[rows], sub)
        if trace.has("page_fault_user"):
            ts = trace.column("page_fault_user", "ts_ns")
            out["fault"] = self._events(
                ts,
                trace.column("page_fault_user", "cpu"),
                trace.column("page_fault_user", "tid"),
                np.zeros(ts.size, np.int64),
            )
        if trace.has("mm_page_alloc"):
            new_pages = first_touched_pages(trace)
            rows = np.flatnonzero(new_pages)
            pages = self._events(
                trace.column("mm_page_alloc", "ts_ns")[rows],
                trace.column("mm_page_alloc", "cpu")[rows],
                trace.column("mm_page_alloc", "tid")[rows],
                np.zeros(rows.size, np.int64),
                new_pages[rows].astype(np.float64),
            )
            out["first_touch"] = out["pager_bind"] = pages
        return out


def classify(trace: Trace) -> TraceEvents:
    """Sort the events of ``trace`` into classes and sum them per sub-group."""
    events = _Classifier(trace).summarise()
    if events.concurrency == "serial" and trace.has("syscalls"):
        log.info(
            "%s: no sched_switch events, so overheads are summed as if the "
            "workload ran on one CPU",
            events.name,
        )
    return events
