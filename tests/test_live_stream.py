"""Op streams built by hand, executed and checked against mincore, smaps and faults."""

from __future__ import annotations

import time

import numpy as np
import pytest

from paracell.errors import LiveError
from paracell.live import kernel
from paracell.live.kernel import PAGE_SIZE
from paracell.live.region import GuestRegion
from paracell.live.stream import (
    LiveLimits,
    LiveOptions,
    execute_stream,
    stream_page_range,
    stream_uses_huge_pages,
)
from paracell.models.memory import ops as o

MS = 1_000_000
LIMITS = LiveLimits(max_rss_bytes=256 << 20, min_available_bytes=0)
FIRST_PFN = 1024  # the stream's frames start here, not at 0
NR_PAGES = 2048


def stream(
    rows: list[tuple[int, int, int, int]], nr_guest_pages: int = 4096
) -> o.OpStream:
    """Build an OpStream from ``(ts_ns, op, pfn, nr_pages)`` rows."""
    return o.OpStream(
        ts_ns=np.array([r[0] for r in rows], dtype=np.int64),
        op=np.array([r[1] for r in rows], dtype=np.uint8),
        pfn=np.array([r[2] for r in rows], dtype=np.int64),
        nr_pages=np.array([r[3] for r in rows], dtype=np.int64),
        arg=np.zeros(len(rows), dtype=np.int32),
        nr_guest_pages=nr_guest_pages,
    )


# Resident pages after each step of MIXED (from FIRST_PFN):
#   0 ms  TOUCH 0-399           -> 400 (400 faults)
#  10 ms  FREE 0-99             -> 400 (nothing on the host)
#  20 ms  UNBIND 0-99           -> 300
#  30 ms  CALL, BIND 1000-1499  -> 800 (populated, no trap)
#  40 ms  TOUCH 1000-1199       -> 800 (bound: no fault)
#  50 ms  TOUCH 50-149          -> 850 (50 faults on the unbound 50-99)
#  60 ms  UNBIND 1200-1499      -> 550
#  end at 100 ms
MIXED = [
    (0, o.TOUCH, FIRST_PFN, 400),
    (10 * MS, o.FREE, FIRST_PFN, 100),
    (20 * MS, o.UNBIND, FIRST_PFN, 100),
    (30 * MS, o.CALL, FIRST_PFN + 1000, 500),
    (30 * MS, o.BIND, FIRST_PFN + 1000, 500),
    (40 * MS, o.TOUCH, FIRST_PFN + 1000, 200),
    (50 * MS, o.TOUCH, FIRST_PFN + 50, 100),
    (60 * MS, o.UNBIND, FIRST_PFN + 1200, 300),
]
MIXED_STEPS = [(0, 400), (20, 300), (30, 800), (50, 850), (60, 550)]  # (ms, pages)
END_NS = 100 * MS


def _mean_pages(steps: list[tuple[int, int]], end_ms: int) -> float:
    total = 0.0
    for (t, pages), (t_next, _) in zip(steps, [*steps[1:], (end_ms, 0)], strict=True):
        total += pages * (t_next - t)
    return total / end_ms


def test_page_range_is_frame_aligned():
    first, end = stream_page_range(stream(MIXED))
    assert first == FIRST_PFN // 512 * 512
    assert end == 2048 + 512
    assert first % 512 == 0


