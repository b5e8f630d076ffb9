"""Execution of one op stream on a real region, with sampling, limits and fault counts.

:func:`execute_stream` is independent of where the stream comes from: the
memory model's policies, or a stream built by hand. It runs the compiled
loop of :mod:`paracell.live.executor` in chunks. Between chunks Python
takes the samples, paces the replay (``speed``), checks the memory limits
and acts on signals.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from paracell.errors import LiveError
from paracell.live import executor as ex
from paracell.live import kernel
from paracell.live.kernel import PAGE_SIZE
from paracell.live.region import GuestRegion, check_signals
from paracell.models.memory import ops as opcodes

log = logging.getLogger("paracell.live")

_MIB = 1 << 20


class StreamLike(Protocol):
    """The columns of an op stream that the live replay reads (see ``ops.OpStream``)."""

    @property
    def ts_ns(self) -> np.ndarray: ...
    @property
    def op(self) -> np.ndarray: ...
    @property
    def pfn(self) -> np.ndarray: ...
    @property
    def nr_pages(self) -> np.ndarray: ...
    @property
    def nr_guest_pages(self) -> int: ...


@dataclass(frozen=True)
class LiveLimits:
    """Memory limits checked while a stream runs.

    ``max_rss_bytes`` caps the resident memory of the region;
    ``min_available_bytes`` is the MemAvailable below which the replay stops.
    """

    max_rss_bytes: int
    min_available_bytes: int
    check_interval_s: float = 0.25


@dataclass(frozen=True)
class LiveOptions:
    """Settings of one execution of a stream.

    ``speed`` is the trace seconds replayed per wall-clock second (None:
    as fast as possible, in trace order). ``sample_ns`` is the trace time
    between two full mincore() samples of the region. ``chunk_ops`` bounds
    the operations run between two returns to Python, so signals and limit
    checks are handled within a fraction of a second.
    """

    speed: float | None = None
    sample_ns: int = 100_000_000
    chunk_ops: int = 16_384

    def __post_init__(self) -> None:
        if self.speed is not None and self.speed <= 0:
            raise LiveError(f"--speed must be positive, not {self.speed:g}")
        if self.sample_ns <= 0:
            raise LiveError(
                f"--sample-ms must be positive, not {self.sample_ns / 1e6:g}"
            )


@dataclass
class TimingClass:
    """Real time spent in one kind of operation."""

    ops: int
    pages: int
    missing_pages: int  # pages that were not resident before the operation
    ns: int
    # Medians over the class's operations of ns / pages and ns / missing pages.
    # A preemption inside a few operations barely moves them, unlike the sums.
    median_ns_per_page: float | None = None
    median_ns_per_missing_page: float | None = None

    @property
    def ns_per_page(self) -> float | None:
        return self.ns / self.pages if self.pages else None

    @property
    def ns_per_op(self) -> float | None:
        return self.ns / self.ops if self.ops else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "operations": self.ops,
            "pages": self.pages,
            "pages_not_resident_before": self.missing_pages,
            "ns": self.ns,
            "ns_per_page": self.ns_per_page,
            "ns_per_operation": self.ns_per_op,
            "median_ns_per_page": self.median_ns_per_page,
            "median_ns_per_page_not_resident": self.median_ns_per_missing_page,
        }


@dataclass
class StreamMeasurement:
    """Measurements of one execution of a stream; byte counts are resident bytes."""

    start_ts_ns: int
    end_ts_ns: int
    dry: bool
    sample_ts_ns: np.ndarray  # trace time of each full sample
    sample_resident_bytes: np.ndarray  # full mincore() scan at that time
    sample_tracked_bytes: np.ndarray  # resident count kept per operation at that time
    sample_anon_huge_bytes: (
        np.ndarray
    )  # smaps AnonHugePages (2 MiB regions only, else -1)
    mean_resident_bytes: float  # time-weighted over trace time, per operation
    sampled_mean_resident_bytes: float  # mean of the full samples
    peak_resident_bytes: int
    final_resident_bytes: int
    final_smaps_rss_bytes: int | None
    trap_faults: int | None  # hardware-trap minor faults (perf), None if unavailable
    rusage_faults: int  # getrusage min_flt: traps plus get_user_pages faults
    timing: dict[str, TimingClass]
    calls: int
    wall_ns: int
    region_bytes: int
    huge: bool
    max_drift_pages: int  # largest |full scan - tracked count| over the samples
    op_ns: np.ndarray  # time of each operation, -1 where nothing ran on the host
    op_missing: np.ndarray  # pages of each operation's run not resident before it
    notes: list[str] = field(default_factory=list)

    @property
    def gup_faults(self) -> int | None:
        """Faults in getrusage but not trapped: get_user_pages (MADV_POPULATE_WRITE)."""
        if self.trap_faults is None:
            return None
        return self.rusage_faults - self.trap_faults

    def to_dict(self, timeline: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mean_resident_bytes": self.mean_resident_bytes,
            "sampled_mean_resident_bytes": self.sampled_mean_resident_bytes,
            "peak_resident_bytes": self.peak_resident_bytes,
            "final_resident_bytes": self.final_resident_bytes,
            "final_smaps_rss_bytes": self.final_smaps_rss_bytes,
            "minor_faults": self.trap_faults,
            "minor_faults_rusage": self.rusage_faults,
            "get_user_pages_faults": self.gup_faults,
            "time_by_operation": {k: v.to_dict() for k, v in self.timing.items()},
            "calls": self.calls,
            "wall_seconds": self.wall_ns / 1e9,
            "region_bytes": self.region_bytes,
            "huge_pages_requested": self.huge,
            "max_drift_pages": self.max_drift_pages,
            "samples": int(self.sample_ts_ns.size),
            "notes": list(self.notes),
        }
        if self.huge:
            out["peak_anon_huge_bytes"] = int(
                self.sample_anon_huge_bytes.max(initial=0)
            )
        if timeline:
            out["timeline"] = {
                "ts_ns": self.sample_ts_ns,
                "resident_bytes": self.sample_resident_bytes,
            }
        return out


def stream_page_range(stream: StreamLike) -> tuple[int, int]:
    """Return the 2 MiB-aligned range ``[first_pfn, end_pfn)`` the stream uses."""
    rows = stream.nr_pages > 0
    if not np.any(rows):
        return 0, opcodes.HUGE_PAGES
    first = int(stream.pfn[rows].min())
    end = int((stream.pfn[rows] + stream.nr_pages[rows]).max())
    huge = opcodes.HUGE_PAGES
    first = first // huge * huge
    end = -(-end // huge) * huge
    return first, end


def stream_uses_huge_pages(stream: StreamLike) -> bool:
    """Return True if the stream binds or unbinds whole 2 MiB frames."""
    codes = (opcodes.FAULT_2M, opcodes.INSTALL_2M, opcodes.RECLAIM_2M)
    return bool(np.isin(stream.op, codes).any())


class _Pacer:
    """Maps trace time to wall time for ``--speed``."""

    def __init__(self, start_ts_ns: int, speed: float | None) -> None:
        self.start_ts_ns = start_ts_ns
        self.speed = speed
        self.wall0 = time.monotonic_ns()

    def allowed_ts(self) -> int:
        """Return the latest trace time that may run now."""
        if self.speed is None:
            return np.iinfo(np.int64).max
        elapsed = time.monotonic_ns() - self.wall0
        return self.start_ts_ns + int(elapsed * self.speed)

    def sleep_until(self, ts_ns: int) -> None:
        """Sleep until trace time ``ts_ns`` is due, in slices so signals are handled."""
        if self.speed is None:
            return
        due = self.wall0 + (ts_ns - self.start_ts_ns) / self.speed
        while True:
            check_signals()
            left = due - time.monotonic_ns()
            if left <= 0:
                return
            time.sleep(min(left / 1e9, 0.05))


class _Guard:
    """Checks the memory limits at most every ``check_interval_s`` of wall time."""

    def __init__(self, limits: LiveLimits) -> None:
        self.limits = limits
        self.next_check = 0.0

    def check(self, resident_pages: int) -> None:
        resident = resident_pages * PAGE_SIZE
        if resident > self.limits.max_rss_bytes:
            raise LiveError(
                f"the region's resident memory reached {resident / _MIB:.0f} MiB, "
                f"above the limit of {self.limits.max_rss_bytes / _MIB:.0f} MiB; "
                "stopped the replay and unmapped the region",
                hint="raise --max-rss if the machine has the memory",
            )
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + self.limits.check_interval_s
        available = kernel.mem_available_bytes()
        if available < self.limits.min_available_bytes:
            raise LiveError(
                f"MemAvailable dropped to {available / _MIB:.0f} MiB, below the safety "
                f"margin of {self.limits.min_available_bytes / _MIB:.0f} MiB; stopped "
                "the replay and unmapped the region"
            )


def _sample_times(start_ts: int, end_ts: int, sample_ns: int) -> np.ndarray:
    times = np.arange(start_ts, end_ts, sample_ns, dtype=np.int64)
    return np.append(times, np.int64(end_ts))


def _prefaulted(size: int) -> np.ndarray:
    # np.full writes every page now (np.zeros would map them lazily), which
    # keeps these buffers' first-touch faults out of the counted window.
    return np.full(max(size, 1), 0, dtype=np.uint8)


def execute_stream(
    stream: StreamLike,
    start_ts_ns: int,
    end_ts_ns: int,
    region: GuestRegion,
    limits: LiveLimits,
    options: LiveOptions | None = None,
    dry: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> StreamMeasurement:
    """Execute ``stream`` on ``region``; measure it over ``[start_ts_ns, end_ts_ns]``.

    Raises LiveError when a system call fails or a memory limit is hit, and
    LiveTerminated (from the signal handler, if installed) on SIGTERM; the
    caller owns the region and unmaps it. ``on_progress(done, total)`` is
    called between chunks.
    """
    options = options or LiveOptions()
    ts = np.ascontiguousarray(stream.ts_ns, dtype=np.int64)
    op = np.ascontiguousarray(stream.op, dtype=np.uint8)
    pfn = np.ascontiguousarray(stream.pfn, dtype=np.int64)
    nr = np.ascontiguousarray(stream.nr_pages, dtype=np.int64)
    _check_stream_fits(pfn, nr, region)
    sample_ts = _sample_times(
        start_ts_ns, max(end_ts_ns, start_ts_ns), options.sample_ns
    )
    nr_samples = sample_ts.size
    sample_resident = np.full(nr_samples, 0, dtype=np.int64)
    sample_tracked = np.full(nr_samples, 0, dtype=np.int64)
    sample_huge = np.full(nr_samples, -1, dtype=np.int64)
    known = _prefaulted(region.nr_pages)
    vec = _prefaulted(region.nr_pages)
    clock = np.zeros(2, dtype=np.int64)
    acc = np.zeros((ex.NR_TIMING, ex.NR_ACC), dtype=np.int64)
    state = np.zeros(ex.NR_STATE, dtype=np.int64)
    state[ex.S_FAILED_OP] = -1
    state[ex.S_LAST_TS] = start_ts_ns
    integral = np.zeros(1, dtype=np.float64)
    op_ns = np.full(ts.size, -1, dtype=np.int64)
    op_missing = np.full(ts.size, 0, dtype=np.int64)
    mem = region.mem
    guard = _Guard(limits)
    smaps = kernel.SmapsReader()
    resident0 = ex.count_resident(region.addr, region.nr_pages, vec)
    if resident0 != 0:
        raise LiveError(
            f"the region at {region.addr:#x} is not empty ({resident0} pages resident)"
        )
    notes: list[str] = []
    try:
        trap_counter: kernel.TrapFaultCounter | None = kernel.TrapFaultCounter()
    except LiveError as exc:
        trap_counter = None
        notes.append(f"hardware-trap fault counter unavailable: {exc}")
    # A call with no budget returns at once. It compiles the loop for these
    # argument types here, so the compiler's own page faults stay out of the
    # counted window.
    ex.execute_chunk(
        ts,
        op,
        pfn,
        nr,
        0,
        start_ts_ns,
        0,
        region.first_pfn,
        mem,
        region.addr,
        known,
        vec,
        clock,
        acc,
        state,
        integral,
        op_ns,
        op_missing,
        dry,
    )
    pacer = _Pacer(start_ts_ns, options.speed)
    index = 0
    sample = 0
    total = int(ts.size)
    wall0 = time.monotonic_ns()
    trap0 = trap_counter.read() if trap_counter else 0
    rusage0 = kernel.thread_minor_faults()
    try:
        while sample < nr_samples:
            target = int(sample_ts[sample])
            allowed = pacer.allowed_ts()
            stop = min(target, allowed)
            index, code = ex.execute_chunk(
                ts,
                op,
                pfn,
                nr,
                index,
                stop,
                options.chunk_ops,
                region.first_pfn,
                mem,
                region.addr,
                known,
                vec,
                clock,
                acc,
                state,
                integral,
                op_ns,
                op_missing,
                dry,
            )
            if code == ex.DONE_FAILED:
                raise _failed_operation(stream, int(state[ex.S_FAILED_OP]), region)
            check_signals()
            guard.check(int(state[ex.S_RESIDENT]))
            if on_progress is not None:
                on_progress(index, total)
            if code == ex.DONE_BUDGET:
                continue
            due_later = code == ex.DONE_STOP_TS and stop < target
            if due_later:
                pacer.sleep_until(min(int(ts[index]), target))
                continue
            # Every operation up to the sample time has run: take the sample.
            pacer.sleep_until(target)
            full = ex.count_resident(region.addr, region.nr_pages, vec)
            if full < 0:
                raise LiveError(f"mincore on the region at {region.addr:#x} failed")
            sample_resident[sample] = full
            sample_tracked[sample] = state[ex.S_RESIDENT]
            if region.huge:
                usage = smaps.usage(region.addr)
                sample_huge[sample] = usage.anon_huge_bytes if usage else 0
            sample += 1
        wall_ns = time.monotonic_ns() - wall0
        trap_faults = trap_counter.read() - trap0 if trap_counter else None
        rusage_faults = kernel.thread_minor_faults() - rusage0
    finally:
        if trap_counter is not None:
            trap_counter.close()
    if index < total:
        raise LiveError(
            f"{total - index} operations lie after the end of the trace "
            f"({end_ts_ns} ns); the stream does not match its trace"
        )
    last = int(state[ex.S_LAST_TS])
    if end_ts_ns > last:
        integral[0] += state[ex.S_RESIDENT] * float(end_ts_ns - last)
    span = end_ts_ns - start_ts_ns
    mean_pages = integral[0] / span if span > 0 else float(state[ex.S_RESIDENT])
    drift = int(np.abs(sample_resident - sample_tracked).max(initial=0))
    if drift:
        notes.append(
            f"a full mincore scan differed from the per-operation count by up to "
            f"{drift} pages: the kernel changed pages outside the operations' runs "
            "(for example khugepaged)"
        )
    usage = kernel.smaps_usage(region.addr)
    timing = _timing_classes(acc, op, nr, op_ns, op_missing)
    return StreamMeasurement(
        start_ts_ns=start_ts_ns,
        end_ts_ns=end_ts_ns,
        dry=dry,
        sample_ts_ns=sample_ts,
        sample_resident_bytes=sample_resident * PAGE_SIZE,
        sample_tracked_bytes=sample_tracked * PAGE_SIZE,
        sample_anon_huge_bytes=sample_huge,
        mean_resident_bytes=mean_pages * PAGE_SIZE,
        sampled_mean_resident_bytes=float(sample_resident.mean()) * PAGE_SIZE,
        peak_resident_bytes=int(state[ex.S_PEAK]) * PAGE_SIZE,
        final_resident_bytes=int(sample_resident[-1]) * PAGE_SIZE,
        final_smaps_rss_bytes=usage.rss_bytes if usage else None,
        trap_faults=trap_faults,
        rusage_faults=rusage_faults,
        timing=timing,
        calls=int(state[ex.S_CALLS]),
        wall_ns=wall_ns,
        region_bytes=region.sz_bytes,
        huge=region.huge,
        max_drift_pages=drift,
        op_ns=op_ns,
        op_missing=op_missing,
        notes=notes,
    )


def _op_classes(op: np.ndarray, op_missing: np.ndarray) -> np.ndarray:
    """Return the executor's timing class of each operation, -1 for FREE and CALL."""
    classes = np.full(op.size, -1, dtype=np.int64)
    touch = op == opcodes.TOUCH
    classes[touch & (op_missing > 0)] = ex.T_TOUCH_FAULT
    classes[touch & (op_missing == 0)] = ex.T_TOUCH_RESIDENT
    for code, kind in (
        (opcodes.BIND, ex.T_BIND),
        (opcodes.UNBIND, ex.T_UNBIND),
        (opcodes.FAULT_2M, ex.T_FAULT_2M),
        (opcodes.INSTALL_2M, ex.T_INSTALL_2M),
        (opcodes.RECLAIM_2M, ex.T_RECLAIM_2M),
        (opcodes.BASE, ex.T_BASE),
    ):
        classes[op == code] = kind
    return classes


