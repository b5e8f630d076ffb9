"""HyperAlloc (HA25): whole 2 MiB frames installed on use and reclaimed when free.

The guest allocator's state is shared with the host. An allocation that lands
in a frame the host has not installed asks the host to install the whole
frame (one hypercall per frame, about 0.5 ms each). Every ``period`` (5 s)
the host reclaims each installed frame that the allocator shows entirely
free, and marks it reclaimed in the shared state; the LLFree placement then
prefers installed frames.

On the buddy placement a frame counts as free when all its pages sit in the
buddy free lists (pages on per-CPU lists are allocated from the buddy's
point of view); on the trace placement, when no page of it is allocated.
"""

from __future__ import annotations

from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit
from paracell.models.memory.kstate import (
    K_RECLAIM_PAGES,
    K_T_HA,
    P_HA_PERIOD,
    bind_page,
    emit_frame_runs,
    unbind_page,
)
from paracell.models.memory.state import HUGE_ORDER, HUGE_PAGES, M_NFRAMES


@njit
def hyperalloc_init(s, g, ts, params):
    """Frames holding pages bound before the trace are installed; the rest are not."""
    for frame in range(g.meta[M_NFRAMES]):
        installed = s.frame_bound[frame] > 0
        s.frame_flag[frame] = 1 if installed else 0
        g.frame_evicted[frame] = 0 if installed else 1
    s.meta[K_T_HA] = ts + int(params[P_HA_PERIOD])


@njit
def hyperalloc_before_touch(s, out, g, ts, pfn, nr_pages):
    n = 0
    for frame in range(pfn >> HUGE_ORDER, ((pfn + nr_pages - 1) >> HUGE_ORDER) + 1):
        if s.frame_flag[frame] == 0:
            s.scratch2[n] = frame
            n += 1
            s.frame_flag[frame] = 1
            g.frame_evicted[frame] = 0
            for p in range(frame * HUGE_PAGES, (frame + 1) * HUGE_PAGES):
                bind_page(s, p)
    emit_frame_runs(s, out, ts, opcodes.INSTALL_2M, s.scratch2, n)


@njit
def hyperalloc_fire(s, out, g, ts, params):
    """Reclaim every installed frame that is entirely free in the allocator."""
    s.meta[K_T_HA] = ts + int(params[P_HA_PERIOD])
    n = 0
    for frame in range(g.meta[M_NFRAMES]):
        if s.frame_flag[frame] != 0 and g.frame_free[frame] == HUGE_PAGES:
            s.scratch2[n] = frame
            n += 1
            s.frame_flag[frame] = 0
            g.frame_evicted[frame] = 1
            for p in range(frame * HUGE_PAGES, (frame + 1) * HUGE_PAGES):
                s.meta[K_RECLAIM_PAGES] += unbind_page(s, p)
    emit_frame_runs(s, out, ts, opcodes.RECLAIM_2M, s.scratch2, n)
