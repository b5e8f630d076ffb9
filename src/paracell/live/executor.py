"""Compiled loops that execute an op stream on a region and measure it.

One call of :func:`execute_chunk` runs the operations of a stream in order
until a stop time, an operation budget or a failed system call. For each
operation it

1. adds the resident page count times the trace time since the previous
   operation to the integral (the measured footprint is a step function of
   trace time, like the modelled one);
2. performs the operation on the region, timed with CLOCK_MONOTONIC.
   ``TOUCH`` writes one byte per page. ``BIND``, ``INSTALL_2M`` and ``BASE``
   are one MADV_POPULATE_WRITE over the run. ``UNBIND`` and ``RECLAIM_2M``
   are one MADV_DONTNEED over the run. ``FAULT_2M`` writes one byte at the
   start of the 2 MiB frame. ``FREE`` and ``CALL`` do nothing on the host;
3. asks the kernel with mincore() which pages of the run are resident now,
   and updates the resident count from the difference to what it knew.

Step 3 keeps the measured resident count exact after every operation
without a full scan. A full mincore() scan of the region
(:func:`count_resident`) checks it at every sample point.

In a dry run (``dry=True``) step 2 is skipped: the loop, the clock reads
and the mincore() calls stay, so the page faults of a dry run are those the
replay machinery itself takes (the fault-count offset).
"""

from __future__ import annotations

import numba
import numpy as np

from paracell.live.kernel import (
    CLOCK_MONOTONIC,
    MADV_DONTNEED,
    MADV_POPULATE_WRITE,
    PAGE_SIZE,
    libc_clock_gettime,
    libc_madvise,
    libc_mincore,
    libc_syscall0,
)
from paracell.models.memory import ops as opcodes

# Timing classes (rows of the accumulator arrays).
T_TOUCH_FAULT = 0  # TOUCH of a run with at least one page not resident
T_TOUCH_RESIDENT = 1  # TOUCH of a run that was resident already
T_BIND = 2
T_UNBIND = 3
T_FAULT_2M = 4
T_INSTALL_2M = 5
T_RECLAIM_2M = 6
T_BASE = 7
NR_TIMING = 8
TIMING_NAMES = (
    "touch_fault",
    "touch_resident",
    "bind",
    "unbind",
    "fault_2m",
    "install_2m",
    "reclaim_2m",
    "base",
)

# Columns of the accumulator: operations, pages, pages not resident before, ns.
A_OPS = 0
A_PAGES = 1
A_MISSING = 2
A_NS = 3
NR_ACC = 4

# Slots of the state array shared between chunks.
S_RESIDENT = 0  # resident pages of the region, as last seen by mincore
S_LAST_TS = 1  # trace time of the previous operation
S_PEAK = 2  # maximum resident pages after any operation
S_FAILED_OP = 3  # index of the operation whose system call failed, or -1
S_CALLS = 4  # CALL rows seen
NR_STATE = 5

# Return codes of execute_chunk.
DONE_STOP_TS = 0
DONE_BUDGET = 1
DONE_FAILED = 2
DONE_END = 3


