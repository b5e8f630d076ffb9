"""The kernel interfaces of the live replay, checked against the kernel itself.

The fault-counting tests verify on the running kernel that page faults taken
by get_user_pages (MADV_POPULATE_WRITE) are counted in getrusage's min_flt
but not by the perf software counter of minor faults, which counts only
faults that come with trapping registers.
"""

from __future__ import annotations

import numpy as np
import pytest

from paracell.errors import LiveError
from paracell.live import executor as ex
from paracell.live import kernel
from paracell.live.kernel import PAGE_SIZE
from paracell.live.region import GuestRegion

NR_PAGES = 2048  # 8 MiB


def _trap_counter() -> kernel.TrapFaultCounter:
    try:
        return kernel.TrapFaultCounter()
    except LiveError as exc:
        pytest.skip(f"perf_event_open is not allowed here: {exc}")


def _clock() -> np.ndarray:
    return np.zeros(2, dtype=np.int64)


def test_populate_write_supported():
    # Raises LiveError on kernels before 5.14; this project's machines run 6.x.
    kernel.check_populate_write()


def test_touch_faults_counted_by_both():
    with _trap_counter() as counter, GuestRegion(NR_PAGES) as region:
        ex.touch_pages(region.mem, 0, 1, _clock(), kernel.CLOCK_MONOTONIC)  # compile
        kernel.madvise(region.addr, region.sz_bytes, kernel.MADV_DONTNEED)
        trap0, rusage0 = counter.read(), kernel.thread_minor_faults()
        ex.touch_pages(region.mem, 0, NR_PAGES, _clock(), kernel.CLOCK_MONOTONIC)
        traps = counter.read() - trap0
        rusage = kernel.thread_minor_faults() - rusage0
    # A few faults of the interpreter may land in the window, never fewer.
    assert NR_PAGES <= traps <= NR_PAGES + 16
    assert NR_PAGES <= rusage <= NR_PAGES + 16


def test_populate_faults_only_in_rusage():
    with _trap_counter() as counter, GuestRegion(NR_PAGES) as region:
        kernel.madvise(region.addr, PAGE_SIZE, kernel.MADV_POPULATE_WRITE)
        kernel.madvise(region.addr, PAGE_SIZE, kernel.MADV_DONTNEED)
        trap0, rusage0 = counter.read(), kernel.thread_minor_faults()
        kernel.madvise(region.addr, region.sz_bytes, kernel.MADV_POPULATE_WRITE)
        traps = counter.read() - trap0
        rusage = kernel.thread_minor_faults() - rusage0
        resident = ex.count_resident(
            region.addr, NR_PAGES, np.zeros(NR_PAGES, np.uint8)
        )
    assert resident == NR_PAGES
    # get_user_pages faults in every page: one min_flt each, no trap.
    assert NR_PAGES <= rusage <= NR_PAGES + 16
    assert traps <= 16


def test_second_touch_takes_no_fault():
    with _trap_counter() as counter, GuestRegion(NR_PAGES) as region:
        ex.touch_pages(region.mem, 0, NR_PAGES, _clock(), kernel.CLOCK_MONOTONIC)
        trap0 = counter.read()
        ex.touch_pages(region.mem, 0, NR_PAGES, _clock(), kernel.CLOCK_MONOTONIC)
        assert counter.read() - trap0 <= 16


def test_mincore_matches_smaps_rss():
    vec = np.zeros(NR_PAGES, dtype=np.uint8)
    with GuestRegion(NR_PAGES) as region:
        assert ex.count_resident(region.addr, NR_PAGES, vec) == 0
        ex.touch_pages(region.mem, 0, 300, _clock(), kernel.CLOCK_MONOTONIC)
        kernel.madvise(
            region.page_addr(1000), 200 * PAGE_SIZE, kernel.MADV_POPULATE_WRITE
        )
        kernel.madvise(region.page_addr(100), 50 * PAGE_SIZE, kernel.MADV_DONTNEED)
        resident = ex.count_resident(region.addr, NR_PAGES, vec)
        usage = kernel.smaps_usage(region.addr)
    assert resident == 300 + 200 - 50
    assert usage is not None
    assert usage.size_bytes == NR_PAGES * PAGE_SIZE
    assert usage.rss_bytes == resident * PAGE_SIZE


def test_smaps_usage_unknown_address():
    assert kernel.smaps_usage(0x1000) is None


def test_meminfo_has_available():
    info = kernel.read_meminfo()
    assert info["MemTotal"] > 0
    assert 0 < kernel.mem_available_bytes() <= info["MemTotal"]


def test_thp_mode_is_known():
    assert kernel.thp_enabled_mode() in ("always", "madvise", "never", "unavailable")


def test_syscall_number_getppid():
    import os
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"no system call table for {platform.machine()}")
    number = kernel.syscall_number("getppid")
    assert kernel.libc_syscall0(number) == os.getppid()


def test_madvise_error_names_errno():
    with pytest.raises(LiveError, match="EINVAL"):
        kernel.madvise(0x1001, PAGE_SIZE, kernel.MADV_DONTNEED)  # unaligned address


def test_smaps_reader_grows_its_buffer():
    # /proc/self/smaps of this process is far larger than 4 KiB.
    reader = kernel.SmapsReader(sz_bytes=4096)
    with GuestRegion(64) as region:
        ex.touch_pages(region.mem, 0, 10, _clock(), kernel.CLOCK_MONOTONIC)
        usage = reader.usage(region.addr)
        again = reader.usage(region.addr)
    assert usage is not None
    assert usage.rss_bytes == 10 * PAGE_SIZE
    assert again == usage
    assert reader.usage(0x1000) is None
