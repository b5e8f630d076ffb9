"""Latency model on hand-built traces, against overheads computed by hand.

Every trace here has one kind of event, so each test checks one event class
of every runtime on every deployment against the arithmetic in
latency_helpers. Traces without sched_switch are treated as serial (every
weight 1).
"""

from __future__ import annotations

import numpy as np
import pytest
from latency_helpers import (
    COSTS,
    expected_fault,
    expected_first_touch_page,
    expected_idle,
    expected_mm_switch,
    expected_notification,
    expected_pager_bind_page,
    expected_pt,
    expected_syscall,
    expected_timer,
    newtask,
    v,
    write_with_newtask,
)

from paracell.costs import DEPLOYMENTS
from paracell.errors import ModelError
from paracell.models.latency import (
    CLASSES,
    RUNTIMES,
    classify,
    count_first_touches,
    evaluate,
    first_touched_pages,
    timeline,
)
from paracell.trace.builder import TraceBuilder

PAIRS = [(r, d) for r in RUNTIMES for d in DEPLOYMENTS]
END_NS = 10_000_000


def by_class(trace, runtime, deployment, cls, **kwargs):
    report = evaluate(trace, COSTS, [runtime], [deployment], **kwargs)
    return report.result(runtime, deployment).by_class[cls]


@pytest.fixture
def syscall_trace(tmp_path):
    b = TraceBuilder()
    for i, nr in enumerate([39, 39, 102, 60]):  # getpid, getpid, getuid, exit
        b.syscall(1_000 * (i + 1), nr=nr)
    return b.write(tmp_path / "t", end_ts_ns=END_NS)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_syscall_path(syscall_trace, runtime, deployment):
    entry = by_class(syscall_trace, runtime, deployment, "syscall")
    assert entry.count == 4
    assert entry.overhead_ns == pytest.approx(4 * expected_syscall(runtime, deployment))


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_plain_calls_take_no_extra_path(syscall_trace, runtime, deployment):
    report = evaluate(syscall_trace, COSTS, [runtime], [deployment])
    result = report.result(runtime, deployment)
    others = {c: e.overhead_ns for c, e in result.by_class.items() if c != "syscall"}
    assert others == dict.fromkeys(others, 0.0)


@pytest.fixture
def fault_trace(tmp_path):
    b = TraceBuilder()
    for i in range(3):
        b.page_fault(1_000 * (i + 1), address=0x7F0000000000 + 4096 * i)
    return b.write(tmp_path / "t", end_ts_ns=END_NS)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_fault_path(fault_trace, runtime, deployment):
    entry = by_class(fault_trace, runtime, deployment, "fault")
    assert entry.count == 3
    assert entry.overhead_ns == pytest.approx(3 * expected_fault(runtime, deployment))


@pytest.fixture
def alloc_trace(tmp_path):
    b = TraceBuilder()
    b.alloc(1_000, pfn=100, order=1)  # pages 100, 101: both new
    b.alloc(2_000, pfn=101, order=0)  # already touched
    b.alloc(3_000, pfn=104, order=2)  # pages 104-107: new
    b.free(4_000, pfn=100, order=1)
    b.alloc(5_000, pfn=100, order=0)  # reused: no first touch
    b.alloc(6_000, pfn=200, order=0)  # new
    return b.write(tmp_path / "t", end_ts_ns=END_NS)


def test_first_touched_pages_per_allocation(alloc_trace):
    assert list(first_touched_pages(alloc_trace)) == [2, 0, 4, 0, 1]
    assert count_first_touches(alloc_trace) == 7


def test_first_touches_of_dense_frames(tmp_path):
    # Frames close together take the byte-map path.
    b = TraceBuilder()
    b.alloc(1_000, pfn=0, order=2)  # frames 0-3
    b.alloc(2_000, pfn=2, order=1)  # frames 2-3, touched
    b.alloc(3_000, pfn=4, order=0)
    b.alloc(4_000, pfn=0, order=3)  # frames 0-7: 5, 6 and 7 are new
    trace = b.write(tmp_path / "t", end_ts_ns=END_NS)
    assert list(first_touched_pages(trace)) == [4, 0, 1, 3]


