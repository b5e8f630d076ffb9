"""Policies without reclaim: ``static`` (4 KiB on first touch) and ``thp`` (2 MiB on first touch).

``static`` needs no hook: the replay's TOUCH binds each unbound page with a
secondary fault. ``thp`` turns the first touch of a 2 MiB frame into one
2 MiB fault that binds the whole frame, as a host backing guest memory with
transparent huge pages does.
"""

from __future__ import annotations

from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit
from paracell.models.memory.kstate import bind_page, emit
from paracell.models.memory.state import HUGE_ORDER, HUGE_PAGES, M_NPAGES


@njit
def thp_before_touch(s, out, g, ts, pfn, nr_pages):
    nr_guest = g.meta[M_NPAGES]
    for frame in range(pfn >> HUGE_ORDER, ((pfn + nr_pages - 1) >> HUGE_ORDER) + 1):
        start = frame * HUGE_PAGES
        end = min(start + HUGE_PAGES, nr_guest)
        if s.frame_bound[frame] < end - start:
            emit(s, out, ts, opcodes.FAULT_2M, start, HUGE_PAGES, 0)
            for p in range(start, end):
                bind_page(s, p)
