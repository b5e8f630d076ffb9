"""Every memory policy on hand-built traces, against results computed by hand.

The scenarios run with the settings in ``memory_support.SCENARIO_COSTS``
(256 MiB guest, one vCPU, balloon headroom 0, DAMON min_age 2 s) and the
default Pager (bind at refills, unbind delay 100 ms, reserve 256 pages,
unbind batch 64). Expected footprints are integrals in page x seconds over
the whole trace; the comment above each case derives them.
"""

from __future__ import annotations

import pytest

from memory_support import S, ns_per_balloon_page, page_seconds, run, write
from paracell.trace.builder import TraceBuilder

# Captured pfns sit in a 4 MiB block of their own, so their offset in the
# compacted trace placement is the offset in the block.
BLOCK = 0x1000


def burst_trace(tmp_path):
    """64 pages allocated at 1 s and freed at 3 s; the trace ends at 10 s."""
    b = TraceBuilder(name="burst", cpu_count=1)
    for i in range(64):
        b.alloc(1 * S, pfn=BLOCK + i)
    for i in range(64):
        b.free(3 * S, pfn=BLOCK + i)
    return write(b, tmp_path, 10)


def churn_trace(tmp_path):
    """The same 8 pages allocated every 10 ms and freed 5 ms later, 100 times from 1 s."""
    b = TraceBuilder(name="churn", cpu_count=1)
    for k in range(100):
        t = 1 * S + k * 10_000_000
        for i in range(8):
            b.alloc(t, pfn=BLOCK + i)
        for i in range(8):
            b.free(t + 5_000_000, pfn=BLOCK + i)
    return write(b, tmp_path, 10)


def one_page_left_trace(tmp_path):
    """A 2 MiB frame filled at 1 s; all but its first page freed at 2 s."""
    b = TraceBuilder(name="one-page-left", cpu_count=1)
    for i in range(512):
        b.alloc(1 * S, pfn=BLOCK + i)
    for i in range(1, 512):
        b.free(2 * S, pfn=BLOCK + i)
    return write(b, tmp_path, 10)


def reuse_trace(tmp_path):
    """A 4 MiB block freed at 2 s and allocated again at 3 s, before a report at 4 s."""
    b = TraceBuilder(name="reuse", cpu_count=1)
    b.alloc(1 * S, pfn=BLOCK, order=10)
    b.free(2 * S, pfn=BLOCK, order=10)
    b.alloc(3 * S, pfn=BLOCK, order=10)
    b.free(8 * S, pfn=BLOCK, order=10)
    return write(b, tmp_path, 20)


def check(metrics, duration_s, bound, allocated, **counts):
    assert page_seconds(metrics, duration_s) == pytest.approx(bound, rel=1e-9)
    waste = 1 - allocated / bound
    assert metrics["waste_fraction"] == pytest.approx(waste, rel=1e-9, abs=1e-12)
    for name, value in counts.items():
        assert metrics[name] == value, name


# Burst on the trace placement: 64 pages, allocated 2 s (128 page-s).
# static keeps them to the end: 64 x 9. thp binds frame 0: 512 x 9.
# fpr: the frame is free at 3 s, reported at 5 s: 64 x 4. balloon inflates
# over them at the 4 s tick: 64 x 3. damon finds the region idle for 2 s at
# the 5.0 s aggregation: 64 x 4. hyperalloc reclaims frame 0 at the 5 s
# period: 512 x 4. pager binds per allocation (64 calls) and unbinds all
# 64 at 3.1 s when the delay expires (1 call): 64 x 2.1.
BURST_TRACE_PLACEMENT = {
    "static": (64 * 9, {"secondary_faults": 64, "hypercalls": 0}),
    "thp": (512 * 9, {"secondary_faults": 0, "faults_2m": 1}),
    "fpr": (64 * 4, {"secondary_faults": 64, "reports": 1, "hypercalls": 1}),
    "balloon": (64 * 3, {"secondary_faults": 64, "hypercalls": 1}),
    "damon": (64 * 4, {"secondary_faults": 64, "pages_unbound": 64}),
    "hyperalloc": (512 * 4, {"installs_2m": 1, "reclaims_2m": 1, "hypercalls": 1}),
    "pager": (64 * 2.1, {"secondary_faults": 0, "hypercalls": 65}),
}


