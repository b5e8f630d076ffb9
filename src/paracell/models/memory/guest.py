"""One entry point per allocator operation, dispatching on the placement kind."""

from __future__ import annotations

from paracell.models.memory._jit import njit
from paracell.models.memory.buddy import buddy_alloc, buddy_free, buddy_init, buddy_peek
from paracell.models.memory.captured import cap_init, cap_release, cap_take, cap_take_any
from paracell.models.memory.llfree import llf_get, llf_init, llf_peek, llf_put
from paracell.models.memory.state import (
    BUDDY,
    LLFREE,
    M_KIND,
    M_MERGED_MAX,
    M_SEV_N,
)


@njit
def guest_init(g, first_free):
    """Set up the free structures with ``[0, first_free)`` already allocated."""
    kind = g.meta[M_KIND]
    if kind == BUDDY:
        buddy_init(g, first_free)
    elif kind == LLFREE:
        llf_init(g, first_free)
    else:
        cap_init(g, first_free)


@njit
def reset_side_events(g):
    g.meta[M_SEV_N] = 0
    g.meta[M_MERGED_MAX] = -1


@njit
def guest_alloc(g, cpu, order):
    """Let the placement's allocator choose a block of ``order``; -1 if none fits.

    The captured placement has no choice to make and takes any free page
    (order 0 only), which only the balloon driver asks for.
    """
    reset_side_events(g)
    kind = g.meta[M_KIND]
    if kind == BUDDY:
        return buddy_alloc(g, cpu, order)
    if kind == LLFREE:
        return llf_get(g, cpu, order)
    return cap_take_any(g)


@njit
def guest_take(g, pfn, nr_pages):
    """Mark ``[pfn, pfn + nr_pages)`` allocated on the captured placement."""
    reset_side_events(g)
    cap_take(g, pfn, nr_pages)


@njit
def guest_free(g, cpu, pfn, order):
    """Free a block; side events and the highest merged order describe this call only."""
    reset_side_events(g)
    kind = g.meta[M_KIND]
    if kind == BUDDY:
        buddy_free(g, cpu, pfn, order)
    elif kind == LLFREE:
        llf_put(g, cpu, pfn, order)
    else:
        cap_release(g, pfn, 1 << order)


@njit
def guest_peek(g, cpu, order, after_pfn, out, max_pages):
    """Write the pages the allocator will hand ``cpu`` next; return their count.

    Nothing is known for the captured placement.
    """
    kind = g.meta[M_KIND]
    if kind == BUDDY:
        return buddy_peek(g, cpu, order, out, max_pages)
    if kind == LLFREE:
        return llf_peek(g, after_pfn, out, max_pages)
    return 0
