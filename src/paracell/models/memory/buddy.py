"""A Linux-like buddy allocator with per-CPU lists, for one zone.

It follows mm/page_alloc.c of Linux 6.x (LNX) where that decides placement:

- free lists per order; an allocation takes the first block of the smallest
  order that fits and splits it, putting the upper halves at the head of the
  lower lists (``expand()``);
- a free merges with its buddy while the buddy is a free block of the same
  order, then goes to the head of its list, or to the tail when the buddy of
  the merged block is free one order up (``buddy_merge_likely()``) or when
  the caller asks for the tail (blocks coming back from free page reporting);
- orders 0-3 and 9 go through per-CPU lists: allocation takes the most
  recently freed block (LIFO), an empty list is refilled with
  ``max(batch >> order, 2)`` blocks, and once a CPU holds ``high`` pages a
  free drains ``batch`` pages, oldest first, round-robin over the lists.

NOTE: Linux 6.7+ scales refills and drains with pcp->alloc_factor and
free_count and tunes ``high`` between high_min and high_max; the model keeps
the fixed batch and the boot-time ``high``. Migratetypes and zones are not
modelled: the guest is one zone of movable memory.
"""

from __future__ import annotations

from paracell.models.memory._jit import njit
from paracell.models.memory.state import (
    HUGE_ORDER,
    HUGE_PAGES,
    M_BATCH,
    M_FREE_PAGES,
    M_HIGH,
    M_MERGED_MAX,
    M_NCPU,
    M_NPAGES,
    M_PCP_CAP,
    M_SEV_N,
    MAX_ORDER,
    NR_PCP_LISTS,
    PCP_HUGE_INDEX,
    SEV_DRAIN,
    SEV_REFILL,
)