def test_first_touches_of_scattered_frames(tmp_path):
    # Frames far apart take the sorting path instead of the byte map.
    b = TraceBuilder()
    b.alloc(1_000, pfn=2**40, order=1)
    b.alloc(2_000, pfn=3, order=0)
    b.alloc(3_000, pfn=2**40 + 1, order=0)
    b.alloc(4_000, pfn=2, order=2)  # frames 2-5: 3 is already touched
    trace = b.write(tmp_path / "t", end_ts_ns=END_NS)
    assert list(first_touched_pages(trace)) == [2, 1, 0, 3]


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_first_touch_path(alloc_trace, runtime, deployment):
    entry = by_class(alloc_trace, runtime, deployment, "first_touch")
    assert entry.count == 7
    expected = 7 * expected_first_touch_page(runtime, deployment)
    assert entry.overhead_ns == pytest.approx(expected)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_pager_bind_path(alloc_trace, runtime, deployment):
    entry = by_class(alloc_trace, runtime, deployment, "pager_bind")
    assert entry.count == 7
    expected = 7 * expected_pager_bind_page(runtime, deployment)
    assert entry.overhead_ns == pytest.approx(expected)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_page_counts_from_memory_model(alloc_trace, runtime, deployment):
    report = evaluate(
        alloc_trace,
        COSTS,
        [runtime],
        [deployment],
        first_touch_pages=40,
        pager_bound_pages=55,
    )
    result = report.result(runtime, deployment)
    first, bind = result.by_class["first_touch"], result.by_class["pager_bind"]
    assert first.count == 40
    assert bind.count == 55
    assert first.overhead_ns == pytest.approx(
        40 * expected_first_touch_page(runtime, deployment)
    )
    assert bind.overhead_ns == pytest.approx(
        55 * expected_pager_bind_page(runtime, deployment)
    )


def test_pager_binds_follow_first_touch_override(alloc_trace):
    report = evaluate(alloc_trace, COSTS, ["paracell"], ["nested"], first_touch_pages=9)
    assert report.result("paracell", "nested").by_class["pager_bind"].count == 9


@pytest.fixture
def io_trace(tmp_path):
    b = TraceBuilder()
    b.syscall(1_000, nr=1, ret=100)  # write: output
    b.syscall(2_000, nr=44, ret=10)  # sendto: output
    b.syscall(3_000, nr=1, ret=-11)  # write failed with EAGAIN: nothing
    b.syscall(4_000, nr=74, ret=0)  # fsync: output
    b.syscall(5_000, nr=0, ret=512)  # read: input
    b.syscall(6_000, nr=0, ret=0)  # read at end of file: nothing
    b.syscall(7_000, nr=45, ret=20)  # recvfrom: input
    return b.write(tmp_path / "t", end_ts_ns=END_NS)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_io_path(io_trace, runtime, deployment):
    entry = by_class(io_trace, runtime, deployment, "io")
    assert entry.count == 5
    notifications = 3 * v("io.notify_per_output_call", deployment) + 2 * v(
        "io.notify_per_input_call", deployment
    )
    expected = notifications * expected_notification(runtime, deployment)
    assert entry.overhead_ns == pytest.approx(expected)


@pytest.fixture
def timer_trace(tmp_path):
    b = TraceBuilder()
    b.syscall(1_000, nr=35)  # nanosleep
    b.syscall(2_000, nr=230, ret=-4)  # clock_nanosleep interrupted: timer was armed
    b.syscall(3_000, nr=286)  # timerfd_settime
    return b.write(tmp_path / "t", end_ts_ns=END_NS)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_timer_path(timer_trace, runtime, deployment):
    entry = by_class(timer_trace, runtime, deployment, "timer")
    assert entry.count == 3
    assert entry.overhead_ns == pytest.approx(3 * expected_timer(runtime, deployment))


@pytest.fixture
def pt_trace(tmp_path):
    b = TraceBuilder()
    b.syscall(1_000, nr=57, ret=200)  # fork
    b.syscall(1_500, nr=57, ret=-12)  # fork failed with ENOMEM: nothing
    b.syscall(2_000, nr=56, ret=201)  # clone without CLONE_VM: a fork
    b.syscall(2_500, nr=56, ret=202)  # clone with CLONE_VM: a thread
    b.syscall(3_000, nr=58, ret=203)  # vfork shares the address space: nothing
    b.syscall(4_000, nr=59, ret=0)  # execve
    b.syscall(4_500, nr=59, ret=-2)  # execve failed with ENOENT: nothing
    b.syscall(5_000, nr=9, ret=0x7F0000000000)  # mmap
    b.syscall(5_500, nr=9, ret=-12)  # mmap failed: nothing
    b.syscall(6_000, nr=11)  # munmap
    b.syscall(7_000, nr=10)  # mprotect
    b.syscall(8_000, nr=231, complete=False)  # exit_group never returns
    rows = [
        newtask(2_000, 1, 201, 201, 0x01200011),  # fork-style flags, no CLONE_VM
        newtask(2_500, 1, 202, 1, 0x003D0F00),  # pthread_create flags
    ]
    return write_with_newtask(b, tmp_path / "t", rows, END_NS)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_page_table_heavy_paths(pt_trace, runtime, deployment):
    entry = by_class(pt_trace, runtime, deployment, "pt_syscall")
    assert entry.count == 7
    expected = (
        2 * expected_pt(runtime, deployment, "fork")
        + expected_pt(runtime, deployment, "exec")
        + 3 * expected_pt(runtime, deployment, "update")
        + expected_pt(runtime, deployment, "exit_group")
    )
    assert entry.overhead_ns == pytest.approx(expected)


