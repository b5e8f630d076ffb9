"""Memory model API: event extraction, op stream format, report contents and errors."""

from __future__ import annotations

import numpy as np
import pytest
from memory_support import MIB, S, costs_with, run, write

from paracell.errors import ModelError
from paracell.models.memory import ALL, AllocatorEvents, evaluate
from paracell.models.memory import ops as opcodes
from paracell.models.memory.events import (
    EV_ALLOC,
    EV_FREE,
    EV_REFILL,
    select_free_events,
)
from paracell.trace.builder import TraceBuilder


def mixed_trace(tmp_path):
    b = TraceBuilder(name="mixed", cpu_count=2)
    b.refill(1 * S, pfn=0x40000, cpu=1)
    b.refill(1 * S, pfn=0x40001, cpu=1)
    b.alloc(1 * S, pfn=0x40000, cpu=1)
    b.alloc(1 * S + 10, pfn=0x40400, order=1, cpu=0)  # the next 4 MiB block
    b.alloc(2 * S, pfn=0x90000, order=10, cpu=0)  # far away
    b.free(3 * S, pfn=0x40000, cpu=0)
    b._add("mm_page_free_batched", 3 * S, cpu=0, pid=1, tid=1, pfn=0x40000)
    b.free(4 * S, pfn=0x12345)  # never allocated in the trace
    return write(b, tmp_path, 5)


def test_events_compact_pfns_and_keep_offsets(tmp_path):
    events = AllocatorEvents.from_trace(mixed_trace(tmp_path))
    kinds = list(events.kind)
    assert kinds == [
        EV_REFILL,
        EV_REFILL,
        EV_ALLOC,
        EV_ALLOC,
        EV_ALLOC,
        EV_FREE,
        EV_FREE,
    ]
    # 0x40000 and 0x40400 are adjacent 4 MiB blocks and stay adjacent; the
    # block at 0x90000 comes after one empty block.
    assert list(events.pfn[:5]) == [0, 1, 0, 1024, 3 * 1024]
    assert events.nr_captured_pages == 4 * 1024
    assert events.pfn[-1] == -1
    assert events.nr_unknown_free_pages == 1
    assert events.nr_free_batched == 1
    assert events.nr_cpus == 2
    assert (events.start_ts_ns, events.end_ts_ns) == (0, 5 * S)


def test_batched_free_marker_is_not_a_second_free(tmp_path):
    trace = mixed_trace(tmp_path)
    ts, pfn, order, cpu, nr_batched = select_free_events(trace)
    assert list(pfn) == [0x40000, 0x12345]
    assert nr_batched == 1
    report = run(trace, placement="trace", policies=["static"])
    # Only the free of 0x12345 is ignored; the batched page is freed once.
    assert report.runs["static"].metrics["ignored_free_pages"] == 1
    assert report.runs["static"].metrics["stream_errors"] == 0


def test_frees_before_allocations_at_equal_time():
    events = AllocatorEvents.from_arrays(
        "tie",
        alloc=(np.array([5, 5]), np.array([8, 9]), np.array([0, 0]), np.array([0, 0])),
        free=(np.array([5]), np.array([8]), np.array([0]), np.array([0])),
    )
    assert list(events.kind) == [EV_FREE, EV_ALLOC, EV_ALLOC]


def test_report_has_every_policy_and_savings(tmp_path):
    report = run(mixed_trace(tmp_path))
    document = report.to_dict()
    for policy in ALL:
        entry = document[policy]
        for key in (
            "placement",
            "mean_footprint_bytes",
            "peak_footprint_bytes",
            "gib_seconds",
            "waste_fraction",
            "secondary_faults",
            "hypercalls",
            "pages_bound",
            "pages_unbound",
            "overhead_ns",
        ):
            assert key in entry, (policy, key)
    assert document["hyperalloc"]["placement"] == "llfree"
    assert document["pager"]["placement"] == "buddy"
    savings = document["savings"]
    static = document["static"]["mean_footprint_bytes"]
    pager = document["pager"]["mean_footprint_bytes"]
    assert savings["pager"]["static"] == pytest.approx(1 - pager / static)
    assert savings["static"]["static"] == 0.0
    assert document["trace"]["modelled"] is True


def test_forced_placement_applies_to_every_policy(tmp_path):
    report = run(mixed_trace(tmp_path), placement="trace")
    assert {r.metrics["placement"] for r in report.runs.values()} == {"trace"}