@pytest.mark.parametrize("policy", sorted(BURST_TRACE_PLACEMENT))
def test_burst_trace_placement(tmp_path, policy):
    bound, counts = BURST_TRACE_PLACEMENT[policy]
    report = run(burst_trace(tmp_path), placement="trace", policies=[policy])
    check(report.runs[policy].metrics, 10, bound, 64 * 2, **counts)


# Burst on the default placements. The buddy refills the per-CPU list with
# 15 pages at a time (pages 0-74 over five refills), so the burst lands on
# pages 0-63 of frame 0 and 11 refilled pages stay on the list.
# fpr: the freed pages sit on the per-CPU list (75 < high 640) and are never
# reported, so it keeps 64 x 9 like static. pager binds each refill (5
# calls), unbinds the 11 unused pages at 1.1 s (1 call) and the burst at
# 3.1 s (1 call): 75 x 0.1 + 64 x 2.0. hyperalloc on LLFree fills frame 0
# from page 0 as on the trace placement.
BURST_DEFAULT_PLACEMENT = {
    "static": (64 * 9, 64 * 2, {"secondary_faults": 64}),
    "thp": (512 * 9, 64 * 2, {"faults_2m": 1}),
    "fpr": (64 * 9, 64 * 2, {"secondary_faults": 64, "reports": 0}),
    "damon": (64 * 4, 64 * 2, {"pages_unbound": 64}),
    "hyperalloc": (512 * 4, 64 * 2, {"installs_2m": 1, "reclaims_2m": 1}),
    "pager": (75 * 0.1 + 64 * 2.0, 64 * 2, {"secondary_faults": 0, "hypercalls": 7}),
}


@pytest.mark.parametrize("policy", sorted(BURST_DEFAULT_PLACEMENT))
def test_burst_default_placement(tmp_path, policy):
    bound, allocated, counts = BURST_DEFAULT_PLACEMENT[policy]
    report = run(burst_trace(tmp_path), policies=[policy])
    metrics = report.runs[policy].metrics
    assert metrics["placement"] == ("llfree" if policy == "hyperalloc" else "buddy")
    check(metrics, 10, bound, allocated, **counts)


# Churn on the trace placement: 8 pages allocated for 100 x 5 ms (4 page-s).
# fpr: the first free schedules a pass at 3.005 s, which reports frame 0:
# 8 x 2.005. balloon: the 2 s tick finds nothing allocated and inflates over
# the 8 pages: 8 x 1. damon: idle since 1.995 s, reclaimed at 4.0 s: 8 x 3.
# pager: the pages are reused within 5 ms, well inside the 100 ms delay, so
# it binds once (8 calls) and unbinds once at 2.095 s: 8 x 1.095.
CHURN = {
    "static": (8 * 9, {"secondary_faults": 8}),
    "thp": (512 * 9, {"faults_2m": 1}),
    "fpr": (8 * 2.005, {"reports": 1, "secondary_faults": 8}),
    "balloon": (8 * 1, {"hypercalls": 1, "secondary_faults": 8}),
    "damon": (8 * 3, {"pages_unbound": 8}),
    "hyperalloc": (512 * 4, {"installs_2m": 1, "reclaims_2m": 1}),
    "pager": (8 * 1.095, {"hypercalls": 9, "secondary_faults": 0, "pages_bound": 8}),
}


@pytest.mark.parametrize("policy", sorted(CHURN))
def test_churn_same_pages(tmp_path, policy):
    bound, counts = CHURN[policy]
    report = run(churn_trace(tmp_path), placement="trace", policies=[policy])
    check(report.runs[policy].metrics, 10, bound, 8 * 0.5, **counts)


def _one_page_left_balloon():
    # The 3 s tick targets 1023 pages; two requests of 256 and 255 pages,
    # delta apart, take the 511 freed pages.
    delta = int(256 * ns_per_balloon_page()) / S
    return 512 * 2 + 256 * delta + 1 * (7 - delta)


