"""Invariants of the memory model over random valid allocator traces (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_support import MIB, costs_with

from paracell.models.memory import ALL, PLACEMENTS, AllocatorEvents, evaluate
from paracell.models.memory import ops as opcodes

SPACE_PAGES = 1 << 15  # captured pfns come from a 128 MiB window
MAX_LIVE_PAGES = 6000  # stays well inside the 64 MiB test guest
GUEST = {"memory.guest_ram": 64 * MIB}


@st.composite
def allocator_traces(draw):
    """A time-ordered trace: allocations at free aligned pfns, frees of live ones."""
    nr_ops = draw(st.integers(1, 60))
    nr_cpus = draw(st.integers(1, 3))
    occupied = np.zeros(SPACE_PAGES, dtype=bool)
    live: list[tuple[int, int]] = []
    alloc, free = [], []
    ts = 0
    for _ in range(nr_ops):
        ts += draw(st.sampled_from([0, 1_000, 3_000_000, 40_000_000, 1_500_000_000]))
        cpu = draw(st.integers(0, nr_cpus - 1))
        action = draw(
            st.sampled_from(
                ["alloc", "alloc", "alloc", "free", "free", "piece", "stray"]
            )
        )
        if action == "alloc" or not live:
            order = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 9, 10]))
            size = 1 << order
            if sum(1 << o for _, o in live) + size > MAX_LIVE_PAGES:
                continue
            slot = draw(st.integers(0, SPACE_PAGES // size - 1))
            pfn = slot * size
            if occupied[pfn : pfn + size].any():
                continue
            occupied[pfn : pfn + size] = True
            live.append((pfn, order))
            alloc.append((ts, pfn, order, cpu))
        elif action == "free":
            pfn, order = live.pop(draw(st.integers(0, len(live) - 1)))
            occupied[pfn : pfn + (1 << order)] = False
            free.append((ts, pfn, order, cpu))
        elif action == "piece":
            # split_page(): a higher-order allocation freed one page at a time.
            index = draw(st.integers(0, len(live) - 1))
            pfn, order = live[index]
            if order == 0:
                continue
            live.pop(index)
            for page in range(pfn, pfn + (1 << order)):
                free.append((ts, page, 0, cpu))
            occupied[pfn : pfn + (1 << order)] = False
        else:
            # A free of a page the trace never allocated is ignored.
            free.append((ts, SPACE_PAGES + draw(st.integers(0, 4096)), 0, cpu))
    end = ts + draw(st.sampled_from([0, 100_000_000, 6_000_000_000]))

    def columns(rows):
        if not rows:
            return tuple(np.zeros(0, dtype=np.int64) for _ in range(4))
        return tuple(np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))

    return AllocatorEvents.from_arrays(
        "random",
        columns(alloc),
        columns(free),
        nr_cpus=nr_cpus,
        start_ts_ns=0,
        end_ts_ns=end,
    )


PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def touched_pages(ops: opcodes.OpStream) -> int:
    pages = set()
    for _ts, op, pfn, nr, _arg in ops:
        if op in ("TOUCH", "BASE"):
            pages.update(range(pfn, pfn + nr))
    return len(pages)


@pytest.mark.parametrize("placement", PLACEMENTS)
@PROPERTY_SETTINGS
@given(events=allocator_traces())
def test_footprint_never_below_allocated(placement, events):
    report = evaluate(events, costs_with(GUEST), placement=placement)
    for policy in ALL:
        metrics = report.runs[policy].metrics
        assert metrics["unbound_allocated_pages"] == 0, policy
        assert metrics["footprint_below_allocated_points"] == 0, policy
        assert metrics["stream_errors"] == 0, policy
        timeline = report.runs[policy].timeline
        assert np.all(timeline.bound_bytes >= timeline.allocated_bytes), policy


@pytest.mark.parametrize("placement", PLACEMENTS)
@PROPERTY_SETTINGS
@given(events=allocator_traces())
def test_pager_takes_no_secondary_fault(placement, events):
    report = evaluate(
        events, costs_with(GUEST), policies=["pager"], placement=placement
    )
    assert report.runs["pager"].metrics["secondary_faults"] == 0


@pytest.mark.parametrize("placement", PLACEMENTS)
@PROPERTY_SETTINGS
@given(events=allocator_traces())
def test_static_ends_at_touched_high_water_mark(placement, events):
    report = evaluate(
        events, costs_with(GUEST), policies=["static"], placement=placement
    )
    run = report.runs["static"]
    touched = touched_pages(run.ops)
    assert run.metrics["final_footprint_bytes"] == touched * opcodes.PAGE_SIZE
    assert run.metrics["peak_footprint_bytes"] == touched * opcodes.PAGE_SIZE
    assert run.metrics["secondary_faults"] == touched


@PROPERTY_SETTINGS
@given(events=allocator_traces())
def test_static_faults_each_captured_page_once(events):
    report = evaluate(events, costs_with(GUEST), policies=["static"], placement="trace")
    allocated = set()
    for kind, pfn, order in zip(events.kind, events.pfn, events.order, strict=True):
        if kind == 2:
            allocated.update(range(int(pfn), int(pfn) + (1 << int(order))))
    assert report.runs["static"].metrics["secondary_faults"] == len(allocated)


@pytest.mark.parametrize("placement", PLACEMENTS)
@PROPERTY_SETTINGS
@given(events=allocator_traces())
def test_thp_footprint_is_whole_2mib_frames(placement, events):
    report = evaluate(events, costs_with(GUEST), policies=["thp"], placement=placement)
    bound = report.runs["thp"].timeline.bound_bytes
    assert np.all(bound % (2 * MIB) == 0)


@pytest.mark.parametrize("placement", PLACEMENTS)
@PROPERTY_SETTINGS
@given(events=allocator_traces())
def test_pager_without_delay_or_reserve_wastes_nothing(placement, events):
    costs = costs_with(
        {**GUEST, "memory.pager.unbind_delay": 0, "memory.pager.reserve": 0}
    )
    report = evaluate(events, costs, policies=["pager"], placement=placement)
    metrics = report.runs["pager"].metrics
    assert metrics["waste_fraction"] == 0.0
    assert metrics["secondary_faults"] == 0