def test_mixed_stream_resident_and_faults():
    s = stream(MIXED)
    with GuestRegion(NR_PAGES, first_pfn=FIRST_PFN) as region:
        dry = execute_stream(
            s, 0, END_NS, region, LIMITS, LiveOptions(sample_ns=10 * MS), dry=True
        )
    with GuestRegion(NR_PAGES, first_pfn=FIRST_PFN) as region:
        m = execute_stream(s, 0, END_NS, region, LIMITS, LiveOptions(sample_ns=10 * MS))
        usage = kernel.smaps_usage(region.addr)
    assert m.final_resident_bytes == 550 * PAGE_SIZE
    assert usage is not None
    assert usage.rss_bytes == 550 * PAGE_SIZE
    assert m.final_smaps_rss_bytes == 550 * PAGE_SIZE
    assert m.peak_resident_bytes == 850 * PAGE_SIZE
    assert m.mean_resident_bytes == pytest.approx(
        _mean_pages(MIXED_STEPS, 100) * PAGE_SIZE
    )
    assert m.max_drift_pages == 0
    # Samples every 10 ms from 0 to 100 ms see the state after the ops at that time.
    expected = [400, 400, 300, 800, 800, 850, 550, 550, 550, 550, 550]
    assert list(m.sample_resident_bytes // PAGE_SIZE) == expected
    assert list(m.sample_ts_ns) == [k * 10 * MS for k in range(11)]
    assert m.trap_faults is not None and dry.trap_faults is not None
    assert abs(m.trap_faults - dry.trap_faults - 450) <= 8
    # getrusage also counts the 500 pages MADV_POPULATE_WRITE faulted in.
    assert abs(m.rusage_faults - dry.rusage_faults - 950) <= 8


def test_mixed_stream_timing_classes():
    with GuestRegion(NR_PAGES, first_pfn=FIRST_PFN) as region:
        m = execute_stream(stream(MIXED), 0, END_NS, region, LIMITS)
    t = m.timing
    assert (t["touch_fault"].ops, t["touch_fault"].pages) == (2, 500)
    assert t["touch_fault"].missing_pages == 450
    assert (t["touch_resident"].ops, t["touch_resident"].pages) == (1, 200)
    assert (t["bind"].ops, t["bind"].pages, t["bind"].missing_pages) == (1, 500, 500)
    assert (t["unbind"].ops, t["unbind"].pages) == (2, 400)
    assert t["fault_2m"].ops == 0
    assert m.calls == 1
    for name in ("touch_fault", "touch_resident", "bind", "unbind"):
        assert t[name].ns > 0
    assert list(m.op_ns[[1, 3]]) == [-1, -1]  # FREE and CALL run nothing on the host


def test_dry_run_leaves_region_empty():
    with GuestRegion(NR_PAGES, first_pfn=FIRST_PFN) as region:
        m = execute_stream(stream(MIXED), 0, END_NS, region, LIMITS, dry=True)
    assert m.peak_resident_bytes == 0
    assert m.mean_resident_bytes == 0
    # Nothing became resident, so every touched page counts as not resident.
    assert m.timing["touch_fault"].missing_pages == 400 + 200 + 100


def test_huge_frame_ops():
    if kernel.thp_enabled_mode() not in ("always", "madvise"):
        pytest.skip("transparent huge pages are disabled on this host")
    s = stream(
        [
            (0, o.INSTALL_2M, 0, 1024),
            (1 * MS, o.TOUCH, 10, 5),
            (2 * MS, o.FAULT_2M, 1024, 512),
            (3 * MS, o.TOUCH, 1030, 3),
            (4 * MS, o.RECLAIM_2M, 0, 512),
        ],
        nr_guest_pages=2048,
    )
    assert stream_uses_huge_pages(s)
    with GuestRegion(2048, huge=True) as region:
        m = execute_stream(s, 0, 5 * MS, region, LIMITS, LiveOptions(sample_ns=1 * MS))
    resident = list(m.sample_resident_bytes // PAGE_SIZE)
    assert resident == [1024, 1024, 1536, 1536, 1024, 1024]
    assert m.sample_anon_huge_bytes.max() > 0
    assert m.timing["touch_fault"].ops == 0  # every touch landed in a bound frame
    assert m.timing["fault_2m"].missing_pages == 512


def test_rss_limit_stops_replay():
    s = stream([(0, o.TOUCH, 0, 200), (1 * MS, o.TOUCH, 200, 400)])
    limits = LiveLimits(max_rss_bytes=300 * PAGE_SIZE, min_available_bytes=0)
    with GuestRegion(1024) as region, pytest.raises(LiveError, match="above the limit"):
        execute_stream(s, 0, 2 * MS, region, limits)


def test_mem_available_limit_stops_replay():
    s = stream([(0, o.TOUCH, 0, 10)])
    limits = LiveLimits(max_rss_bytes=1 << 30, min_available_bytes=1 << 60)
    with (
        GuestRegion(512) as region,
        pytest.raises(LiveError, match="MemAvailable dropped"),
    ):
        execute_stream(s, 0, 1 * MS, region, limits)


def test_stream_outside_region_rejected():
    s = stream([(0, o.TOUCH, 100, 10)])
    with (
        GuestRegion(512, first_pfn=512) as region,
        pytest.raises(LiveError, match="outside"),
    ):
        execute_stream(s, 0, 1 * MS, region, LIMITS)


def test_ops_after_trace_end_rejected():
    s = stream([(0, o.TOUCH, 0, 1), (5 * MS, o.TOUCH, 1, 1)])
    with GuestRegion(512) as region, pytest.raises(LiveError, match="after the end"):
        execute_stream(s, 0, 2 * MS, region, LIMITS)


def test_speed_keeps_trace_time():
    # 300 ms of trace at speed 1 cannot finish in less wall time (sleep never
    # returns early); the bound is loose on purpose.
    s = stream(
        [(0, o.TOUCH, 0, 1), (150 * MS, o.TOUCH, 1, 1), (300 * MS, o.TOUCH, 2, 1)]
    )
    with GuestRegion(512) as region:
        start = time.monotonic()
        m = execute_stream(
            s, 0, 300 * MS, region, LIMITS, LiveOptions(speed=1.0, sample_ns=50 * MS)
        )
        elapsed = time.monotonic() - start
    assert elapsed >= 0.29
    assert m.final_resident_bytes == 3 * PAGE_SIZE


def test_invalid_options_rejected():
    with pytest.raises(LiveError, match="--speed"):
        LiveOptions(speed=0)
    with pytest.raises(LiveError, match="--sample-ms"):
        LiveOptions(sample_ns=0)
