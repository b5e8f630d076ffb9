"""Properties of the latency model on generated traces (hypothesis)."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paracell.costs import DEPLOYMENTS, default_costs
from paracell.models.latency import CLASSES, RUNTIMES, evaluate
from paracell.models.latency import _kernels as kernels
from paracell.models.latency.events import _first_touches_by_sorting
from paracell.models.latency.paths import parameters_used
from paracell.trace.builder import TraceBuilder

COSTS = default_costs()
PAIRS = list(itertools.product(RUNTIMES, DEPLOYMENTS))
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# System calls of every group, with return values that make them take or skip
# their extra path.
NRS = [0, 1, 9, 10, 11, 12, 25, 28, 35, 39, 44, 45, 56, 57, 58, 59, 74, 231, 286]
RETS = [-12, -2, 0, 1, 4096, 2**46]


@st.composite
def workloads(draw, first_tid: int = 1, first_pfn: int = 0):
    """Draw events of a short workload on two CPUs that start and end idle.

    Each CPU runs its own sequence of (task, length, idle gap) runs, so the
    two CPUs overlap in time, the switches of each CPU are consistent, and a
    copy shifted past the end can follow the workload.
    """
    nr_tasks = draw(st.integers(1, 4))
    tids = list(range(first_tid, first_tid + nr_tasks))
    # Tasks form one or several processes.
    pid_of = {t: tids[0] if draw(st.booleans()) else t for t in tids}
    events = []
    end = 0
    for cpu in (0, 1):
        ts = 0
        runs = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(tids), st.integers(50, 5_000), st.integers(0, 3_000)
                ),
                max_size=4,
            )
        )
        for tid, length, gap in runs:
            ts += gap + 1
            events.append(("switch", ts, {"prev_pid": 0, "next_pid": tid, "cpu": cpu}))
            inside = draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["syscall", "fault", "alloc"]),
                        st.sampled_from(NRS),
                        st.sampled_from(RETS),
                        st.integers(0, 63),
                        st.integers(0, 3),
                    ),
                    max_size=6,
                )
            )
            for offset, (kind, nr, ret, pfn, order) in enumerate(inside, start=1):
                at = ts + offset
                task = {"tid": tid, "pid": pid_of[tid], "cpu": cpu}
                if kind == "syscall":
                    fields = {"nr": nr, "ret": ret, "duration_ns": 1, **task}
                    events.append(("syscall", at, fields))
                elif kind == "fault":
                    events.append(("fault", at, {"address": 4096 * pfn, **task}))
                else:
                    fields = {"pfn": first_pfn + pfn, "order": order, **task}
                    events.append(("alloc", at, fields))
            ts += max(length, len(inside) + 1)
            events.append(("switch", ts, {"prev_pid": tid, "next_pid": 0, "cpu": cpu}))
        end = max(end, ts)
    return events, end + 1


def build(events, end_ns: int, shift_ns: int = 0, builder: TraceBuilder | None = None):
    b = builder or TraceBuilder(cpu_count=2)
    b.with_kinds("syscalls", "page_fault_user", "mm_page_alloc", "sched_switch")
    for kind, ts, fields in events:
        at = ts + shift_ns
        if kind == "switch":
            b.switch(at, fields["prev_pid"], fields["next_pid"], cpu=fields["cpu"])
        elif kind == "syscall":
            b.syscall(at, **fields)
        elif kind == "fault":
            b.page_fault(at, **fields)
        else:
            b.alloc(at, **fields)
    b.end_ts_ns = max(b.end_ts_ns, end_ns + shift_ns)
    return b


@contextmanager
def written(builder: TraceBuilder, end_ns: int) -> Iterator:
    """Write the trace to a temporary directory that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="paracell-latency-") as directory:
        yield builder.write(Path(directory) / "t", end_ts_ns=end_ns)


def overheads(trace, costs=COSTS):
    report = evaluate(trace, costs)
    return {(r, d): report.result(r, d) for r, d in PAIRS}


