"""Free page reporting (LNX mm/page_reporting.c), with the host discarding reported pages.

Pages are bound on touch. A free that leaves a buddy block of at least the
reporting order schedules a pass ``delay`` later (2 s). A pass skips the zone
unless its free pages exceed the low watermark plus ``capacity`` blocks of
the reporting order. Then, for each order from the reporting order up, it
walks the free list from the head, skips reported blocks, and gathers
unreported ones into reports of ``capacity`` blocks; after
``ceil(nr_free / (capacity x budget_divisor)) + 1`` reports of one order it
stops and asks for another pass ``delay`` later. A last, partial report goes
out at the end of the pass. The host discards each reported block
(``MADV_DONTNEED``); the block returns to the tail of its free list marked
reported, and stays reported until it is allocated or merged. Pages on
per-CPU lists are never reported.

On the LLFree and trace placements, which have no buddy lists, the unit is a
2 MiB frame that is entirely free, and there is no zone watermark to check.
"""

from __future__ import annotations

from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit
from paracell.models.memory.buddy import buddy_report_putback
from paracell.models.memory.kstate import (
    K_T_FPR,
    NEVER,
    P_FPR_BUDGET_DIV,
    P_FPR_CAPACITY,
    P_FPR_DELAY,
    P_FPR_ORDER,
    emit,
    unbind_page,
)
from paracell.models.memory.state import (
    BUDDY,
    HUGE_ORDER,
    HUGE_PAGES,
    M_FREE_PAGES,
    M_KIND,
    M_LOW_WMARK,
    M_MERGED_MAX,
    M_NFRAMES,
    M_NPAGES,
    MAX_ORDER,
)


@njit
def fpr_notify(s, g, ts, params):
    """Schedule a pass after a free that left a block of the reporting order.

    Frame placements signal an entirely free 2 MiB frame as order 9.
    """
    threshold = int(params[P_FPR_ORDER]) if g.meta[M_KIND] == BUDDY else HUGE_ORDER
    if g.meta[M_MERGED_MAX] >= threshold and s.meta[K_T_FPR] == NEVER:
        s.meta[K_T_FPR] = ts + int(params[P_FPR_DELAY])


@njit
def fpr_init(s, g):
    """Count every frame free at the start as reported, as after an idle guest's passes."""
    if g.meta[M_KIND] == BUDDY:
        return
    for frame in range(g.meta[M_NFRAMES]):
        if g.frame_free[frame] == HUGE_PAGES:
            s.frame_flag[frame] = 1


@njit
def fpr_before_touch(s, g, pfn, nr_pages):
    """An allocation in a reported frame makes it unreported (frame placements)."""
    if g.meta[M_KIND] == BUDDY:
        return
    for frame in range(pfn >> HUGE_ORDER, ((pfn + nr_pages - 1) >> HUGE_ORDER) + 1):
        s.frame_flag[frame] = 0


@njit
def _send_report(s, out, g, ts, blocks, orders, count):
    """Emit one report of ``count`` blocks and let the host discard them."""
    total = 0
    for k in range(count):
        total += 1 << orders[k]
    emit(s, out, ts, opcodes.CALL, blocks[0], total, opcodes.CALL_REPORT)
    is_buddy = g.meta[M_KIND] == BUDDY
    for k in range(count):
        start = blocks[k]
        size = 1 << orders[k]
        emit(s, out, ts, opcodes.UNBIND, start, size, 0)
        for p in range(start, start + size):
            unbind_page(s, p)
        if is_buddy:
            buddy_report_putback(g, start, orders[k])
        else:
            s.frame_flag[start >> HUGE_ORDER] = 1


@njit
def _watermark_ok(g, capacity, order):
    return g.meta[M_FREE_PAGES] >= g.meta[M_LOW_WMARK] + (capacity << order)


@njit
def fpr_fire(s, out, g, ts, params):
    """Run one reporting pass at ``ts``."""
    capacity = int(params[P_FPR_CAPACITY])
    min_order = int(params[P_FPR_ORDER])
    divisor = int(params[P_FPR_BUDGET_DIV])
    s.meta[K_T_FPR] = NEVER
    if g.meta[M_KIND] == BUDDY and not _watermark_ok(g, capacity, min_order):
        return
    blocks = s.scratch2
    orders = s.scratch2[capacity:]
    sg = 0
    requested = False
    if g.meta[M_KIND] == BUDDY:
        for order in range(min_order, MAX_ORDER + 1):
            nr_free = g.fl_nr[order]
            budget = (nr_free + capacity * divisor - 1) // (capacity * divisor)
            # Snapshot the unreported blocks: reporting moves blocks to the tail.
            n = 0
            pfn = g.fl_head[order]
            while pfn >= 0:
                if g.breported[pfn] == 0:
                    s.scratch[n] = pfn
                    n += 1
                pfn = g.nxt[pfn]
            for i in range(n):
                if budget < 0:
                    requested = True
                    break
                blocks[sg] = s.scratch[i]
                orders[sg] = order
                sg += 1
                if sg == capacity:
                    _send_report(s, out, g, ts, blocks, orders, sg)
                    sg = 0
                    budget -= 1
    else:
        nr_frames = g.meta[M_NFRAMES]
        nr_free = 0
        for frame in range(nr_frames):
            if g.frame_free[frame] == HUGE_PAGES:
                nr_free += 1
        budget = (nr_free + capacity * divisor - 1) // (capacity * divisor)
        for frame in range(nr_frames):
            if g.frame_free[frame] != HUGE_PAGES or s.frame_flag[frame] != 0:
                continue
            if (frame + 1) * HUGE_PAGES > g.meta[M_NPAGES]:
                continue
            if budget < 0:
                requested = True
                break
            blocks[sg] = frame * HUGE_PAGES
            orders[sg] = HUGE_ORDER
            sg += 1
            if sg == capacity:
                _send_report(s, out, g, ts, blocks, orders, sg)
                sg = 0
                budget -= 1
    if sg > 0:
        _send_report(s, out, g, ts, blocks, orders, sg)
    if requested:
        s.meta[K_T_FPR] = ts + int(params[P_FPR_DELAY])
