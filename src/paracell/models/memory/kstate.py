"""State of one replay (pages, policy bookkeeping, output buffer) and its helpers.

The replay driver and the policy hooks share a :class:`ReplayState` and an
:class:`OpBuffer`. Scalars sit in ``meta`` at the ``K_*`` indices; policy
parameters arrive as a float64 array indexed by the ``P_*`` constants.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit, sort_prefix
from paracell.models.memory.state import HUGE_ORDER, HUGE_PAGES

# Page owners.
OWNER_FREE = 0
OWNER_WORKLOAD = 1
OWNER_BALLOON = 2
OWNER_BASE = 3

NEVER = np.iinfo(np.int64).max

# Policy ids, in the order the report lists them.
STATIC = 0
THP = 1
FPR = 2
BALLOON = 3
DAMON = 4
HYPERALLOC = 5
PAGER = 6
POLICY_IDS = {
    "static": STATIC,
    "thp": THP,
    "fpr": FPR,
    "balloon": BALLOON,
    "damon": DAMON,
    "hyperalloc": HYPERALLOC,
    "pager": PAGER,
}

# Policy parameters (float64 array, times in ns).
P_FPR_DELAY = 0
P_FPR_CAPACITY = 1
P_FPR_ORDER = 2
P_FPR_BUDGET_DIV = 3
P_BAL_PERIOD = 4
P_BAL_HEADROOM = 5  # pages
P_BAL_NS_PER_PAGE = 6  # inflation rate limit as time per page
P_BAL_CHUNK = 7
P_DAMON_MIN_AGE = 8
P_DAMON_AGGR = 9
P_DAMON_QUOTA = 10  # pages per quota interval
P_DAMON_QUOTA_INTERVAL = 11
P_DAMON_REGION_FRAMES = 12
P_HA_PERIOD = 13
P_PG_USE_REFILL = 14
P_PG_BIND_BATCH = 15
P_PG_UNBIND_BATCH = 16
P_PG_DELAY = 17
P_PG_RESERVE = 18
NR_PARAMS = 19

# meta indices
K_OPS_N = 0
K_OVERFLOW = 1
K_ALLOC_PAGES = 2  # pages allocated by the workload (base included)
K_FAULTS = 3
K_IGNORED_FREE_PAGES = 4
K_DOUBLE_ALLOC_PAGES = 5
K_ERROR_EVENT = 6
K_ERROR_ORDER = 7
K_T_FPR = 8
K_T_BAL_CTRL = 9
K_T_BAL_INFLATE = 10
K_T_DAMON = 11
K_T_DAMON_QUOTA = 12
K_DAMON_QUOTA_USED = 13
K_T_HA = 14
K_PENDING_FREED = 15
K_FIFO_HEAD = 16  # two slots: freed, ahead
K_FIFO_TAIL = 18
K_BAL_PAGES = 20
K_BAL_TARGET = 21
K_BAL_RUNS = 22
K_REFILL_N = 23
K_BAL_OOM_DEFLATIONS = 24
K_BAL_STOLEN = 25
K_CAP_BASE = 26  # offset of captured pfns in the modelled space
K_PLACEMENT = 27
K_POLICY = 28
K_FIFO_FORCED = 29
K_RECLAIM_PAGES = 30
K_T_START = 31  # start of the trace, ns
META_LEN = 32

FIFO_FREED = 0
FIFO_AHEAD = 1


class ReplayState(NamedTuple):
    """Per-page and per-policy arrays of one replay."""

    meta: np.ndarray  # int64[META_LEN]
    bound: np.ndarray  # uint8[N]
    owner: np.ndarray  # uint8[N], OWNER_*
    block_head: np.ndarray  # int32[N], head pfn of the allocation holding the page
    head_order: np.ndarray  # int8[N], order of the allocation headed here, else -1
    pending: np.ndarray  # uint8[N], 0 or 1 + FIFO_* while the Pager may unbind it
    pending_ts: np.ndarray  # int64[N], time the page was queued (matches its FIFO run)
    cap2mod: np.ndarray  # int32[Ncap], modelled pfn of each captured page, -1 if none
    frame_bound: np.ndarray  # int32[F]
    frame_alloc: np.ndarray  # int32[F], pages owned by anyone but OWNER_FREE
    frame_flag: np.ndarray  # uint8[F]: installed (hyperalloc) or reported (fpr)
    fifo_pfn: np.ndarray  # int64[2, C]
    fifo_n: np.ndarray  # int64[2, C]
    fifo_ts: np.ndarray  # int64[2, C]
    bal_pfn: np.ndarray  # int64[B], runs of balloon pages (a stack)
    bal_n: np.ndarray  # int64[B]
    region_free_since: np.ndarray  # int64[R], ts since a DAMON region has no allocation
    scratch: np.ndarray  # int64[N], page lists of one batch
    scratch2: np.ndarray  # int64[S]
    refill: np.ndarray  # int64[N], pages of recorded refills not yet handled


class OpBuffer(NamedTuple):
    ts_ns: np.ndarray
    op: np.ndarray
    pfn: np.ndarray
    nr_pages: np.ndarray
    arg: np.ndarray


def new_op_buffer(capacity: int) -> OpBuffer:
    return OpBuffer(
        ts_ns=np.zeros(capacity, dtype=np.int64),
        op=np.zeros(capacity, dtype=np.uint8),
        pfn=np.zeros(capacity, dtype=np.int64),
        nr_pages=np.zeros(capacity, dtype=np.int64),
        arg=np.zeros(capacity, dtype=np.int32),
    )


@njit
def emit(s, out, ts, op, pfn, nr_pages, arg):
    """Append one operation; on a full buffer set the overflow flag instead."""
    i = s.meta[K_OPS_N]
    if i >= out.ts_ns.size:
        s.meta[K_OVERFLOW] = 1
        return
    out.ts_ns[i] = ts
    out.op[i] = op
    out.pfn[i] = pfn
    out.nr_pages[i] = nr_pages
    out.arg[i] = arg
    s.meta[K_OPS_N] = i + 1


@njit
def bind_page(s, p):
    """Mark page ``p`` bound; return 1 if it was not."""
    if s.bound[p] != 0:
        return 0
    s.bound[p] = 1
    s.frame_bound[p >> HUGE_ORDER] += 1
    return 1


@njit
def unbind_page(s, p):
    """Mark page ``p`` unbound; return 1 if it was bound."""
    if s.bound[p] == 0:
        return 0
    s.bound[p] = 0
    s.frame_bound[p >> HUGE_ORDER] -= 1
    return 1


@njit
def set_owner(s, p, owner):
    old = s.owner[p]
    if old == owner:
        return
    frame = p >> HUGE_ORDER
    if old == OWNER_FREE:
        s.frame_alloc[frame] += 1
    elif owner == OWNER_FREE:
        s.frame_alloc[frame] -= 1
    s.owner[p] = owner


@njit
def emit_runs(s, out, ts, op, pages, count):
    """Sort ``pages[:count]`` and emit ``op`` once per contiguous run; return the run count."""
    if count == 0:
        return 0
    sort_prefix(pages, count)
    runs = 0
    start = pages[0]
    length = 1
    for i in range(1, count):
        p = pages[i]
        if p == start + length:
            length += 1
        elif p >= start + length:
            emit(s, out, ts, op, start, length, 0)
            runs += 1
            start = p
            length = 1
    emit(s, out, ts, op, start, length, 0)
    return runs + 1


@njit
def emit_frame_runs(s, out, ts, op, frames, count):
    """Emit ``op`` once per run of consecutive 2 MiB frames in ``frames[:count]`` (sorted)."""
    if count == 0:
        return
    start = frames[0]
    length = 1
    for i in range(1, count):
        if frames[i] == start + length:
            length += 1
        else:
            emit(s, out, ts, op, start * HUGE_PAGES, length * HUGE_PAGES, 0)
            start = frames[i]
            length = 1
    emit(s, out, ts, op, start * HUGE_PAGES, length * HUGE_PAGES, 0)


@njit
def call_bind(s, out, ts, pages, count):
    """Bind the unbound pages among ``pages[:count]`` in one hypercall; return pages bound."""
    n = 0
    for i in range(count):
        p = pages[i]
        if s.bound[p] == 0:
            pages[n] = p
            n += 1
    if n == 0:
        return 0
    emit(s, out, ts, opcodes.CALL, pages[0], n, opcodes.CALL_HYPERCALL)
    emit_runs(s, out, ts, opcodes.BIND, pages, n)
    for i in range(n):
        bind_page(s, pages[i])
    return n


@njit
def call_unbind(s, out, ts, pages, count):
    """Unbind the bound, unallocated pages among ``pages[:count]`` in one hypercall."""
    n = 0
    for i in range(count):
        p = pages[i]
        if s.bound[p] != 0 and s.owner[p] == OWNER_FREE:
            pages[n] = p
            n += 1
    if n == 0:
        return 0
    emit(s, out, ts, opcodes.CALL, pages[0], n, opcodes.CALL_HYPERCALL)
    emit_runs(s, out, ts, opcodes.UNBIND, pages, n)
    for i in range(n):
        unbind_page(s, pages[i])
    return n


# FIFO of page runs the Pager may unbind later (kind FIFO_FREED or FIFO_AHEAD).


@njit
def fifo_len(s, kind):
    return s.meta[K_FIFO_TAIL + kind] - s.meta[K_FIFO_HEAD + kind]


@njit
def fifo_push(s, kind, pfn, nr_pages, ts):
    """Append a run; return False when the FIFO is full."""
    cap = s.fifo_pfn.shape[1]
    if fifo_len(s, kind) >= cap:
        return False
    slot = s.meta[K_FIFO_TAIL + kind] % cap
    s.fifo_pfn[kind, slot] = pfn
    s.fifo_n[kind, slot] = nr_pages
    s.fifo_ts[kind, slot] = ts
    s.meta[K_FIFO_TAIL + kind] += 1
    return True


@njit
def _run_live(s, kind, slot):
    """Return True if a page of the run in ``slot`` is still queued by this run."""
    want = kind + 1
    ts = s.fifo_ts[kind, slot]
    start = s.fifo_pfn[kind, slot]
    for p in range(start, start + s.fifo_n[kind, slot]):
        if s.pending[p] == want and s.pending_ts[p] == ts:
            return True
    return False


@njit
def fifo_head_ts(s, kind):
    """Return the queue time of the oldest live run, dropping dead runs; NEVER if none."""
    cap = s.fifo_pfn.shape[1]
    while fifo_len(s, kind) > 0:
        slot = s.meta[K_FIFO_HEAD + kind] % cap
        if _run_live(s, kind, slot):
            return s.fifo_ts[kind, slot]
        s.meta[K_FIFO_HEAD + kind] += 1
    return NEVER


@njit
def fifo_take(s, kind, max_pages, until_ts, pages, count):
    """Move queued pages, oldest first, into ``pages[count:]``; return the new count.

    Stops after ``max_pages`` pages or at the first run queued after
    ``until_ts``. A page counts only for the run that queued it last;
    pages reallocated or queued again since are skipped.
    """
    cap = s.fifo_pfn.shape[1]
    want = kind + 1
    taken = 0
    while fifo_len(s, kind) > 0 and taken < max_pages:
        slot = s.meta[K_FIFO_HEAD + kind] % cap
        run_ts = s.fifo_ts[kind, slot]
        if run_ts > until_ts:
            break
        start = s.fifo_pfn[kind, slot]
        length = s.fifo_n[kind, slot]
        used = 0
        while used < length and taken < max_pages:
            p = start + used
            used += 1
            if s.pending[p] == want and s.pending_ts[p] == run_ts:
                s.pending[p] = 0
                if kind == FIFO_FREED:
                    s.meta[K_PENDING_FREED] -= 1
                pages[count] = p
                count += 1
                taken += 1
        if used == length:
            s.meta[K_FIFO_HEAD + kind] += 1
        else:
            s.fifo_pfn[kind, slot] = start + used
            s.fifo_n[kind, slot] = length - used
    return count
