"""ParaCell's Pager (PC26): bind ahead at the allocator hook, unbind freed pages in batches.

Binding. The container kernel's allocator tells the Pager about every
allocation before the pages are written, so nothing faults:

- at a per-CPU list refill (the modelled refill on the buddy placement, the
  recorded ``mm_page_alloc_zone_locked`` refills on the trace placement) the
  Pager binds every unbound page of the refill in one call;
- at an allocation that finds unbound pages, it binds them in one call
  together with the pages the allocator hands out next, up to ``bind_batch``
  pages (the head of the per-CPU list on buddy, the following free pages of
  the frame on LLFree, nothing on the trace placement).

Pages bound ahead of use are queued; if still unallocated after
``unbind_delay`` they are unbound again.

Unbinding. Freed pages are queued (4 KiB granularity). When more than
``reserve + unbind_batch`` are queued, the oldest are unbound in one call so
that the ``reserve`` most recent stay bound for reuse. When the oldest queued
page has waited ``unbind_delay``, every queued freed page is unbound in one
call, the reserve included, so an idle guest keeps no waste.

None of these parameters is published (PC26 gives results only); they are
estimates in the cost table.
"""

from __future__ import annotations

from paracell.models.memory._jit import njit, sort_prefix
from paracell.models.memory.guest import guest_peek
from paracell.models.memory.kstate import (
    FIFO_AHEAD,
    FIFO_FREED,
    K_FIFO_FORCED,
    K_PENDING_FREED,
    NEVER,
    OWNER_FREE,
    P_PG_BIND_BATCH,
    P_PG_DELAY,
    P_PG_RESERVE,
    P_PG_UNBIND_BATCH,
    P_PG_USE_REFILL,
    call_bind,
    call_unbind,
    fifo_head_ts,
    fifo_push,
    fifo_take,
)
from paracell.models.memory.state import M_SEV_N, SEV_REFILL


@njit
def _queue_run(s, kind, start, length, ts):
    if not fifo_push(s, kind, start, length, ts):
        # A full queue cannot happen with the sizes the replay allocates; if
        # it does, flushing everything keeps the model correct.
        s.meta[K_FIFO_FORCED] += 1
        return False
    return True


@njit
def _queue_ahead(s, ts, pages, count):
    """Queue ``pages[:count]`` (sorted, just bound) as bound ahead of use."""
    if count == 0:
        return
    start = pages[0]
    length = 0
    for i in range(count):
        p = pages[i]
        s.pending[p] = FIFO_AHEAD + 1
        s.pending_ts[p] = ts
        if p == start + length:
            length += 1
        else:
            _queue_run(s, FIFO_AHEAD, start, length, ts)
            start = p
            length = 1
    _queue_run(s, FIFO_AHEAD, start, length, ts)


@njit
def _bind_ahead(s, out, ts, pages, count):
    """Bind the free, unbound pages among ``pages[:count]`` in one call and queue them."""
    n = 0
    for i in range(count):
        p = pages[i]
        if s.bound[p] == 0 and s.owner[p] == OWNER_FREE:
            pages[n] = p
            n += 1
    n = call_bind(s, out, ts, pages, n)
    _queue_ahead(s, ts, pages, n)


@njit
def pager_on_refill(s, out, g, ts, params):
    """Bind the blocks the allocator just moved to a per-CPU list."""
    if params[P_PG_USE_REFILL] == 0:
        return
    n = 0
    for k in range(g.meta[M_SEV_N]):
        if g.sev_kind[k] == SEV_REFILL:
            base = g.sev_pfn[k]
            for j in range(1 << g.sev_order[k]):
                s.scratch[n] = base + j
                n += 1
    _bind_ahead(s, out, ts, s.scratch, n)


@njit
def pager_on_recorded_refill(s, out, ts, params, count):
    """Bind the pages of recorded refills (``s.refill[:count]``), trace placement."""
    if params[P_PG_USE_REFILL] == 0 or count == 0:
        return
    for i in range(count):
        s.scratch[i] = s.refill[i]
    _bind_ahead(s, out, ts, s.scratch, count)


@njit
def pager_before_touch(s, out, g, ts, params, pfn, nr_pages, cpu, order):
    """Bind the allocation's unbound pages, with the next pages of the allocator."""
    n = 0
    for p in range(pfn, pfn + nr_pages):
        if s.bound[p] == 0:
            s.scratch[n] = p
            n += 1
    if n == 0:
        return
    extra = int(params[P_PG_BIND_BATCH]) - n
    nr_ahead = 0
    if extra > 0:
        found = guest_peek(g, cpu, order, pfn + nr_pages, s.scratch2, extra)
        for i in range(found):
            p = s.scratch2[i]
            if p < pfn or p >= pfn + nr_pages:
                if s.bound[p] == 0 and s.owner[p] == OWNER_FREE:
                    s.scratch2[nr_ahead] = p
                    nr_ahead += 1
                    s.scratch[n] = p
                    n += 1
    call_bind(s, out, ts, s.scratch, n)
    if nr_ahead > 0:
        sort_prefix(s.scratch2, nr_ahead)
        _queue_ahead(s, ts, s.scratch2, nr_ahead)


@njit
def pager_after_touch(s, pfn, nr_pages):
    for p in range(pfn, pfn + nr_pages):
        if s.pending[p] != 0:
            if s.pending[p] == FIFO_FREED + 1:
                s.meta[K_PENDING_FREED] -= 1
            s.pending[p] = 0


@njit
def _flush_all(s, out, ts):
    n = fifo_take(s, FIFO_FREED, NEVER, NEVER, s.scratch, 0)
    n = fifo_take(s, FIFO_AHEAD, NEVER, NEVER, s.scratch, n)
    call_unbind(s, out, ts, s.scratch, n)


@njit
def pager_on_free(s, out, ts, params, pfn, nr_pages):
    """Queue freed pages and unbind a batch once the queue passes reserve + batch."""
    added = 0
    for p in range(pfn, pfn + nr_pages):
        if s.bound[p] != 0:
            s.pending[p] = FIFO_FREED + 1
            s.pending_ts[p] = ts
            added += 1
    if added == 0:
        return
    if not _queue_run(s, FIFO_FREED, pfn, nr_pages, ts):
        # Unbinding everything queued makes room for this run.
        _flush_all(s, out, ts)
        _queue_run(s, FIFO_FREED, pfn, nr_pages, ts)
    s.meta[K_PENDING_FREED] += added
    reserve = int(params[P_PG_RESERVE])
    batch = max(int(params[P_PG_UNBIND_BATCH]), 1)
    if s.meta[K_PENDING_FREED] >= reserve + batch:
        take = s.meta[K_PENDING_FREED] - reserve
        n = fifo_take(s, FIFO_FREED, take, NEVER, s.scratch, 0)
        call_unbind(s, out, ts, s.scratch, n)


@njit
def pager_next_timer(s, params):
    oldest = min(fifo_head_ts(s, FIFO_FREED), fifo_head_ts(s, FIFO_AHEAD))
    if oldest == NEVER:
        return NEVER
    return oldest + int(params[P_PG_DELAY])


@njit
def pager_fire(s, out, ts, params):
    """Unbind every queued freed page and the pages bound ahead at least ``delay`` ago."""
    delay = int(params[P_PG_DELAY])
    n = fifo_take(s, FIFO_FREED, NEVER, NEVER, s.scratch, 0)
    n = fifo_take(s, FIFO_AHEAD, NEVER, ts - delay, s.scratch, n)
    call_unbind(s, out, ts, s.scratch, n)
