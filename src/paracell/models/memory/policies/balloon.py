"""virtio-balloon driven by a host controller.

Pages are bound on touch. Every ``period`` the controller sets the balloon
target to guest RAM minus (allocated + ``headroom``). Below target, the guest
balloon driver allocates pages from its own allocator in requests of
``chunk`` pages, no faster than ``rate``, and the host discards the bound
ones. Above target, it deflates at once (the guest frees balloon pages; the
host does nothing until they are touched again). An allocation that finds
no free memory deflates ``chunk`` pages and retries, as
VIRTIO_BALLOON_F_DEFLATE_ON_OOM does.

The balloon starts inflated to its target, as it would be in a guest that
sat idle before the trace. Those pages were never bound, so that costs
nothing.
"""

from __future__ import annotations

from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit
from paracell.models.memory.buddy import rmqueue_smallest
from paracell.models.memory.captured import cap_take_any
from paracell.models.memory.guest import guest_alloc, guest_free
from paracell.models.memory.kstate import (
    K_ALLOC_PAGES,
    K_BAL_OOM_DEFLATIONS,
    K_BAL_PAGES,
    K_BAL_RUNS,
    K_BAL_TARGET,
    K_T_BAL_CTRL,
    K_T_BAL_INFLATE,
    NEVER,
    OWNER_BALLOON,
    OWNER_FREE,
    P_BAL_CHUNK,
    P_BAL_HEADROOM,
    P_BAL_NS_PER_PAGE,
    P_BAL_PERIOD,
    emit,
    emit_runs,
    set_owner,
    unbind_page,
)
from paracell.models.memory.llfree import llf_get
from paracell.models.memory.state import BUDDY, LLFREE, M_KIND, M_NPAGES, MAX_ORDER


@njit
def _compact_stack(s):
    """Drop pages the workload took from the balloon (trace placement) and merge runs."""
    out = 0
    for i in range(s.meta[K_BAL_RUNS]):
        start = s.bal_pfn[i]
        for p in range(start, start + s.bal_n[i]):
            if s.owner[p] != OWNER_BALLOON:
                continue
            if out > 0 and s.bal_pfn[out - 1] + s.bal_n[out - 1] == p:
                s.bal_n[out - 1] += 1
            else:
                s.bal_pfn[out] = p
                s.bal_n[out] = 1
                out += 1
    s.meta[K_BAL_RUNS] = out


@njit
def _push_run(s, pfn, nr_pages):
    """Record balloon pages, extending the top run when contiguous."""
    top = s.meta[K_BAL_RUNS]
    if top == s.bal_pfn.size:
        # Live balloon pages never exceed the guest, so compaction makes room.
        _compact_stack(s)
        top = s.meta[K_BAL_RUNS]
    if top > 0 and s.bal_pfn[top - 1] + s.bal_n[top - 1] == pfn:
        s.bal_n[top - 1] += nr_pages
    else:
        s.bal_pfn[top] = pfn
        s.bal_n[top] = nr_pages
        s.meta[K_BAL_RUNS] = top + 1
    for p in range(pfn, pfn + nr_pages):
        set_owner(s, p, OWNER_BALLOON)
    s.meta[K_BAL_PAGES] += nr_pages


@njit
def _target(s, params, nr_pages):
    headroom = int(params[P_BAL_HEADROOM])
    return max(nr_pages - s.meta[K_ALLOC_PAGES] - headroom, 0)


@njit
def balloon_init(s, g, ts, params):
    """Inflate to the starting target without cost (the pages were never bound)."""
    nr_pages = g.meta[M_NPAGES]
    target = _target(s, params, nr_pages)
    s.meta[K_BAL_TARGET] = target
    kind = g.meta[M_KIND]
    while s.meta[K_BAL_PAGES] < target:
        missing = target - s.meta[K_BAL_PAGES]
        order = MAX_ORDER
        while order > 0 and (1 << order) > missing:
            order -= 1
        pfn = -1
        while pfn < 0 and order >= 0:
            if kind == BUDDY:
                pfn = rmqueue_smallest(g, order)
            elif kind == LLFREE:
                pfn = llf_get(g, 0, order)
            else:
                pfn = cap_take_any(g) if order == 0 else -1
            if pfn < 0:
                order -= 1
        if pfn < 0:
            break
        _push_run(s, pfn, 1 << order)
    s.meta[K_T_BAL_CTRL] = ts + int(params[P_BAL_PERIOD])
    s.meta[K_T_BAL_INFLATE] = NEVER


