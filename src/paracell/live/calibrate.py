"""Calibration: fault, bind, unbind and system-call costs measured on this host.

Every measurement uses the compiled loops and libc bindings of the live
replay (:mod:`paracell.live.executor`), so a calibrated value describes the
same code path that ``paracell live`` times. Each is repeated and reported
as a median with its spread. Memory use stays under a cap because only one
region is mapped at a time, and the largest region is sized from the cap.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paracell.costs import default_costs
from paracell.errors import LiveError
from paracell.live import executor as ex
from paracell.live import kernel
from paracell.live.kernel import HUGE_PAGE_SIZE, PAGE_SIZE
from paracell.live.region import GuestRegion, check_signals, signals_raise

log = logging.getLogger("paracell.live")

_MIB = 1 << 20
HUGE_PAGES = HUGE_PAGE_SIZE // PAGE_SIZE
# Loops are timed in the thread's CPU time, so time spent preempted by other
# work on a shared machine does not count. A loop runs for milliseconds, so
# the clock's own system call (a microsecond at most) is negligible.
CPU_CLOCK = kernel.CLOCK_THREAD_CPUTIME_ID

DEFAULT_MAX_RSS_BYTES = 640 * _MIB
DEFAULT_REPEATS = 11
TOUCH_REGION_BYTES = 64 * _MIB
LARGE_BATCH_BYTES = 512 * _MIB
SMALL_BATCHES = (1, 16, 512)
HUGE_FRAMES = 16
SYSCALL_LOOP_CALLS = 10_000
# A first touch slower than this multiple of the median first touch of a
# page the outer host backs is counted as one the outer host did not back.
SLOW_TOUCH_FACTOR = 3.0
# Share of slow first touches needed before their median is written as
# memory.first_touch_unbound.
SLOW_TOUCH_MIN_SHARE = 0.01

# HERE values (this project's machines, a small C loop) that the cost table
# does not hold, for the comparison only.
HERE_SYSCALL_NS = (65.0, 70.0)
HERE_SECOND_TOUCH_NS = 30.0


@dataclass
class Measurement:
    """One calibrated quantity: its repeated values and what it maps to."""

    key: str
    description: str
    unit: str  # what one value is per, e.g. "ns per page"
    values: list[float]
    parameters: tuple[str, ...] = ()
    here_ns: tuple[float, float] | None = None  # HERE value or range, for comparison
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(np.median(self.values))

    @property
    def spread(self) -> dict[str, float]:
        values = np.asarray(self.values, dtype=np.float64)
        return {
            "min": float(values.min()),
            "p25": float(np.percentile(values, 25)),
            "p75": float(np.percentile(values, 75)),
            "max": float(values.max()),
        }

    def relative_to_here(self) -> float | None:
        if self.here_ns is None:
            return None
        low, high = self.here_ns
        if low <= self.median <= high:
            return 0.0
        reference = low if self.median < low else high
        return (self.median - reference) / reference

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "unit": self.unit,
            "median": self.median,
            **self.spread,
            "repeats": len(self.values),
            "parameters": list(self.parameters),
            "here": list(self.here_ns) if self.here_ns else None,
            "relative_to_here": self.relative_to_here(),
            **self.extra,
        }


@dataclass
class Calibration:
    """All measurements of one calibration run, and where they were taken."""

    measurements: list[Measurement]
    when: str
    kernel_release: str
    machine: str
    thp_mode: str
    repeats: int
    max_rss_bytes: int
    clock_gap_ns: float
    notes: list[str] = field(default_factory=list)

    def by_key(self) -> dict[str, Measurement]:
        return {m.key: m for m in self.measurements}

    def profile_entries(self) -> list[dict[str, Any]]:
        """Return one ``write_profile`` entry per mapped cost parameter."""
        entries = []
        for m in self.measurements:
            spread = m.spread
            for name in m.parameters:
                entries.append(
                    {
                        "name": name,
                        "value": round(m.median, 3),
                        "unit": "ns",
                        "source": "measured",
                        "note": (
                            f"{m.description}: median of {len(m.values)} repeats "
                            f"(p25-p75 {spread['p25']:.3g}-{spread['p75']:.3g} ns); "
                            f"paracell calibrate on {self.when}, "
                            f"Linux {self.kernel_release}, {self.machine}"
                        ),
                    }
                )
        return entries

    def meta(self) -> dict[str, str]:
        return {
            "description": "costs measured on this host by paracell calibrate",
            "date": self.when,
            "kernel_release": self.kernel_release,
            "machine": self.machine,
            "transparent_hugepage": self.thp_mode,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta(),
            "repeats": self.repeats,
            "max_rss_bytes": self.max_rss_bytes,
            "clock_gap_ns": self.clock_gap_ns,
            "measurements": {m.key: m.to_dict() for m in self.measurements},
            "unmapped": [m.key for m in self.measurements if not m.parameters],
            "notes": list(self.notes),
        }


def _here(name: str) -> tuple[float, float] | None:
    param = default_costs().param(name)
    if param.source != "HERE":
        return None
    return (param.value, param.value)


class _Calibrator:
    def __init__(
        self,
        repeats: int,
        max_rss_bytes: int,
        clock_gap_ns: float,
        progress: Callable[[str], None],
    ) -> None:
        self.repeats = repeats
        self.clock_gap_ns = clock_gap_ns
        self.max_rss_bytes = max_rss_bytes
        self.progress = progress
        self.clock = np.zeros(2, dtype=np.int64)
        self.notes: list[str] = []
        # The largest region must leave room for the process itself (64 MiB).
        room = max_rss_bytes - 64 * _MIB
        if room < TOUCH_REGION_BYTES:
            raise LiveError(
                f"--max-rss {max_rss_bytes / _MIB:.0f} MiB is too small; calibration "
                f"needs at least {(TOUCH_REGION_BYTES + 64 * _MIB) / _MIB:.0f} MiB"
            )
        self.large_pages = min(LARGE_BATCH_BYTES, room) // PAGE_SIZE
        if self.large_pages * PAGE_SIZE < LARGE_BATCH_BYTES:
            self.notes.append(
                f"the large batch is {self.large_pages * PAGE_SIZE / _MIB:.0f} MiB, "
                f"not {LARGE_BATCH_BYTES / _MIB:.0f} MiB, to stay under --max-rss"
            )

    def syscall(self) -> Measurement:
        self.progress("system call round trip")
        number = kernel.syscall_number("getppid")
        values = [
            ex.syscall_loop(number, SYSCALL_LOOP_CALLS, self.clock, CPU_CLOCK)
            / SYSCALL_LOOP_CALLS
            for _ in range(self.repeats)
        ]
        return Measurement(
            "syscall_getppid",
            "getppid round trip through libc syscall()",
            "ns per call",
            values,
            here_ns=HERE_SYSCALL_NS,
        )

    def touches(self) -> list[Measurement]:
        self.progress("first and second touch")
        nr_pages = TOUCH_REGION_BYTES // PAGE_SIZE
        fresh, refault, second = [], [], []
        per_page = np.full(nr_pages, 0, dtype=np.int64)
        slow_share: list[float] = []
        slow_ns: list[float] = []
        for _ in range(self.repeats):
            check_signals()
            with GuestRegion(nr_pages) as region:
                ex.touch_pages_each(region.mem, 0, nr_pages, self.clock, per_page)
                # Each per-page time includes one clock read; take it out.
                fresh_each = per_page - self.clock_gap_ns
                fresh.append(float(np.median(fresh_each)))
                second.append(
                    ex.touch_pages(region.mem, 0, nr_pages, self.clock, CPU_CLOCK)
                    / nr_pages
                )
                kernel.madvise(region.addr, region.sz_bytes, kernel.MADV_DONTNEED)
                refault.append(
                    ex.touch_pages(region.mem, 0, nr_pages, self.clock, CPU_CLOCK)
                    / nr_pages
                )
            threshold = SLOW_TOUCH_FACTOR * refault[-1]
            slow = fresh_each[fresh_each > threshold]
            slow_share.append(slow.size / nr_pages)
            if slow.size:
                slow_ns.append(float(np.median(slow)))
        out = [
            Measurement(
                "first_touch_backed",
                "first write to a 4 KiB anonymous page that was just unmapped with "
                "MADV_DONTNEED, so the host under this machine still backs it",
                "ns per page",
                refault,
                parameters=("memory.first_touch_bound", "host.anon_fault"),
                here_ns=_here("memory.first_touch_bound"),
            ),
            Measurement(
                "first_touch_fresh",
                "first write to a 4 KiB page of a fresh anonymous mapping, each page "
                "timed alone (median over the pages)",
                "ns per page",
                fresh,
            ),
            Measurement(
                "second_touch",
                "write to a 4 KiB page that is already resident",
                "ns per page",
                second,
                here_ns=(HERE_SECOND_TOUCH_NS, HERE_SECOND_TOUCH_NS),
            ),
        ]
        share = float(np.median(slow_share))
        if slow_ns:
            mapped = share >= SLOW_TOUCH_MIN_SHARE
            out.append(
                Measurement(
                    "first_touch_slow",
                    f"first writes to fresh pages slower than {SLOW_TOUCH_FACTOR:g}x "
                    "the backed first touch: most likely pages the host under this "
                    "machine did not back yet",
                    "ns per page",
                    slow_ns,
                    parameters=("memory.first_touch_unbound",) if mapped else (),
                    here_ns=_here("memory.first_touch_unbound"),
                    extra={"share_of_pages": share},
                )
            )
            if not mapped:
                self.notes.append(
                    f"only {share:.2%} of fresh first touches were slow, fewer than "
                    f"{SLOW_TOUCH_MIN_SHARE:.0%}; memory.first_touch_unbound is not "
                    "written"
                )
        else:
            self.notes.append(
                "no fresh first touch was slower than "
                f"{SLOW_TOUCH_FACTOR:g}x the backed one; memory.first_touch_unbound "
                "is not written"
            )
        return out

    def batches(self) -> list[Measurement]:
        out = []
        batches = [*SMALL_BATCHES, self.large_pages]
        small_pages = TOUCH_REGION_BYTES // PAGE_SIZE
        populate: dict[int, list[float]] = {b: [] for b in batches}
        dontneed: dict[int, list[float]] = {b: [] for b in batches}
        with GuestRegion(self.large_pages) as region:
            for batch in batches:
                self.progress(
                    f"MADV_POPULATE_WRITE and MADV_DONTNEED, {batch} pages per call"
                )
                nr_pages = (
                    self.large_pages if batch == self.large_pages else small_pages
                )
                for _ in range(self.repeats):
                    check_signals()
                    kernel.madvise(region.addr, region.sz_bytes, kernel.MADV_DONTNEED)
                    ns, failed = ex.madvise_batches(
                        region.addr,
                        nr_pages,
                        batch,
                        kernel.MADV_POPULATE_WRITE,
                        self.clock,
                        CPU_CLOCK,
                    )
                    _check_failed(failed, "MADV_POPULATE_WRITE")
                    populate[batch].append(ns / nr_pages)
                    ns, failed = ex.madvise_batches(
                        region.addr,
                        nr_pages,
                        batch,
                        kernel.MADV_DONTNEED,
                        self.clock,
                        CPU_CLOCK,
                    )
                    _check_failed(failed, "MADV_DONTNEED")
                    dontneed[batch].append(ns / nr_pages)
        for batch in batches:
            large = batch == self.large_pages
            size = f"{batch * PAGE_SIZE / _MIB:.0f} MiB" if large else f"{batch} pages"
            out.append(
                Measurement(
                    f"populate_write_{'large' if large else batch}",
                    f"bind with MADV_POPULATE_WRITE, {size} per call",
                    "ns per page",
                    populate[batch],
                    parameters=(("memory.populate_write_per_page",) if large else ()),
                    here_ns=_here("memory.populate_write_per_page") if large else None,
                    extra={"batch_pages": batch},
                )
            )
            out.append(
                Measurement(
                    f"dontneed_{'large' if large else batch}",
                    f"unbind with MADV_DONTNEED, {size} per call",
                    "ns per page",
                    dontneed[batch],
                    parameters=("memory.dontneed_per_page",) if large else (),
                    here_ns=_here("memory.dontneed_per_page") if large else None,
                    extra={"batch_pages": batch},
                )
            )
        return out

    def huge_pages(self) -> list[Measurement]:
        mode = kernel.thp_enabled_mode()
        if mode not in ("always", "madvise"):
            self.notes.append(
                f"transparent huge pages are {mode!r}: no 2 MiB measurement was taken"
            )
            return []
        self.progress("2 MiB faults, binds and unbinds")
        nr_pages = HUGE_FRAMES * HUGE_PAGES
        fault, install, reclaim = [], [], []
        huge_share = []
        with GuestRegion(nr_pages, huge=True) as region:
            for _ in range(self.repeats):
                check_signals()
                kernel.madvise(region.addr, region.sz_bytes, kernel.MADV_DONTNEED)
                times = [
                    ex.touch_pages(region.mem, f * HUGE_PAGES, 1, self.clock, CPU_CLOCK)
                    for f in range(HUGE_FRAMES)
                ]
                fault.append(float(np.median(times)))
                usage = kernel.smaps_usage(region.addr)
                huge_share.append(
                    usage.anon_huge_bytes / region.sz_bytes if usage else 0.0
                )
                kernel.madvise(region.addr, region.sz_bytes, kernel.MADV_DONTNEED)
                ns, failed = ex.madvise_batches(
                    region.addr,
                    nr_pages,
                    HUGE_PAGES,
                    kernel.MADV_POPULATE_WRITE,
                    self.clock,
                    CPU_CLOCK,
                )
                _check_failed(failed, "MADV_POPULATE_WRITE")
                install.append(ns / HUGE_FRAMES)
                ns, failed = ex.madvise_batches(
                    region.addr,
                    nr_pages,
                    HUGE_PAGES,
                    kernel.MADV_DONTNEED,
                    self.clock,
                    CPU_CLOCK,
                )
                _check_failed(failed, "MADV_DONTNEED")
                reclaim.append(ns / HUGE_FRAMES)
        share = float(np.median(huge_share))
        if share < 0.9:
            self.notes.append(
                f"only {share:.0%} of the 2 MiB frames got a huge page; the 2 MiB "
                "values describe a mix of huge and 4 KiB pages"
            )
        extra = {"huge_page_share": share}
        return [
            Measurement(
                "fault_2m",
                "first write to a 2 MiB frame of a MADV_HUGEPAGE mapping "
                "(one huge-page fault)",
                "ns per 2 MiB frame",
                fault,
                parameters=("memory.thp_fault",),
                extra=extra,
            ),
            Measurement(
                "populate_write_2m",
                "MADV_POPULATE_WRITE of one 2 MiB frame of a MADV_HUGEPAGE mapping",
                "ns per 2 MiB frame",
                install,
                extra=extra,
            ),
            Measurement(
                "dontneed_2m",
                "MADV_DONTNEED of one resident 2 MiB huge page",
                "ns per 2 MiB frame",
                reclaim,
                parameters=("memory.hyperalloc.reclaim",),
                extra=extra,
            ),
        ]


def _check_failed(failed: int, call: str) -> None:
    if failed:
        raise LiveError(f"{call} failed in {failed} calls during calibration")


def calibrate(
    repeats: int = DEFAULT_REPEATS,
    max_rss_bytes: int = DEFAULT_MAX_RSS_BYTES,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Measure this host's costs.

    Raises LiveError if the kernel lacks MADV_POPULATE_WRITE or the memory
    cap does not fit.

    Only one region is mapped at a time, and none is larger than
    ``max_rss_bytes`` minus 64 MiB for the process itself.
    """
    if repeats < 3:
        raise LiveError(
            f"--repeats must be at least 3 for a median and spread, not {repeats}"
        )
    available = kernel.mem_available_bytes()
    if max_rss_bytes > available - 512 * _MIB:
        raise LiveError(
            f"calibration may use up to {max_rss_bytes / _MIB:.0f} MiB, but "
            f"MemAvailable is {available / _MIB:.0f} MiB and 512 MiB must stay "
            "free; nothing was mapped",
            hint="lower --max-rss",
        )
    kernel.check_populate_write()
    clock = np.zeros(2, dtype=np.int64)
    ex.touch_pages(
        np.full(PAGE_SIZE, 0, dtype=np.uint8), 0, 1, clock, CPU_CLOCK
    )  # compile
    # The per-page first-touch times read CLOCK_MONOTONIC; its share is subtracted.
    overhead = float(ex.clock_gap_ns(100_000, clock))
    calibrator = _Calibrator(
        repeats, max_rss_bytes, overhead, progress or (lambda _: None)
    )
    with signals_raise():
        measurements = [calibrator.syscall()]
        measurements += calibrator.touches()
        measurements += calibrator.batches()
        measurements += calibrator.huge_pages()
    return Calibration(
        measurements=measurements,
        when=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        kernel_release=platform.release(),
        machine=f"{platform.machine()}, {os.cpu_count() or 1} CPUs",
        thp_mode=kernel.thp_enabled_mode(),
        repeats=repeats,
        max_rss_bytes=max_rss_bytes,
        clock_gap_ns=overhead,
        notes=calibrator.notes,
    )