def test_clone_without_flags_uses_thread_groups(tmp_path):
    b = TraceBuilder()
    b.syscall(1_000, nr=56, ret=11, tid=10, pid=10)  # child 11 is a thread of 10
    b.syscall(2_000, nr=56, ret=12, tid=10, pid=10)  # child 12 is a new process
    b.syscall(3_000, nr=39, tid=11, pid=10)
    b.syscall(4_000, nr=39, tid=12, pid=12)
    trace = b.write(tmp_path / "t", end_ts_ns=END_NS)
    events = classify(trace)
    assert events.counts["pt_syscall"]["fork"] == 1


@pytest.fixture
def sched_trace(tmp_path):
    b = TraceBuilder()
    # Tasks 1 and 3 are threads of process 1; task 2 is process 2.
    b.syscall(10, nr=39, tid=1, pid=1)
    b.syscall(20, nr=39, tid=3, pid=1)
    b.syscall(30, nr=39, tid=2, pid=2)
    b.switch(1_000, prev_pid=1, next_pid=2)  # process 1 -> 2: switch
    b.switch(2_000, prev_pid=2, next_pid=0)  # idle
    b.switch(3_000, prev_pid=0, next_pid=2)  # same address space: lazy TLB
    b.switch(4_000, prev_pid=2, next_pid=1)  # process 2 -> 1: switch
    b.switch(5_000, prev_pid=1, next_pid=3)  # thread of the same process
    b.switch(6_000, prev_pid=3, next_pid=999)  # untraced task: skipped
    b.switch(7_000, prev_pid=999, next_pid=3)  # still process 1 loaded
    b.switch(8_000, prev_pid=3, next_pid=0)  # idle
    return b.write(tmp_path / "t", end_ts_ns=END_NS)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_address_space_switch_path(sched_trace, runtime, deployment):
    entry = by_class(sched_trace, runtime, deployment, "mm_switch")
    assert entry.count == 2
    expected = 2 * expected_mm_switch(runtime, deployment)
    assert entry.overhead_ns == pytest.approx(expected)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_idle_path(sched_trace, runtime, deployment):
    entry = by_class(sched_trace, runtime, deployment, "idle")
    assert entry.count == 2
    assert entry.overhead_ns == pytest.approx(2 * expected_idle(runtime, deployment))


def test_busy_cpus_share_overhead(tmp_path):
    b = TraceBuilder(cpu_count=2)
    b.syscall(10, nr=39, tid=1, pid=1, cpu=0)
    b.syscall(20, nr=39, tid=2, pid=2, cpu=1)
    b.switch(100, prev_pid=0, next_pid=1, cpu=0)
    b.switch(200, prev_pid=0, next_pid=2, cpu=1)
    b.page_fault(300, 0x1000, tid=1, cpu=0)  # two CPUs busy: counts half
    b.switch(400, prev_pid=2, next_pid=0, cpu=1)
    b.page_fault(500, 0x2000, tid=1, cpu=0)  # one CPU busy: counts whole
    trace = b.write(tmp_path / "t", end_ts_ns=END_NS)
    entry = by_class(trace, "pvm", "bare-metal", "fault")
    per_fault = expected_fault("pvm", "bare-metal")
    assert entry.count == 2
    assert entry.overhead_ns == pytest.approx(1.5 * per_fault)
    assert entry.cpu_time_ns == pytest.approx(2 * per_fault)


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_total_is_native_plus_classes(pt_trace, runtime, deployment):
    result = evaluate(pt_trace, COSTS, [runtime], [deployment]).result(
        runtime, deployment
    )
    assert result.native_ns == END_NS
    classes = sum(e.overhead_ns for e in result.by_class.values())
    assert result.overhead_ns == round(classes)
    assert result.total_ns == END_NS + result.overhead_ns
    assert set(result.by_class) == set(CLASSES)


def test_runc_adds_nothing(pt_trace):
    report = evaluate(pt_trace, COSTS, ["runc"])
    for deployment in DEPLOYMENTS:
        result = report.result("runc", deployment)
        assert result.overhead_ns == 0
        assert result.relative_to_runc == 1.0