@numba.njit(nogil=True)
def read_clock(ts: np.ndarray, clock_id: int) -> int:
    """Return clock ``clock_id`` in ns; ``ts`` is an int64[2] scratch timespec."""
    libc_clock_gettime(clock_id, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@numba.njit(nogil=True)
def now_ns(ts: np.ndarray) -> int:
    """Return CLOCK_MONOTONIC in ns (read through the vDSO, so it costs tens of ns)."""
    return read_clock(ts, CLOCK_MONOTONIC)


@numba.njit(nogil=True)
def _refresh(addr, first, count, vec, known, state):
    """Update ``known`` and the resident count of pages ``[first, first + count)``."""
    if libc_mincore(addr + first * PAGE_SIZE, count * PAGE_SIZE, vec.ctypes.data) != 0:
        return False
    for j in range(count):
        now = vec[j] & 1
        if now != known[first + j]:
            if now:
                state[S_RESIDENT] += 1
            else:
                state[S_RESIDENT] -= 1
            known[first + j] = now
    return True


@numba.njit(nogil=True)
def execute_chunk(
    ts_ns,
    op,
    pfn,
    nr_pages,
    start,
    stop_ts,
    budget,
    first_pfn,
    mem,
    addr,
    known,
    vec,
    clock,
    acc,
    state,
    integral,
    op_ns,
    op_missing,
    dry,
):
    """Run operations from index ``start``; return ``(next index, DONE_* code)``.

    Stops before the first operation later than ``stop_ts``, after
    ``budget`` operations, at the end of the stream, or at a failed system
    call (its index is left in ``state[S_FAILED_OP]``). ``integral`` is a
    float64[1] of resident pages x ns, accumulated up to the last operation.
    ``op_ns[i]`` receives the time of operation ``i`` (-1 for FREE and CALL,
    which do nothing on the host) and ``op_missing[i]`` the pages of its run
    that were not resident before it.
    """
    nr_region = known.size
    i = start
    end = ts_ns.size
    done = 0
    while i < end:
        t = ts_ns[i]
        if t > stop_ts:
            return i, DONE_STOP_TS
        if done >= budget:
            return i, DONE_BUDGET
        if t > state[S_LAST_TS]:
            integral[0] += state[S_RESIDENT] * float(t - state[S_LAST_TS])
            state[S_LAST_TS] = t
        code = op[i]
        if code == opcodes.FREE:
            op_ns[i] = -1
            i += 1
            done += 1
            continue
        if code == opcodes.CALL:
            state[S_CALLS] += 1
            op_ns[i] = -1
            i += 1
            done += 1
            continue
        first = pfn[i] - first_pfn
        count = nr_pages[i]
        if first + count > nr_region:
            count = nr_region - first
        missing = 0
        for p in range(first, first + count):
            if known[p] == 0:
                missing += 1
        ok = True
        t0 = now_ns(clock)
        if code == opcodes.TOUCH:
            kind = T_TOUCH_FAULT if missing > 0 else T_TOUCH_RESIDENT
            if not dry:
                for p in range(first, first + count):
                    mem[p * PAGE_SIZE] = 1
        elif code == opcodes.FAULT_2M:
            kind = T_FAULT_2M
            if not dry:
                mem[first * PAGE_SIZE] = 1
        elif code == opcodes.UNBIND or code == opcodes.RECLAIM_2M:
            kind = T_UNBIND if code == opcodes.UNBIND else T_RECLAIM_2M
            if not dry:
                ok = (
                    libc_madvise(
                        addr + first * PAGE_SIZE, count * PAGE_SIZE, MADV_DONTNEED
                    )
                    == 0
                )
        else:
            # BIND, INSTALL_2M and BASE bind the run in one call.
            if code == opcodes.BIND:
                kind = T_BIND
            elif code == opcodes.INSTALL_2M:
                kind = T_INSTALL_2M
            else:
                kind = T_BASE
            if not dry:
                ok = (
                    libc_madvise(
                        addr + first * PAGE_SIZE, count * PAGE_SIZE, MADV_POPULATE_WRITE
                    )
                    == 0
                )
        t1 = now_ns(clock)
        if not ok:
            state[S_FAILED_OP] = i
            return i, DONE_FAILED
        acc[kind, A_OPS] += 1
        acc[kind, A_PAGES] += count
        acc[kind, A_MISSING] += missing
        acc[kind, A_NS] += t1 - t0
        op_ns[i] = t1 - t0
        op_missing[i] = missing
        # A FAULT_2M row covers its whole frame, so the refresh also counts
        # the pages a huge-page fault made resident besides the one written.
        if not _refresh(addr, first, count, vec, known, state):
            state[S_FAILED_OP] = i
            return i, DONE_FAILED
        if state[S_RESIDENT] > state[S_PEAK]:
            state[S_PEAK] = state[S_RESIDENT]
        i += 1
        done += 1
    return i, DONE_END


@numba.njit(nogil=True)
def count_resident(addr, nr_pages, vec):
    """Return how many of the region's pages mincore() reports resident (-1: it failed).

    ``vec`` must hold at least ``nr_pages`` bytes.
    """
    if libc_mincore(addr, nr_pages * PAGE_SIZE, vec.ctypes.data) != 0:
        return -1
    total = 0
    for j in range(nr_pages):
        total += vec[j] & 1
    return total


@numba.njit(nogil=True)
def touch_pages(mem, first, count, clock, clock_id):
    """Write one byte to each of ``count`` pages from ``first``; return the ns taken."""
    t0 = read_clock(clock, clock_id)
    for p in range(first, first + count):
        mem[p * PAGE_SIZE] = 1
    return read_clock(clock, clock_id) - t0


@numba.njit(nogil=True)
def touch_pages_each(mem, first, count, clock, out_ns):
    """Write one byte to each page, timing each write alone into ``out_ns``.

    The clock is CLOCK_MONOTONIC, read through the vDSO.
    """
    for j in range(count):
        t0 = now_ns(clock)
        mem[(first + j) * PAGE_SIZE] = 1
        out_ns[j] = now_ns(clock) - t0


@numba.njit(nogil=True)
def madvise_batches(addr, nr_pages, batch_pages, advice, clock, clock_id):
    """Apply ``advice`` in calls of ``batch_pages``; return (ns, failed calls)."""
    failed = 0
    t0 = read_clock(clock, clock_id)
    for first in range(0, nr_pages, batch_pages):
        count = min(batch_pages, nr_pages - first)
        if libc_madvise(addr + first * PAGE_SIZE, count * PAGE_SIZE, advice) != 0:
            failed += 1
    return read_clock(clock, clock_id) - t0, failed


@numba.njit(nogil=True)
def syscall_loop(number, calls, clock, clock_id):
    """Issue system call ``number`` without arguments ``calls`` times; return the ns."""
    t0 = read_clock(clock, clock_id)
    for _ in range(calls):
        libc_syscall0(number)
    return read_clock(clock, clock_id) - t0


@numba.njit(nogil=True)
def clock_gap_ns(calls, clock):
    """Return the median ns between two back-to-back CLOCK_MONOTONIC reads.

    This is what the clock itself adds to an interval timed with it.
    """
    gaps = np.empty(calls, dtype=np.int64)
    for j in range(calls):
        t0 = now_ns(clock)
        gaps[j] = now_ns(clock) - t0
    return np.median(gaps)