def test_op_stream_order_and_2mib_runs(tmp_path):
    report = run(mixed_trace(tmp_path), policies=["thp", "hyperalloc", "fpr", "pager"])
    for run_ in report.runs.values():
        ops = run_.ops
        assert np.all(np.diff(ops.ts_ns) >= 0)
        huge = np.isin(
            ops.op, [opcodes.FAULT_2M, opcodes.INSTALL_2M, opcodes.RECLAIM_2M]
        )
        assert np.all(ops.pfn[huge] % opcodes.HUGE_PAGES == 0)
        assert np.all(ops.nr_pages[huge] % opcodes.HUGE_PAGES == 0)
        assert np.all(ops.pfn + ops.nr_pages <= ops.nr_guest_pages)


def test_pager_calls_precede_their_binds(tmp_path):
    report = run(mixed_trace(tmp_path), policies=["pager"])
    rows = list(report.runs["pager"].ops)
    for i, (ts, op, _pfn, _nr, _arg) in enumerate(rows):
        if op == "BIND":
            # Walk back to the CALL that carries this BIND.
            j = i - 1
            while rows[j][1] == "BIND":
                j -= 1
            assert rows[j][1] == "CALL"
            assert rows[j][4] == opcodes.CALL_HYPERCALL
            assert rows[j][0] == ts


def test_overhead_counts_faults_and_calls(tmp_path):
    report = run(mixed_trace(tmp_path), policies=["static", "pager"])
    costs = costs_with()
    fault_ns = costs.get("memory.first_touch_unbound") - costs.get(
        "memory.first_touch_bound"
    )
    static = report.runs["static"].metrics
    assert static["overhead_ns"] == pytest.approx(static["secondary_faults"] * fault_ns)
    pager = report.runs["pager"].metrics
    expected = (
        pager["pager_calls"] * costs.get("memory.hypercall")
        + pager["overhead_by_class_ns"]["binds"]
        + pager["overhead_by_class_ns"]["unbinds"]
    )
    assert pager["overhead_ns"] == pytest.approx(expected)


def test_trace_without_allocator_events_is_rejected(tmp_path):
    b = TraceBuilder(name="syscalls-only")
    b.syscall(1_000, nr=39)
    trace = write(b, tmp_path, 1)
    with pytest.raises(ModelError, match="no mm_page_alloc events"):
        evaluate(trace, costs_with())


def test_guest_too_small_names_the_size_needed(tmp_path):
    b = TraceBuilder(name="big", cpu_count=1)
    for i in range(24):
        b.alloc(S + i, pfn=i * 1024, order=10)
    trace = write(b, tmp_path, 2)
    with pytest.raises(ModelError) as caught:
        evaluate(trace, costs_with(), guest_ram_bytes=16 * MIB, policies=["static"])
    message = str(caught.value)
    assert "guest of 16 MiB cannot place an order-10 allocation" in message
    assert "peaks at 96 MiB" in message
    assert "--guest-ram" in message


def test_unknown_policy_and_placement(tmp_path):
    trace = mixed_trace(tmp_path)
    with pytest.raises(ModelError, match="unknown memory policy 'swap'"):
        evaluate(trace, costs_with(), policies=["swap"])
    with pytest.raises(ModelError, match="unknown placement 'slab'"):
        evaluate(trace, costs_with(), placement="slab")


def test_double_allocation_frees_the_old_pages(tmp_path):
    # A lost free: page 0x40000 is allocated twice without a free between.
    b = TraceBuilder(name="lost-free", cpu_count=1)
    b.alloc(1 * S, pfn=0x40000)
    b.alloc(2 * S, pfn=0x40000)
    b.free(3 * S, pfn=0x40000)
    report = run(write(b, tmp_path, 4), policies=["static"])
    metrics = report.runs["static"].metrics
    assert metrics["double_alloc_pages"] == 1
    assert metrics["stream_errors"] == 0
    assert metrics["peak_allocated_bytes"] == opcodes.PAGE_SIZE


def test_pager_sweep_trades_waste_for_calls(tmp_path):
    from paracell.models.memory.sweep import pager_sweep

    b = TraceBuilder(name="sweep", cpu_count=1)
    for k in range(50):
        t = S + k * 20_000_000
        for i in range(16):
            b.alloc(t, pfn=0x40000 + i)
        for i in range(16):
            b.free(t + 10_000_000, pfn=0x40000 + i)
    events = AllocatorEvents.from_trace(write(b, tmp_path, 3))
    points = pager_sweep(
        events,
        costs_with(),
        unbind_batches=[64],
        delays_ns=[0, 50_000_000],
        reserves=[0],
        placement="trace",
    )
    by_delay = {
        p.unbind_delay_ns: p for p in points if p.unbind_batch == 64 and p.reserve == 0
    }
    eager, lazy = by_delay[0], by_delay[50_000_000]
    assert eager.waste_fraction == 0.0
    assert lazy.waste_fraction > 0.0
    # Unbinding at once costs a bind and an unbind call per free and reuse.
    assert eager.hypercalls > lazy.hypercalls
    assert sum(p.is_default for p in points) == 1