def _timing_classes(
    acc: np.ndarray,
    op: np.ndarray,
    nr: np.ndarray,
    op_ns: np.ndarray,
    op_missing: np.ndarray,
) -> dict[str, TimingClass]:
    classes = _op_classes(op, op_missing)
    out = {}
    for k, name in enumerate(ex.TIMING_NAMES):
        rows = (classes == k) & (op_ns >= 0) & (nr > 0)
        per_page = op_ns[rows] / nr[rows]
        missing = op_missing[rows]
        per_missing = op_ns[rows][missing > 0] / missing[missing > 0]
        out[name] = TimingClass(
            ops=int(acc[k, ex.A_OPS]),
            pages=int(acc[k, ex.A_PAGES]),
            missing_pages=int(acc[k, ex.A_MISSING]),
            ns=int(acc[k, ex.A_NS]),
            median_ns_per_page=float(np.median(per_page)) if per_page.size else None,
            median_ns_per_missing_page=(
                float(np.median(per_missing)) if per_missing.size else None
            ),
        )
    return out


def _check_stream_fits(pfn: np.ndarray, nr: np.ndarray, region: GuestRegion) -> None:
    rows = nr > 0
    if not np.any(rows):
        return
    low = int(pfn[rows].min())
    high = int((pfn[rows] + nr[rows]).max())
    end = region.first_pfn + region.nr_pages
    if low < region.first_pfn or high > end:
        raise LiveError(
            f"the stream uses guest pfns {low}-{high - 1}, outside the region's "
            f"{region.first_pfn}-{end - 1}"
        )


def _failed_operation(stream: StreamLike, index: int, region: GuestRegion) -> LiveError:
    code = int(stream.op[index])
    first = int(stream.pfn[index]) - region.first_pfn
    count = min(int(stream.nr_pages[index]), region.nr_pages - first)
    name = opcodes.OP_NAMES[code]
    if code in (opcodes.UNBIND, opcodes.RECLAIM_2M):
        advice, call = kernel.MADV_DONTNEED, "MADV_DONTNEED"
    else:
        advice, call = kernel.MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE"
    errno_value = kernel.madvise_errno(
        region.page_addr(first), count * PAGE_SIZE, advice
    )
    reason = os.strerror(errno_value) if errno_value else "mincore failed"
    return LiveError(
        f"operation {index} ({name} of {count} pages at guest pfn "
        f"{int(stream.pfn[index])}): {call} failed: {reason}; stopped the replay "
        "and unmapped the region"
    )