@njit
def frames_adjust(g, pfn, nr_pages, delta_sign):
    """Add ``delta_sign`` x the pages of ``[pfn, pfn + nr_pages)`` to frame_free."""
    if nr_pages >= HUGE_PAGES:
        first = pfn >> HUGE_ORDER
        for f in range(first, first + nr_pages // HUGE_PAGES):
            g.frame_free[f] += delta_sign * HUGE_PAGES
    else:
        g.frame_free[pfn >> HUGE_ORDER] += delta_sign * nr_pages


@njit
def fl_add(g, pfn, order, tail, reported):
    """Put the free block at ``pfn`` on the list of ``order``."""
    g.border[pfn] = order
    g.breported[pfn] = reported
    if tail:
        last = g.fl_tail[order]
        g.prv[pfn] = last
        g.nxt[pfn] = -1
        if last >= 0:
            g.nxt[last] = pfn
        else:
            g.fl_head[order] = pfn
        g.fl_tail[order] = pfn
    else:
        first = g.fl_head[order]
        g.nxt[pfn] = first
        g.prv[pfn] = -1
        if first >= 0:
            g.prv[first] = pfn
        else:
            g.fl_tail[order] = pfn
        g.fl_head[order] = pfn
    g.fl_nr[order] += 1
    g.meta[M_FREE_PAGES] += 1 << order
    frames_adjust(g, pfn, 1 << order, 1)


@njit
def fl_del(g, pfn, order):
    """Take the free block at ``pfn`` off its list; it is no longer a buddy block."""
    before = g.prv[pfn]
    after = g.nxt[pfn]
    if before >= 0:
        g.nxt[before] = after
    else:
        g.fl_head[order] = after
    if after >= 0:
        g.prv[after] = before
    else:
        g.fl_tail[order] = before
    g.nxt[pfn] = -1
    g.prv[pfn] = -1
    g.border[pfn] = -1
    g.breported[pfn] = 0
    g.fl_nr[order] -= 1
    g.meta[M_FREE_PAGES] -= 1 << order
    frames_adjust(g, pfn, 1 << order, -1)


@njit
def buddy_init(g, first_free):
    """Free ``[first_free, nr_pages)`` as the largest aligned blocks, lowest pfn first.

    The blocks start out reported: a guest idle before the trace would have
    reported all of them already.
    """
    nr_pages = g.meta[M_NPAGES]
    pfn = first_free
    while pfn < nr_pages:
        order = MAX_ORDER
        while order > 0 and ((pfn & ((1 << order) - 1)) != 0 or pfn + (1 << order) > nr_pages):
            order -= 1
        fl_add(g, pfn, order, True, 1)
        pfn += 1 << order


@njit
def rmqueue_smallest(g, order):
    """Take a block of ``order`` from the free lists, splitting a larger one; -1 if none."""
    current = order
    while current <= MAX_ORDER:
        pfn = g.fl_head[current]
        if pfn >= 0:
            fl_del(g, pfn, current)
            while current > order:
                current -= 1
                fl_add(g, pfn + (1 << current), current, False, 0)
            return pfn
        current += 1
    return -1


@njit
def _is_free_block(g, pfn, order):
    return 0 <= pfn < g.meta[M_NPAGES] and g.border[pfn] == order


@njit
def free_one(g, pfn, order, to_tail):
    """Return a block to the free lists, merging with free buddies; return the final order."""
    while order < MAX_ORDER:
        buddy = pfn ^ (1 << order)
        if not _is_free_block(g, buddy, order):
            break
        fl_del(g, buddy, order)
        pfn = pfn & buddy
        order += 1
    if not to_tail and order < MAX_ORDER - 1:
        # buddy_merge_likely(): keep the block free longer when the buddy of
        # the next larger block is free, so the two can merge later.
        higher = pfn & ~((1 << (order + 1)) - 1)
        higher_buddy = higher ^ (1 << (order + 1))
        to_tail = _is_free_block(g, higher_buddy, order + 1)
    fl_add(g, pfn, order, to_tail, 0)
    if order > g.meta[M_MERGED_MAX]:
        g.meta[M_MERGED_MAX] = order
    return order


@njit
def pcp_index(order):
    """Return the per-CPU list index of ``order``, or -1 if it bypasses the lists."""
    if order <= 3:
        return order
    if order == HUGE_ORDER:
        return PCP_HUGE_INDEX
    return -1


@njit
def pcp_order(index):
    return HUGE_ORDER if index == PCP_HUGE_INDEX else index


@njit
def sev_push(g, kind, pfn, order):
    n = g.meta[M_SEV_N]
    g.sev_kind[n] = kind
    g.sev_pfn[n] = pfn
    g.sev_order[n] = order
    g.meta[M_SEV_N] = n + 1


@njit
def _pcp_push_head(g, cpu, index, pfn):
    cap = g.meta[M_PCP_CAP]
    start = (g.pcp_start[cpu, index] - 1) % cap
    g.pcp_buf[cpu, index, start] = pfn
    g.pcp_start[cpu, index] = start
    g.pcp_len[cpu, index] += 1


@njit
def _pcp_push_tail(g, cpu, index, pfn):
    cap = g.meta[M_PCP_CAP]
    slot = (g.pcp_start[cpu, index] + g.pcp_len[cpu, index]) % cap
    g.pcp_buf[cpu, index, slot] = pfn
    g.pcp_len[cpu, index] += 1


@njit
def _pcp_pop_head(g, cpu, index):
    cap = g.meta[M_PCP_CAP]
    start = g.pcp_start[cpu, index]
    pfn = g.pcp_buf[cpu, index, start]
    g.pcp_start[cpu, index] = (start + 1) % cap
    g.pcp_len[cpu, index] -= 1
    return pfn


@njit
def _pcp_pop_tail(g, cpu, index):
    cap = g.meta[M_PCP_CAP]
    g.pcp_len[cpu, index] -= 1
    slot = (g.pcp_start[cpu, index] + g.pcp_len[cpu, index]) % cap
    return g.pcp_buf[cpu, index, slot]


@njit
def rmqueue_pcplist(g, cpu, order):
    """Allocate from the CPU's list of ``order``, refilling it from the free lists if empty."""
    index = pcp_index(order)
    if g.pcp_len[cpu, index] == 0:
        count = max(g.meta[M_BATCH] >> order, 2)
        for _ in range(count):
            pfn = rmqueue_smallest(g, order)
            if pfn < 0:
                break
            _pcp_push_tail(g, cpu, index, pfn)
            g.pcp_count[cpu] += 1 << order
            sev_push(g, SEV_REFILL, pfn, order)
        if g.pcp_len[cpu, index] == 0:
            return -1
    g.pcp_count[cpu] -= 1 << order
    return _pcp_pop_head(g, cpu, index)


@njit
def free_pcppages_bulk(g, cpu, nr_pages):
    """Move at least ``nr_pages`` pages, oldest first, from the CPU's lists to the buddy."""
    freed = 0
    empty_rounds = 0
    index = g.pcp_rr[cpu]
    while freed < nr_pages and g.pcp_count[cpu] > 0 and empty_rounds < NR_PCP_LISTS:
        index = (index + 1) % NR_PCP_LISTS
        if g.pcp_len[cpu, index] == 0:
            empty_rounds += 1
            continue
        empty_rounds = 0
        order = pcp_order(index)
        pfn = _pcp_pop_tail(g, cpu, index)
        g.pcp_count[cpu] -= 1 << order
        freed += 1 << order
        sev_push(g, SEV_DRAIN, pfn, order)
        free_one(g, pfn, order, False)
    g.pcp_rr[cpu] = index


@njit
def drain_all(g):
    """Empty every per-CPU list into the buddy (drain_all_pages())."""
    for cpu in range(g.meta[M_NCPU]):
        free_pcppages_bulk(g, cpu, g.pcp_count[cpu])


@njit
def buddy_alloc(g, cpu, order):
    """Allocate a block of ``order`` for ``cpu``; -1 if the guest has none left."""
    for attempt in range(2):
        if pcp_index(order) >= 0:
            pfn = rmqueue_pcplist(g, cpu, order)
        else:
            pfn = rmqueue_smallest(g, order)
        if pfn >= 0:
            return pfn
        if attempt == 0:
            # Under memory pressure Linux drains the per-CPU lists and retries.
            drain_all(g)
    return -1


@njit
def buddy_free(g, cpu, pfn, order):
    """Free a block: to the CPU's list for cached orders, else straight to the buddy."""
    index = pcp_index(order)
    if index < 0:
        free_one(g, pfn, order, False)
        return
    _pcp_push_head(g, cpu, index, pfn)
    g.pcp_count[cpu] += 1 << order
    if g.pcp_count[cpu] >= g.meta[M_HIGH]:
        free_pcppages_bulk(g, cpu, g.meta[M_BATCH])


@njit
def buddy_peek(g, cpu, order, out, max_pages):
    """Write the pfns the CPU's list will hand out next for ``order``; return their count.

    Only whole blocks are listed, so the count is a multiple of ``2**order``.
    """
    index = pcp_index(order)
    if index < 0:
        return 0
    cap = g.meta[M_PCP_CAP]
    n = 0
    size = 1 << order
    for k in range(g.pcp_len[cpu, index]):
        if n + size > max_pages:
            break
        head = g.pcp_buf[cpu, index, (g.pcp_start[cpu, index] + k) % cap]
        for j in range(size):
            out[n] = head + j
            n += 1
    return n


@njit
def buddy_report_putback(g, pfn, order):
    """Return an isolated, reported block to the tail of its list, marked reported."""
    fl_del(g, pfn, order)
    fl_add(g, pfn, order, True, 1)
