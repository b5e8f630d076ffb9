"""Host-side DAMON_RECLAIM (LNX mm/damon/reclaim.c) on the guest's memory.

Pages are bound on touch. The guest's memory is split into fixed regions of
``region_frames`` 2 MiB frames (DAMON adapts its regions between 10 and
``max_nr_regions``; the model fixes them at that bound). A region counts as
accessed while the guest has any page of it allocated, and as not accessed
once it has none, since the host cannot tell a free page from an idle one.
Every aggregation interval, regions not accessed for ``min_age`` are paged
out, oldest first, within ``quota`` pages per quota interval.

NOTE: DAMON really samples accesses and would also page out allocated but
idle pages; the trace does not record accesses to allocated pages, so the
model never reclaims them. Pageout is modelled as MADV_DONTNEED (no swap
traffic), and a later touch of a paged-out page as an ordinary secondary
fault.
"""

from __future__ import annotations

from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit, sort_prefix
from paracell.models.memory.kstate import (
    K_DAMON_QUOTA_USED,
    K_RECLAIM_PAGES,
    K_T_START,
    K_T_DAMON,
    K_T_DAMON_QUOTA,
    OWNER_FREE,
    P_DAMON_AGGR,
    P_DAMON_MIN_AGE,
    P_DAMON_QUOTA,
    P_DAMON_QUOTA_INTERVAL,
    P_DAMON_REGION_FRAMES,
    emit_runs,
    unbind_page,
)
from paracell.models.memory.state import HUGE_ORDER, HUGE_PAGES, M_NFRAMES, M_NPAGES


@njit
def _region_sum(arr, region, region_frames, nr_frames):
    total = 0
    for f in range(region * region_frames, min((region + 1) * region_frames, nr_frames)):
        total += arr[f]
    return total


@njit
def damon_init(s, g, ts, params):
    region_frames = int(params[P_DAMON_REGION_FRAMES])
    nr_frames = g.meta[M_NFRAMES]
    for r in range(s.region_free_since.size):
        busy = _region_sum(s.frame_alloc, r, region_frames, nr_frames) > 0
        s.region_free_since[r] = -1 if busy else ts
    s.meta[K_T_DAMON] = ts + int(params[P_DAMON_AGGR])
    s.meta[K_T_DAMON_QUOTA] = ts + int(params[P_DAMON_QUOTA_INTERVAL])


@njit
def damon_after_touch(s, params, pfn, nr_pages):
    region_frames = int(params[P_DAMON_REGION_FRAMES])
    first = (pfn >> HUGE_ORDER) // region_frames
    last = ((pfn + nr_pages - 1) >> HUGE_ORDER) // region_frames
    for r in range(first, last + 1):
        s.region_free_since[r] = -1


@njit
def damon_on_free(s, g, ts, params, pfn, nr_pages):
    region_frames = int(params[P_DAMON_REGION_FRAMES])
    nr_frames = g.meta[M_NFRAMES]
    first = (pfn >> HUGE_ORDER) // region_frames
    last = ((pfn + nr_pages - 1) >> HUGE_ORDER) // region_frames
    for r in range(first, last + 1):
        if _region_sum(s.frame_alloc, r, region_frames, nr_frames) == 0:
            s.region_free_since[r] = ts


@njit
def damon_fire(s, out, g, ts, params):
    """One aggregation step: page out cold regions within the quota."""
    interval = int(params[P_DAMON_QUOTA_INTERVAL])
    while s.meta[K_T_DAMON_QUOTA] <= ts:
        s.meta[K_T_DAMON_QUOTA] += interval
        s.meta[K_DAMON_QUOTA_USED] = 0
    s.meta[K_T_DAMON] = ts + int(params[P_DAMON_AGGR])
    min_age = int(params[P_DAMON_MIN_AGE])
    quota = int(params[P_DAMON_QUOTA])
    region_frames = int(params[P_DAMON_REGION_FRAMES])
    nr_frames = g.meta[M_NFRAMES]
    nr_pages = g.meta[M_NPAGES]
    n = 0
    for r in range(s.region_free_since.size):
        since = s.region_free_since[r]
        if since < 0 or ts - since < min_age:
            continue
        if _region_sum(s.frame_bound, r, region_frames, nr_frames) == 0:
            continue
        s.scratch2[n] = r
        n += 1
    if n == 0:
        return
    # Oldest first: sort keys that pack the idle-since time above the region.
    nr_regions = s.region_free_since.size
    for i in range(n):
        r = s.scratch2[i]
        s.scratch2[i] = (s.region_free_since[r] - s.meta[K_T_START]) * nr_regions + r
    sort_prefix(s.scratch2, n)
    count = 0
    for i in range(n):
        r = s.scratch2[i] % nr_regions
        start = r * region_frames * HUGE_PAGES
        end = min(start + region_frames * HUGE_PAGES, nr_pages)
        for p in range(start, end):
            if s.meta[K_DAMON_QUOTA_USED] >= quota:
                break
            if s.bound[p] != 0 and s.owner[p] == OWNER_FREE:
                s.scratch[count] = p
                count += 1
                s.meta[K_DAMON_QUOTA_USED] += 1
        if s.meta[K_DAMON_QUOTA_USED] >= quota:
            break
    emit_runs(s, out, ts, opcodes.UNBIND, s.scratch, count)
    for i in range(count):
        unbind_page(s, s.scratch[i])
    s.meta[K_RECLAIM_PAGES] += count
