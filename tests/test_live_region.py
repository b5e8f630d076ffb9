"""The guest region: alignment, transparent huge page advice and unmapping."""

from __future__ import annotations

import numpy as np
import pytest

from paracell.errors import LiveError
from paracell.live import executor as ex
from paracell.live import kernel
from paracell.live.kernel import HUGE_PAGE_SIZE, PAGE_SIZE
from paracell.live.region import GuestRegion, open_region_count


def _mapped(addr: int) -> bool:
    return any(lo <= addr < hi for lo, hi in kernel.mapped_ranges())


def test_region_is_aligned_and_unmapped_on_close():
    region = GuestRegion(1000, first_pfn=512)
    addr = region.addr
    assert addr % HUGE_PAGE_SIZE == 0
    assert region.sz_bytes == 1000 * PAGE_SIZE
    assert _mapped(addr)
    assert _mapped(addr + region.sz_bytes - 1)
    region.close()
    assert not _mapped(addr)
    assert not region.is_open
    region.close()  # a second close does nothing


def test_region_padding_is_unmapped():
    # The 2 MiB of padding used for alignment must not stay mapped beside it.
    before = kernel.mapped_ranges()
    with GuestRegion(512) as region:
        during = kernel.mapped_ranges()
        added = [r for r in during if r not in before]
        covering = [r for r in added if r[0] <= region.addr < r[1]]
        assert covering == [(region.addr, region.addr + region.sz_bytes)]
    end = region.addr + region.sz_bytes
    assert not [r for r in kernel.mapped_ranges() if r[0] < end and region.addr < r[1]]


def test_region_unmapped_on_exception():
    count = open_region_count()
    with pytest.raises(RuntimeError), GuestRegion(64) as region:
        addr = region.addr
        raise RuntimeError("boom")
    assert not _mapped(addr)
    assert open_region_count() == count


def test_mem_view_rejected_after_close():
    region = GuestRegion(8)
    region.close()
    with pytest.raises(LiveError, match="unmapped"):
        region.mem  # noqa: B018


def test_empty_region_rejected():
    with pytest.raises(LiveError, match="at least one page"):
        GuestRegion(0)


def test_small_pages_region_has_no_huge_pages():
    with GuestRegion(4 * 512) as region:
        ex.touch_pages(
            region.mem,
            0,
            region.nr_pages,
            np.zeros(2, np.int64),
            kernel.CLOCK_MONOTONIC,
        )
        usage = kernel.smaps_usage(region.addr)
    assert usage is not None
    assert usage.rss_bytes == 4 * HUGE_PAGE_SIZE
    assert usage.anon_huge_bytes == 0


def test_huge_region_gets_huge_pages():
    if kernel.thp_enabled_mode() not in ("always", "madvise"):
        pytest.skip("transparent huge pages are disabled on this host")
    with GuestRegion(4 * 512, huge=True) as region:
        for frame in range(4):
            ex.touch_pages(
                region.mem,
                frame * 512,
                1,
                np.zeros(2, np.int64),
                kernel.CLOCK_MONOTONIC,
            )
        usage = kernel.smaps_usage(region.addr)
    assert usage is not None
    assert usage.thp_eligible
    # One write per frame made whole frames resident. The kernel may fall
    # back to 4 KiB pages for a frame when no huge page is free.
    assert usage.anon_huge_bytes > 0
    assert usage.rss_bytes >= usage.anon_huge_bytes