# One page left in frame 0 (trace placement); allocated 512 x 1 + 1 x 8.
# The 2 MiB policies cannot give the frame back, and fpr and damon see no
# free frame or idle region. pager: 511 frees pass reserve + batch (320)
# three times, unbinding 64 pages each time, and the delay unbinds the other
# 319 at 2.1 s: 512 x 1 + 320 x 0.1 + 1 x 7.9, in 512 + 3 + 1 calls.
ONE_PAGE_LEFT = {
    "static": (512 * 9, {"secondary_faults": 512}),
    "thp": (512 * 9, {"faults_2m": 1}),
    "fpr": (512 * 9, {"reports": 0}),
    "damon": (512 * 9, {"pages_unbound": 0}),
    "hyperalloc": (512 * 9, {"installs_2m": 1, "reclaims_2m": 0}),
    "balloon": (_one_page_left_balloon(), {"hypercalls": 2, "pages_unbound": 511}),
    "pager": (512 + 320 * 0.1 + 7.9, {"hypercalls": 516, "pages_unbound": 511}),
}


@pytest.mark.parametrize("policy", sorted(ONE_PAGE_LEFT))
def test_frame_with_one_page_left(tmp_path, policy):
    bound, counts = ONE_PAGE_LEFT[policy]
    report = run(one_page_left_trace(tmp_path), placement="trace", policies=[policy])
    check(report.runs[policy].metrics, 10, bound, 512 + 8, **counts)


def _reuse_balloon():
    # The 3 s tick inflates 256 pages just before the reallocation takes them
    # back (256 more faults); the 9 s tick inflates 4 x 256 pages delta apart.
    delta = int(256 * ns_per_balloon_page()) / S
    return 1024 * 8 + (768 + 512 + 256) * delta


# Reuse before the report delay (trace placement); allocated 1024 x 6.
# fpr: the 2 s free schedules a pass at 4 s, when the block is in use again,
# so only the 8 s free leads to a report, at 10 s: 1024 x 9. hyperalloc's
# 5 s period sees the block in use and reclaims it at 10 s. pager: each free
# unbinds 768 pages at once (1024 > 320) and 256 after 100 ms:
# 1024 x 6 + 2 x 256 x 0.1 in 6 calls.
REUSE = {
    "static": (1024 * 19, {"secondary_faults": 1024}),
    "thp": (1024 * 19, {"faults_2m": 2}),
    "fpr": (1024 * 9, {"reports": 1, "secondary_faults": 1024}),
    "damon": (1024 * 9, {"pages_unbound": 1024}),
    "hyperalloc": (1024 * 9, {"installs_2m": 2, "reclaims_2m": 2}),
    "balloon": (_reuse_balloon(), {"hypercalls": 5, "secondary_faults": 1280}),
    "pager": (1024 * 6 + 2 * 256 * 0.1, {"hypercalls": 6, "secondary_faults": 0}),
}


@pytest.mark.parametrize("policy", sorted(REUSE))
def test_reuse_before_report_delay(tmp_path, policy):
    bound, counts = REUSE[policy]
    report = run(reuse_trace(tmp_path), placement="trace", policies=[policy])
    check(report.runs[policy].metrics, 20, bound, 1024 * 6, **counts)


@pytest.mark.parametrize("policy", ["static", "fpr", "pager"])
def test_reuse_on_buddy_gets_same_block(tmp_path, policy):
    # The buddy hands the freed block out again from the head of the order-10
    # list, so the numbers match the trace placement.
    bound, counts = REUSE[policy]
    report = run(reuse_trace(tmp_path), policies=[policy])
    check(report.runs[policy].metrics, 20, bound, 1024 * 6, **counts)


def test_pager_without_delay_or_reserve_has_no_waste(tmp_path):
    report = run(
        reuse_trace(tmp_path),
        overrides={"memory.pager.unbind_delay": 0, "memory.pager.reserve": 0},
        policies=["pager"],
    )
    metrics = report.runs["pager"].metrics
    check(metrics, 20, 1024 * 6, 1024 * 6, secondary_faults=0, hypercalls=4)