def test_relative_to_runc_without_runc(syscall_trace):
    report = evaluate(syscall_trace, COSTS, ["pvm"], ["nested"])
    result = report.result("pvm", "nested")
    assert result.relative_to_runc == pytest.approx(result.total_ns / END_NS)


def test_per_operation(tmp_path):
    b = TraceBuilder(operations=4)
    b.syscall(1_000, nr=39)
    trace = b.write(tmp_path / "t", end_ts_ns=END_NS)
    report = evaluate(trace, COSTS, ["pvm"], ["bare-metal"])
    result = report.result("pvm", "bare-metal")
    assert result.per_operation_ns == pytest.approx(result.total_ns / 4)
    assert report.to_dict()["pvm"]["bare-metal"]["per_operation_ns"] == (
        result.per_operation_ns
    )


def test_no_per_operation_without_operations(syscall_trace):
    report = evaluate(syscall_trace, COSTS, ["pvm"], ["bare-metal"])
    assert "per_operation_ns" not in report.to_dict()["pvm"]["bare-metal"]


def test_report_dict_shape(pt_trace):
    document = evaluate(pt_trace, COSTS).to_dict()
    assert set(document) == {*RUNTIMES, "reductions"}
    entry = document["runv"]["nested"]
    assert {
        "total_ns",
        "native_ns",
        "overhead_ns",
        "relative_to_runc",
        "by_class",
    } <= set(entry)
    assert entry["by_class"]["fault"] == {
        "count": 0.0,
        "overhead_ns": 0.0,
        "cpu_time_ns": 0.0,
    }
    reductions = document["reductions"]
    assert set(reductions) == {"paracell_vs_pvm", "paracell_vs_runv"}
    claims = {
        (b, d): reductions[b][d]["claim_percent"]
        for b in reductions
        for d in reductions[b]
    }
    assert claims == {
        ("paracell_vs_pvm", "bare-metal"): 57.0,
        ("paracell_vs_pvm", "nested"): 79.0,
        ("paracell_vs_runv", "bare-metal"): 33.0,
        ("paracell_vs_runv", "nested"): 88.0,
    }


def test_reduction_is_relative_difference(pt_trace):
    report = evaluate(pt_trace, COSTS)
    for red in report.reductions:
        pc = report.result("paracell", red.deployment).total_ns
        base = report.result(red.baseline, red.deployment).total_ns
        assert red.model_percent == pytest.approx(100 * (1 - pc / base))
        assert red.reason


def test_reductions_need_paracell(pt_trace):
    assert evaluate(pt_trace, COSTS, ["runc", "pvm"]).reductions == []


def test_unknown_runtime(syscall_trace):
    with pytest.raises(ModelError, match="unknown runtime 'gvisor'"):
        evaluate(syscall_trace, COSTS, ["gvisor"])


def test_unknown_deployment(syscall_trace):
    with pytest.raises(ModelError, match="unknown deployment 'cloud'"):
        evaluate(syscall_trace, COSTS, ["pvm"], ["cloud"])


@pytest.mark.parametrize(("runtime", "deployment"), PAIRS)
def test_timeline_sums_to_total(pt_trace, runtime, deployment):
    report = evaluate(pt_trace, COSTS, [runtime], [deployment])
    line = timeline(pt_trace, COSTS, runtime, deployment)
    assert int(line.dur_ns.sum()) == report.result(runtime, deployment).total_ns
    assert line.total_ns == report.result(runtime, deployment).total_ns
    assert (line.dur_ns > 0).all()
    assert np.array_equal(line.start_ns[1:], line.start_ns[:-1] + line.dur_ns[:-1])
    assert line.start_ns[0] == 0


def test_timeline_slices_carry_classes(sched_trace):
    line = timeline(sched_trace, COSTS, "pvm", "nested")
    report = evaluate(sched_trace, COSTS, ["pvm"], ["nested"])
    by_class = report.result("pvm", "nested").by_class
    for cls in ("syscall", "mm_switch", "idle"):
        mask = line.class_id == line.class_names.index(cls)
        assert (
            abs(int(line.dur_ns[mask].sum()) - by_class[cls].overhead_ns) <= mask.sum()
        )
    native = line.class_id == line.class_names.index("native")
    assert int(line.dur_ns[native].sum()) == END_NS
    assert (line.cpu[native] == -1).all()
    assert (line.tid[~native] >= 0).all()


def test_timeline_of_runc_is_one_native_slice(pt_trace):
    line = timeline(pt_trace, COSTS, "runc", "bare-metal")
    assert len(line) == 1
    assert line.class_of(0) == "native"
    assert line.dur_ns[0] == END_NS