def test_empty_trace_costs_nothing(tmp_path):
    b = TraceBuilder().with_kinds(
        "syscalls", "page_fault_user", "sched_switch", "mm_page_alloc", "task_newtask"
    )
    trace = b.write(tmp_path / "t", end_ts_ns=1_000_000)
    for (runtime, deployment), result in overheads(trace).items():
        assert result.overhead_ns == 0, (runtime, deployment)
        assert result.total_ns == 1_000_000
        assert all(e.overhead_ns == 0 for e in result.by_class.values())


@SETTINGS
@given(workloads(first_tid=1, first_pfn=0), workloads(first_tid=100, first_pfn=1_000))
def test_overhead_is_additive(first, second):
    """Two workloads with no task or page frame in common, one after the other."""
    events_a, end_a = first
    events_b, end_b = second
    joined = build(events_b, end_b, shift_ns=end_a, builder=build(events_a, end_a))
    with ExitStack() as stack:
        a = overheads(stack.enter_context(written(build(events_a, end_a), end_a)))
        b = overheads(stack.enter_context(written(build(events_b, end_b), end_b)))
        ab = overheads(stack.enter_context(written(joined, end_a + end_b)))
    for pair in PAIRS:
        for cls in CLASSES:
            expected = (
                a[pair].by_class[cls].overhead_ns + b[pair].by_class[cls].overhead_ns
            )
            got = ab[pair].by_class[cls].overhead_ns
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-6), (pair, cls)
        assert ab[pair].native_ns == a[pair].native_ns + b[pair].native_ns


@st.composite
def cost_tables(draw):
    """Draw a cost table whose latency parameters take any value in [0, 3 x high]."""
    values = {}
    for param in COSTS:
        if param.name not in parameters_used() or param.unit in ("GHz", "pages"):
            continue
        top = 3 * max(param.high or 0.0, param.value, 1.0)
        if param.unit == "ratio":
            top = 1.0  # a share cannot exceed 1; the table rejects more
        values[param.key] = draw(st.floats(0, top, allow_nan=False))
    return COSTS.replace_values(values)


@SETTINGS
@given(workloads(), cost_tables())
def test_no_overhead_is_negative(workload, costs):
    events, end = workload
    with written(build(events, end), end) as trace:
        results = overheads(trace, costs)
    for pair, result in results.items():
        assert result.overhead_ns >= 0, pair
        for cls, entry in result.by_class.items():
            assert entry.overhead_ns >= 0, (pair, cls)
            assert entry.cpu_time_ns >= entry.overhead_ns - 1e-6, (pair, cls)


# The clock frequency converts cycles to time and the batch size divides the
# per-batch hypercall, so raising either lowers a cost; neither is a cost.
NOT_COSTS = {"cpu.clock_ghz", "paracell.pager_batch_pages"}
RAISABLE = sorted(
    {p.key for p in COSTS if p.name in parameters_used() and p.name not in NOT_COSTS}
)


@SETTINGS
@given(workloads(), st.sampled_from(RAISABLE), st.floats(1.0, 10.0))
def test_raising_a_cost_never_lowers_a_total(workload, key, factor):
    events, end = workload
    param = COSTS.param(*key)
    value = param.value * factor + 1.0
    if param.unit == "ratio":
        value = min(value, 1.0)
    raised = COSTS.replace_values({key: value})
    with written(build(events, end), end) as trace:
        before = overheads(trace)
        after = overheads(trace, raised)
    for pair in PAIRS:
        assert after[pair].total_ns >= before[pair].total_ns, (pair, key)


def test_raisable_covers_every_path_parameter():
    names = {name for name, _ in RAISABLE}
    assert names | NOT_COSTS == parameters_used()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**12), st.integers(0, 4)), min_size=1, max_size=60
    )
)
def test_first_touch_algorithms_agree(allocations):
    """The byte map and the sort count the same first touches as a set does."""
    pfn = np.array([p for p, _ in allocations], dtype=np.uint64)
    order = np.array([o for _, o in allocations], dtype=np.uint8)
    seen: set[int] = set()
    expected = []
    for p, o in allocations:
        frames = set(range(p, p + 2**o))
        expected.append(len(frames - seen))
        seen |= frames
    span = int(pfn.max()) + 2**4
    assert list(kernels.first_touches(pfn, order, np.uint64(0), span)) == expected
    assert list(_first_touches_by_sorting(pfn, order)) == expected