@njit
def balloon_deflate(s, out, g, ts, nr_pages):
    """Give up to ``nr_pages`` balloon pages back to the guest; return how many."""
    freed = 0
    first = -1
    while freed < nr_pages and s.meta[K_BAL_RUNS] > 0:
        top = s.meta[K_BAL_RUNS] - 1
        p = s.bal_pfn[top] + s.bal_n[top] - 1
        s.bal_n[top] -= 1
        if s.bal_n[top] == 0:
            s.meta[K_BAL_RUNS] = top
        if s.owner[p] != OWNER_BALLOON:
            continue  # taken by the workload on the trace placement
        set_owner(s, p, OWNER_FREE)
        guest_free(g, 0, p, 0)
        first = p
        freed += 1
    if freed > 0:
        s.meta[K_BAL_PAGES] -= freed
        emit(s, out, ts, opcodes.CALL, first, freed, opcodes.CALL_DEFLATE)
    return freed


@njit
def balloon_deflate_on_oom(s, out, g, ts, params):
    """Deflate one chunk for an allocation that found no memory; return pages freed."""
    freed = balloon_deflate(s, out, g, ts, int(params[P_BAL_CHUNK]))
    if freed > 0:
        s.meta[K_BAL_OOM_DEFLATIONS] += 1
        s.meta[K_BAL_TARGET] = s.meta[K_BAL_PAGES]
    return freed


@njit
def balloon_steal(s, p):
    """The trace placement hands a balloon page to the workload."""
    set_owner(s, p, OWNER_FREE)
    s.meta[K_BAL_PAGES] -= 1


@njit
def balloon_next_timer(s):
    return min(s.meta[K_T_BAL_CTRL], s.meta[K_T_BAL_INFLATE])


@njit
def _inflate_chunk(s, out, g, ts, params):
    want = min(int(params[P_BAL_CHUNK]), s.meta[K_BAL_TARGET] - s.meta[K_BAL_PAGES])
    got = 0
    bound = 0
    first = -1
    for _ in range(want):
        p = guest_alloc(g, 0, 0)
        if p < 0:
            s.meta[K_BAL_TARGET] = s.meta[K_BAL_PAGES]
            break
        _push_run(s, p, 1)
        if first < 0:
            first = p
        got += 1
        if s.bound[p] != 0:
            s.scratch[bound] = p
            bound += 1
    if got == 0:
        return 0
    emit(s, out, ts, opcodes.CALL, first, got, opcodes.CALL_INFLATE)
    emit_runs(s, out, ts, opcodes.UNBIND, s.scratch, bound)
    for i in range(bound):
        unbind_page(s, s.scratch[i])
    return got


@njit
def balloon_fire(s, out, g, ts, params):
    if s.meta[K_T_BAL_CTRL] <= ts:
        s.meta[K_T_BAL_CTRL] = ts + int(params[P_BAL_PERIOD])
        target = _target(s, params, g.meta[M_NPAGES])
        s.meta[K_BAL_TARGET] = target
        if s.meta[K_BAL_PAGES] > target:
            balloon_deflate(s, out, g, ts, s.meta[K_BAL_PAGES] - target)
        elif s.meta[K_BAL_PAGES] < target and s.meta[K_T_BAL_INFLATE] == NEVER:
            s.meta[K_T_BAL_INFLATE] = ts
        return
    # Inflation step at its rate limit.
    got = _inflate_chunk(s, out, g, ts, params)
    if got == 0 or s.meta[K_BAL_PAGES] >= s.meta[K_BAL_TARGET]:
        s.meta[K_T_BAL_INFLATE] = NEVER
    else:
        s.meta[K_T_BAL_INFLATE] = ts + int(got * params[P_BAL_NS_PER_PAGE])
