"""A private anonymous memory region that the live replay uses as guest RAM.

Page ``i`` of the region is modelled guest page frame ``first_pfn + i``. The
region starts on a 2 MiB boundary so that 2 MiB guest frames line up with
host huge pages. Every region is unmapped by ``close()``, by leaving its
``with`` block (also on an exception) and, for a region still open when the
interpreter exits, by an atexit hook.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import numpy as np

from paracell.errors import LiveError
from paracell.live import kernel
from paracell.live.kernel import HUGE_PAGE_SIZE, PAGE_SIZE

log = logging.getLogger("paracell.live")

_open_regions: dict[int, GuestRegion] = {}


class GuestRegion:
    """``nr_pages`` 4 KiB pages of anonymous memory, 2 MiB aligned.

    ``huge`` selects MADV_HUGEPAGE (the host backs guest memory with 2 MiB
    pages where it can) instead of MADV_NOHUGEPAGE (4 KiB pages only).
    ``mem`` is a numpy view of the region for the compiled touch loops; it
    must not be used after ``close()``.
    """

    def __init__(self, nr_pages: int, first_pfn: int = 0, huge: bool = False) -> None:
        if nr_pages <= 0:
            raise LiveError(f"a region needs at least one page, not {nr_pages}")
        self.nr_pages = int(nr_pages)
        self.first_pfn = int(first_pfn)
        self.huge = huge
        self.sz_bytes = self.nr_pages * PAGE_SIZE
        self.addr = 0
        self._view: np.ndarray | None = None
        self._map_aligned()
        _open_regions[self.addr] = self
        try:
            advice = kernel.MADV_HUGEPAGE if huge else kernel.MADV_NOHUGEPAGE
            kernel.madvise(self.addr, self.sz_bytes, advice)
            buffer = (ctypes.c_uint8 * self.sz_bytes).from_address(self.addr)
            self._view = np.ctypeslib.as_array(buffer)
        except BaseException:
            self.close()
            raise
        log.info(
            "mapped %d MiB at %#x for guest pfns %d-%d (%s pages)",
            self.sz_bytes >> 20,
            self.addr,
            self.first_pfn,
            self.first_pfn + self.nr_pages - 1,
            "2 MiB" if huge else "4 KiB",
        )

    def _map_aligned(self) -> None:
        # Map one huge page more than needed, then unmap the unaligned head
        # and the rest of the tail, so the region starts on a 2 MiB boundary.
        padded = self.sz_bytes + HUGE_PAGE_SIZE
        raw = kernel.mmap_anonymous(padded)
        start = (raw + HUGE_PAGE_SIZE - 1) & ~(HUGE_PAGE_SIZE - 1)
        head = start - raw
        tail = padded - head - self.sz_bytes
        if head:
            kernel.munmap(raw, head)
        if tail:
            kernel.munmap(start + self.sz_bytes, tail)
        self.addr = start

    @property
    def mem(self) -> np.ndarray:
        if self._view is None:
            raise LiveError("the region is already unmapped")
        return self._view

    @property
    def is_open(self) -> bool:
        return self.addr in _open_regions

    def page_addr(self, index: int) -> int:
        return self.addr + index * PAGE_SIZE

    def close(self) -> None:
        """Unmap the region; calling it again does nothing."""
        if _open_regions.pop(self.addr, None) is None:
            return
        self._view = None
        kernel.munmap(self.addr, self.sz_bytes)
        log.info("unmapped %d MiB at %#x", self.sz_bytes >> 20, self.addr)

    def __enter__(self) -> GuestRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_region_count() -> int:
    """Return how many regions of this process are still mapped."""
    return len(_open_regions)


@atexit.register
def _unmap_all() -> None:
    for region in list(_open_regions.values()):
        region.close()


class LiveTerminated(LiveError):
    """The live replay stopped on SIGTERM or SIGHUP; its region is unmapped by then."""

    exit_status = 143  # 128 + SIGTERM, as a shell reports a process killed by it


# Signals received inside signals_raise(), oldest first.
_pending_signals: list[int] = []


def check_signals() -> None:
    """Raise LiveTerminated if SIGTERM or SIGHUP arrived inside ``signals_raise()``.

    The replay calls this between chunks of operations and while it sleeps.
    """
    if _pending_signals:
        name = signal.Signals(_pending_signals[0]).name
        raise LiveTerminated(f"stopped by {name}; the memory region is unmapped")


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into a LiveTerminated exception inside the block.

    The handler only records the signal; ``check_signals()`` raises at the
    next safe point, and leaving the block raises if no check did. Raising
    from the handler itself could land inside code that catches every
    exception (the logging module does, while it writes a record) and be
    lost. The exception unwinds through the ``finally`` blocks that unmap
    regions, which the default action (ending the process at once) would
    skip. Only the main thread can set signal handlers; elsewhere the block
    runs with the handlers unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _record(signum: int, frame: FrameType | None) -> None:
        _pending_signals.append(signum)

    _pending_signals.clear()
    previous = {
        sig: signal.signal(sig, _record) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
        check_signals()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending_signals.clear()
