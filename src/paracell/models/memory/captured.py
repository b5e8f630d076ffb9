"""The `trace` placement: pages sit where the capturing machine's allocator put them.

The captured pfns are compacted (see ``events.py``) but keep their offsets
inside each 4 MiB block, so 2 MiB frames and buddy alignment survive. The
allocator here only records which pages are in use; it never chooses, except
for pages the balloon driver takes, which come from the top of the space
downwards.
"""

from __future__ import annotations

from paracell.models.memory._jit import njit
from paracell.models.memory.state import (
    HUGE_ORDER,
    HUGE_PAGES,
    M_CURSOR,
    M_FREE_PAGES,
    M_MERGED_MAX,
    M_NFRAMES,
    M_NPAGES,
)


@njit
def cap_init(g, first_free):
    """Mark ``[0, first_free)`` in use and fill the per-frame free counters."""
    nr_pages = g.meta[M_NPAGES]
    for p in range(first_free):
        g.used[p] = 1
    for f in range(g.meta[M_NFRAMES]):
        end = min((f + 1) * HUGE_PAGES, nr_pages)
        free = 0
        for p in range(f * HUGE_PAGES, end):
            if g.used[p] == 0:
                free += 1
        g.frame_free[f] = free
        g.meta[M_FREE_PAGES] += free


@njit
def cap_take(g, pfn, nr_pages):
    """Mark the free pages of ``[pfn, pfn + nr_pages)`` in use."""
    for p in range(pfn, pfn + nr_pages):
        if g.used[p] == 0:
            g.used[p] = 1
            g.frame_free[p >> HUGE_ORDER] -= 1
            g.meta[M_FREE_PAGES] -= 1


@njit
def cap_release(g, pfn, nr_pages):
    """Mark the pages of ``[pfn, pfn + nr_pages)`` free."""
    for p in range(pfn, pfn + nr_pages):
        if g.used[p] != 0:
            g.used[p] = 0
            frame = p >> HUGE_ORDER
            g.frame_free[frame] += 1
            g.meta[M_FREE_PAGES] += 1
            if g.frame_free[frame] == HUGE_PAGES:
                g.meta[M_MERGED_MAX] = HUGE_ORDER


@njit
def cap_take_any(g):
    """Take one free page for the balloon, scanning down from the last one taken; -1 if none."""
    nr_pages = g.meta[M_NPAGES]
    cursor = g.meta[M_CURSOR]
    for _ in range(nr_pages):
        if g.used[cursor] == 0:
            cap_take(g, cursor, 1)
            g.meta[M_CURSOR] = cursor - 1 if cursor > 0 else nr_pages - 1
            return cursor
        cursor = cursor - 1 if cursor > 0 else nr_pages - 1
    return -1
