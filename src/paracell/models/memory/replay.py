"""The replay: allocator events through a placement and a policy, into an op stream.

``replay_kernel`` is one compiled loop over the events. For each event it
first fires the policy's timers that are due, then places the allocation or
free through the guest allocator, lets the policy act before the guest
writes the pages, and emits the TOUCH or FREE. Everything the host does is
emitted as operations (see ``ops.py``); the metrics are computed from them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from paracell.costs import CostTable
from paracell.errors import ModelError
from paracell.models.memory import ops as opcodes
from paracell.models.memory._jit import njit, njit_inline
from paracell.models.memory.events import EV_ALLOC, EV_REFILL, AllocatorEvents
from paracell.models.memory.guest import guest_alloc, guest_free, guest_init, guest_take
from paracell.models.memory.kstate import (
    BALLOON,
    DAMON,
    FPR,
    HYPERALLOC,
    K_ALLOC_PAGES,
    K_BAL_STOLEN,
    K_CAP_BASE,
    K_DOUBLE_ALLOC_PAGES,
    K_ERROR_EVENT,
    K_ERROR_ORDER,
    K_FAULTS,
    K_IGNORED_FREE_PAGES,
    K_OVERFLOW,
    K_PLACEMENT,
    K_POLICY,
    K_T_BAL_CTRL,
    K_T_BAL_INFLATE,
    K_T_DAMON,
    K_T_FPR,
    K_T_HA,
    K_T_START,
    NEVER,
    NR_PARAMS,
    OWNER_BALLOON,
    OWNER_BASE,
    OWNER_FREE,
    OWNER_WORKLOAD,
    P_BAL_CHUNK,
    P_BAL_HEADROOM,
    P_BAL_NS_PER_PAGE,
    P_BAL_PERIOD,
    P_DAMON_AGGR,
    P_DAMON_MIN_AGE,
    P_DAMON_QUOTA,
    P_DAMON_QUOTA_INTERVAL,
    P_DAMON_REGION_FRAMES,
    P_FPR_BUDGET_DIV,
    P_FPR_CAPACITY,
    P_FPR_DELAY,
    P_FPR_ORDER,
    P_HA_PERIOD,
    P_PG_BIND_BATCH,
    P_PG_DELAY,
    P_PG_RESERVE,
    P_PG_UNBIND_BATCH,
    P_PG_USE_REFILL,
    PAGER,
    THP,
    ReplayState,
    bind_page,
    emit,
    new_op_buffer,
    set_owner,
)
from paracell.models.memory.kstate import META_LEN as K_META_LEN
from paracell.models.memory.policies.balloon import (
    balloon_deflate_on_oom,
    balloon_fire,
    balloon_init,
    balloon_next_timer,
    balloon_steal,
)
from paracell.models.memory.policies.damon import (
    damon_after_touch,
    damon_fire,
    damon_init,
    damon_on_free,
)
from paracell.models.memory.policies.fpr import (
    fpr_before_touch,
    fpr_fire,
    fpr_init,
    fpr_notify,
)
from paracell.models.memory.policies.hyperalloc import (
    hyperalloc_before_touch,
    hyperalloc_fire,
    hyperalloc_init,
)
from paracell.models.memory.policies.pager import (
    pager_after_touch,
    pager_before_touch,
    pager_fire,
    pager_next_timer,
    pager_on_free,
    pager_on_recorded_refill,
    pager_on_refill,
)
from paracell.models.memory.policies.simple import thp_before_touch
from paracell.models.memory.state import (
    CAPTURED,
    HUGE_PAGES,
    M_KIND,
    M_NPAGES,
    M_SEV_N,
    GuestState,
    new_guest_state,
)

log = logging.getLogger("paracell.memory")

STATUS_OK = 0
STATUS_OVERFLOW = 1
STATUS_NO_MEMORY = 2

_MIB = 1 << 20


@njit_inline
def _next_timer(policy, s, params):
    if policy == FPR:
        return s.meta[K_T_FPR]
    if policy == BALLOON:
        return balloon_next_timer(s)
    if policy == DAMON:
        return s.meta[K_T_DAMON]
    if policy == HYPERALLOC:
        return s.meta[K_T_HA]
    if policy == PAGER:
        return pager_next_timer(s, params)
    return NEVER


@njit_inline
def _run_timers(policy, s, out, g, until, params):
    """Fire every timer due at or before ``until``, each at its own time."""
    while s.meta[K_OVERFLOW] == 0:
        ts = _next_timer(policy, s, params)
        if ts > until:
            return
        if policy == FPR:
            fpr_fire(s, out, g, ts, params)
        elif policy == BALLOON:
            balloon_fire(s, out, g, ts, params)
        elif policy == DAMON:
            damon_fire(s, out, g, ts, params)
        elif policy == HYPERALLOC:
            hyperalloc_fire(s, out, g, ts, params)
        elif policy == PAGER:
            pager_fire(s, out, ts, params)


@njit_inline
def _free_block(policy, g, s, out, params, ts, pfn, order, cpu):
    """Free ``2**order`` modelled pages at ``pfn`` and run the policy's hook."""
    nr_pages = 1 << order
    emit(s, out, ts, opcodes.FREE, pfn, nr_pages, 0)
    for p in range(pfn, pfn + nr_pages):
        set_owner(s, p, OWNER_FREE)
        s.block_head[p] = -1
    s.head_order[pfn] = -1
    s.meta[K_ALLOC_PAGES] -= nr_pages
    guest_free(g, cpu, pfn, order)
    if policy == FPR:
        fpr_notify(s, g, ts, params)
    elif policy == PAGER:
        pager_on_free(s, out, ts, params, pfn, nr_pages)
    elif policy == DAMON:
        damon_on_free(s, g, ts, params, pfn, nr_pages)


@njit
def _free_page(policy, g, s, out, params, ts, pfn, cpu):
    """Free one page of a larger allocation (the rest stays allocated)."""
    head = s.block_head[pfn]
    if head >= 0:
        s.head_order[head] = -1
    _free_block(policy, g, s, out, params, ts, pfn, 0, cpu)


@njit_inline
def _do_free(policy, g, s, out, params, ts, cpfn, order, cpu):
    nr_pages = 1 << order
    if cpfn < 0:
        s.meta[K_IGNORED_FREE_PAGES] += nr_pages
        return
    head = s.cap2mod[cpfn]
    if head >= 0 and s.block_head[head] == head and s.head_order[head] == order:
        for j in range(nr_pages):
            s.cap2mod[cpfn + j] = -1
        _free_block(policy, g, s, out, params, ts, head, order, cpu)
        return
    for j in range(nr_pages):
        page = s.cap2mod[cpfn + j]
        if page < 0:
            s.meta[K_IGNORED_FREE_PAGES] += 1
            continue
        s.cap2mod[cpfn + j] = -1
        _free_page(policy, g, s, out, params, ts, page, cpu)


@njit_inline
def _do_alloc(policy, g, s, out, params, ts, cpfn, order, cpu):
    """Place and touch one allocation; return False if the guest has no room."""
    nr_pages = 1 << order
    # The trace may have lost a free: free the allocation still holding the page.
    for j in range(nr_pages):
        page = s.cap2mod[cpfn + j]
        if page >= 0:
            s.cap2mod[cpfn + j] = -1
            s.meta[K_DOUBLE_ALLOC_PAGES] += 1
            _free_page(policy, g, s, out, params, ts, page, cpu)

    if g.meta[M_KIND] == CAPTURED:
        pfn = cpfn + s.meta[K_CAP_BASE]
        for p in range(pfn, pfn + nr_pages):
            if s.owner[p] == OWNER_BALLOON:
                balloon_steal(s, p)
                s.meta[K_BAL_STOLEN] += 1
        guest_take(g, pfn, nr_pages)
    else:
        pfn = guest_alloc(g, cpu, order)
        while pfn < 0 and policy == BALLOON:
            if balloon_deflate_on_oom(s, out, g, ts, params) == 0:
                break
            pfn = guest_alloc(g, cpu, order)
        if pfn < 0:
            s.meta[K_ERROR_ORDER] = order
            return False
        if policy == PAGER and g.meta[M_SEV_N] > 0:
            pager_on_refill(s, out, g, ts, params)

    for j in range(nr_pages):
        s.cap2mod[cpfn + j] = pfn + j
        s.block_head[pfn + j] = pfn
        set_owner(s, pfn + j, OWNER_WORKLOAD)
    s.head_order[pfn] = order
    s.meta[K_ALLOC_PAGES] += nr_pages

    if policy == THP:
        thp_before_touch(s, out, g, ts, pfn, nr_pages)
    elif policy == HYPERALLOC:
        hyperalloc_before_touch(s, out, g, ts, pfn, nr_pages)
    elif policy == PAGER:
        pager_before_touch(s, out, g, ts, params, pfn, nr_pages, cpu, order)
    elif policy == FPR:
        fpr_before_touch(s, g, pfn, nr_pages)

    emit(s, out, ts, opcodes.TOUCH, pfn, nr_pages, 0)
    for p in range(pfn, pfn + nr_pages):
        s.meta[K_FAULTS] += bind_page(s, p)

    if policy == PAGER:
        pager_after_touch(s, pfn, nr_pages)
    elif policy == DAMON:
        damon_after_touch(s, params, pfn, nr_pages)
    return True


@njit
def replay_kernel(
    policy,
    g,
    s,
    out,
    params,
    ev_ts,
    ev_kind,
    ev_pfn,
    ev_order,
    ev_cpu,
    start_ts,
    end_ts,
    base_pages,
):
    """Replay every event; return a STATUS_* code."""
    s.meta[K_T_START] = start_ts
    guest_init(g, base_pages)
    for p in range(base_pages):
        bind_page(s, p)
        set_owner(s, p, OWNER_BASE)
    s.meta[K_ALLOC_PAGES] = base_pages
    if base_pages > 0:
        emit(s, out, start_ts, opcodes.BASE, 0, base_pages, 0)

    if policy == BALLOON:
        balloon_init(s, g, start_ts, params)
    elif policy == DAMON:
        damon_init(s, g, start_ts, params)
    elif policy == HYPERALLOC:
        hyperalloc_init(s, g, start_ts, params)
    elif policy == FPR:
        fpr_init(s, g)

    nr_guest = g.meta[M_NPAGES]
    cap_base = s.meta[K_CAP_BASE]
    refill_n = 0
    for i in range(ev_ts.size):
        ts = ev_ts[i]
        _run_timers(policy, s, out, g, ts, params)
        kind = ev_kind[i]
        if kind == EV_REFILL:
            # Recorded refills matter only to the Pager on the trace
            # placement; they are bound together before the next event.
            if g.meta[M_KIND] == CAPTURED and policy == PAGER and ev_pfn[i] >= 0:
                size = 1 << ev_order[i]
                if refill_n + size > nr_guest:
                    pager_on_recorded_refill(s, out, ts, params, refill_n)
                    refill_n = 0
                for j in range(size):
                    s.refill[refill_n] = ev_pfn[i] + cap_base + j
                    refill_n += 1
            continue
        if refill_n > 0:
            pager_on_recorded_refill(s, out, ts, params, refill_n)
            refill_n = 0

        if kind == EV_ALLOC:
            if not _do_alloc(
                policy, g, s, out, params, ts, ev_pfn[i], ev_order[i], ev_cpu[i]
            ):
                s.meta[K_ERROR_EVENT] = i
                return STATUS_NO_MEMORY
        else:
            _do_free(policy, g, s, out, params, ts, ev_pfn[i], ev_order[i], ev_cpu[i])
        if s.meta[K_OVERFLOW] != 0:
            return STATUS_OVERFLOW

    if refill_n > 0:
        pager_on_recorded_refill(s, out, end_ts, params, refill_n)
    _run_timers(policy, s, out, g, end_ts, params)
    if s.meta[K_OVERFLOW] != 0:
        return STATUS_OVERFLOW
    return STATUS_OK


# A replay of every policy keeps about 90 bytes per guest page at its peak
# (measured with `paracell memory --guest-ram 64GiB`: 1.8 GB resident), so
# 256 GiB needs about 6 GB of host memory.
MAX_GUEST_RAM_BYTES = 256 * 2**30


@dataclass(frozen=True)
class ReplayConfig:
    """Guest and policy settings of a replay, taken from a cost table."""

    guest_ram_bytes: int
    vcpus: int  # 0: the trace's CPU count
    base_pages: int
    pcp_batch: int  # 0: derived from the guest size
    pcp_high: int  # 0: derived
    llfree_tree_frames: int
    damon_max_nr_regions: int
    params: np.ndarray  # float64[NR_PARAMS]; DAMON's region size is set per run

    @classmethod
    def from_costs(
        cls,
        costs: CostTable,
        guest_ram_bytes: int | None = None,
        vcpus: int | None = None,
    ) -> ReplayConfig:
        """Read guest settings and policy parameters; raise ModelError for invalid ones.

        ``guest_ram_bytes`` and ``vcpus`` override the table's values.
        """
        params = np.zeros(NR_PARAMS, dtype=np.float64)
        page = float(opcodes.PAGE_SIZE)

        params[P_FPR_DELAY] = costs.get("memory.fpr.delay")
        params[P_FPR_CAPACITY] = costs.get("memory.fpr.capacity")
        params[P_FPR_ORDER] = costs.get("memory.fpr.order")
        params[P_FPR_BUDGET_DIV] = costs.get("memory.fpr.budget_divisor")

        params[P_BAL_PERIOD] = costs.get("memory.balloon.period")
        params[P_BAL_HEADROOM] = math.ceil(costs.get("memory.balloon.headroom") / page)
        params[P_BAL_NS_PER_PAGE] = 1e9 * page / costs.get("memory.balloon.rate")
        params[P_BAL_CHUNK] = costs.get("memory.balloon.chunk")

        params[P_DAMON_MIN_AGE] = costs.get("memory.damon.min_age")
        params[P_DAMON_AGGR] = costs.get("memory.damon.aggr_interval")
        params[P_DAMON_QUOTA] = math.floor(costs.get("memory.damon.quota") / page)
        params[P_DAMON_QUOTA_INTERVAL] = costs.get("memory.damon.quota_interval")
        params[P_HA_PERIOD] = costs.get("memory.hyperalloc.period")

        params[P_PG_USE_REFILL] = costs.get("memory.pager.use_refill")
        params[P_PG_BIND_BATCH] = costs.get("memory.pager.bind_batch")
        params[P_PG_UNBIND_BATCH] = costs.get("memory.pager.unbind_batch")
        params[P_PG_DELAY] = costs.get("memory.pager.unbind_delay")
        params[P_PG_RESERVE] = costs.get("memory.pager.reserve")
        _check_params(params)

        if guest_ram_bytes is None:
            guest_ram_bytes = int(costs.get("memory.guest_ram"))
        ram = int(guest_ram_bytes)
        if ram < 4 * _MIB:
            raise ModelError(
                f"guest RAM of {ram} bytes is too small; the model needs at least 4 MiB"
            )
        if ram > MAX_GUEST_RAM_BYTES:
            raise ModelError(
                f"guest RAM of {ram / 2**30:g} GiB is too large; the model keeps "
                f"state per 4 KiB page and accepts at most "
                f"{MAX_GUEST_RAM_BYTES // 2**30} GiB"
            )
        for name in ("memory.llfree.tree_frames", "memory.damon.max_nr_regions"):
            if costs.get(name) < 1:
                raise ModelError(
                    f"parameter {name} is {costs.get(name):g}; it must be at least 1"
                )
        nr_vcpus = int(vcpus if vcpus is not None else costs.get("memory.vcpus"))
        if nr_vcpus < 0:
            raise ModelError(
                f"memory.vcpus is {nr_vcpus}; give 1 or more, "
                "or 0 for the trace's CPU count"
            )
        return cls(
            guest_ram_bytes=ram,
            vcpus=nr_vcpus,
            base_pages=math.ceil(costs.get("memory.base_footprint") / page),
            pcp_batch=int(costs.get("memory.buddy.pcp_batch")),
            pcp_high=int(costs.get("memory.buddy.pcp_high")),
            llfree_tree_frames=int(costs.get("memory.llfree.tree_frames")),
            damon_max_nr_regions=int(costs.get("memory.damon.max_nr_regions")),
            params=params,
        )


def _check_params(params: np.ndarray) -> None:
    checks = [
        (P_FPR_CAPACITY, "memory.fpr.capacity", 1),
        (P_FPR_BUDGET_DIV, "memory.fpr.budget_divisor", 1),
        (P_BAL_CHUNK, "memory.balloon.chunk", 1),
        (P_BAL_PERIOD, "memory.balloon.period", 1),
        (P_DAMON_AGGR, "memory.damon.aggr_interval", 1),
        (P_DAMON_QUOTA_INTERVAL, "memory.damon.quota_interval", 1),
        (P_HA_PERIOD, "memory.hyperalloc.period", 1),
        (P_PG_BIND_BATCH, "memory.pager.bind_batch", 1),
        (P_PG_UNBIND_BATCH, "memory.pager.unbind_batch", 1),
    ]
    for index, name, minimum in checks:
        if params[index] < minimum:
            raise ModelError(
                f"parameter {name} is {params[index]:g}; it must be at least {minimum}"
            )
    for index, name in [
        (P_FPR_DELAY, "memory.fpr.delay"),
        (P_PG_DELAY, "memory.pager.unbind_delay"),
        (P_PG_RESERVE, "memory.pager.reserve"),
        (P_DAMON_MIN_AGE, "memory.damon.min_age"),
    ]:
        if params[index] < 0:
            raise ModelError(
                f"parameter {name} is {params[index]:g}; it must not be negative"
            )
    if not 0 <= params[P_FPR_ORDER] <= 10:
        raise ModelError(
            f"parameter memory.fpr.order is {params[P_FPR_ORDER]:g}; it must be 0-10"
        )


@dataclass(frozen=True)
class ReplayResult:
    """Op stream of one replay and the counts the replay itself kept."""

    ops: opcodes.OpStream
    nr_guest_pages: int
    nr_vcpus: int
    faults: int
    ignored_free_pages: int
    double_alloc_pages: int
    balloon_pages_stolen: int
    guest: GuestState
    state: ReplayState


def guest_pages_for(
    placement: int, events: AllocatorEvents, config: ReplayConfig
) -> int:
    """Return the size in pages of the modelled guest for a placement."""
    if placement == CAPTURED:
        return _round_up(config.base_pages, 1024) + max(events.nr_captured_pages, 1024)
    return _round_up(config.guest_ram_bytes // opcodes.PAGE_SIZE, 1024)


def _round_up(value: int, step: int) -> int:
    return (value + step - 1) // step * step


def run_replay(
    policy: int, placement: int, events: AllocatorEvents, config: ReplayConfig
) -> ReplayResult:
    """Replay ``events`` with one policy on one placement.

    Raises ModelError when the trace does not fit the guest.
    """
    nr_pages = guest_pages_for(placement, events, config)
    if config.base_pages >= nr_pages:
        raise ModelError(
            f"base footprint of {config.base_pages * opcodes.PAGE_SIZE // _MIB} MiB "
            f"does not fit a guest of {nr_pages * opcodes.PAGE_SIZE // _MIB} MiB",
            hint="lower memory.base_footprint or raise the guest RAM",
        )
    vcpus = config.vcpus or events.nr_cpus
    capacity = 4 * len(events) + 4096
    # int64 keeps ``1 << order`` exact in compiled and pure-Python runs alike.
    orders = events.order.astype(np.int64)
    cpus = (events.cpu % vcpus).astype(np.int64)

    while True:
        try:
            guest, state, out, params = _allocate(
                policy, placement, events, config, nr_pages, vcpus, capacity
            )
        except MemoryError:
            raise ModelError(
                f"not enough host memory to model a guest of "
                f"{config.guest_ram_bytes / 2**30:g} GiB; give a smaller "
                "memory.guest_ram or --guest-ram"
            ) from None
        status = replay_kernel(
            policy,
            guest,
            state,
            out,
            params,
            events.ts_ns,
            events.kind,
            events.pfn,
            orders,
            cpus,
            events.start_ts_ns,
            events.end_ts_ns,
            config.base_pages,
        )
        if status != STATUS_OVERFLOW:
            break
        capacity *= 2
        log.debug("op buffer full, retrying with room for %d operations", capacity)
    if status == STATUS_NO_MEMORY:
        raise _no_memory_error(events, config, state, nr_pages)

    n = int(state.meta[0])
    ops = opcodes.OpStream(
        ts_ns=out.ts_ns[:n].copy(),
        op=out.op[:n].copy(),
        pfn=out.pfn[:n].copy(),
        nr_pages=out.nr_pages[:n].copy(),
        arg=out.arg[:n].copy(),
        nr_guest_pages=nr_pages,
    )
    return ReplayResult(
        ops=ops,
        nr_guest_pages=nr_pages,
        nr_vcpus=vcpus,
        faults=int(state.meta[K_FAULTS]),
        ignored_free_pages=int(state.meta[K_IGNORED_FREE_PAGES]),
        double_alloc_pages=int(state.meta[K_DOUBLE_ALLOC_PAGES]),
        balloon_pages_stolen=int(state.meta[K_BAL_STOLEN]),
        guest=guest,
        state=state,
    )


def _allocate(
    policy: int,
    placement: int,
    events: AllocatorEvents,
    config: ReplayConfig,
    nr_pages: int,
    vcpus: int,
    capacity: int,
):
    """Create the guest, replay state and op buffer of one run, sized for the trace."""
    guest = new_guest_state(
        placement,
        nr_pages,
        vcpus,
        batch=config.pcp_batch,
        high=config.pcp_high,
        tree_frames=config.llfree_tree_frames,
    )

    nr_frames = nr_pages // HUGE_PAGES
    params = config.params.copy()
    region_frames = max(round(nr_pages / config.damon_max_nr_regions / HUGE_PAGES), 1)
    params[P_DAMON_REGION_FRAMES] = region_frames
    nr_regions = (nr_frames + region_frames - 1) // region_frames
    nr_events = len(events)
    is_pager = policy == PAGER
    fifo_cap = max(4096, 2 * nr_events + 16) if is_pager else 1
    scratch2 = (
        max(
            nr_frames,
            nr_regions,
            2 * int(params[P_FPR_CAPACITY]),
            int(params[P_PG_BIND_BATCH]),
            64,
        )
        + 16
    )

    meta = np.zeros(K_META_LEN, dtype=np.int64)
    meta[K_ERROR_EVENT] = -1
    meta[K_PLACEMENT] = placement
    meta[K_POLICY] = policy
    meta[K_CAP_BASE] = (
        _round_up(config.base_pages, 1024) if placement == CAPTURED else 0
    )
    for index in (K_T_FPR, K_T_DAMON, K_T_HA, K_T_BAL_CTRL, K_T_BAL_INFLATE):
        meta[index] = NEVER
    state = ReplayState(
        meta=meta,
        bound=np.zeros(nr_pages, dtype=np.uint8),
        owner=np.zeros(nr_pages, dtype=np.uint8),
        block_head=np.full(nr_pages, -1, dtype=np.int32),
        head_order=np.full(nr_pages, -1, dtype=np.int8),
        pending=np.zeros(nr_pages if is_pager else 1, dtype=np.uint8),
        pending_ts=np.zeros(nr_pages if is_pager else 1, dtype=np.int64),
        cap2mod=np.full(max(events.nr_captured_pages, 1), -1, dtype=np.int32),
        frame_bound=np.zeros(nr_frames, dtype=np.int32),
        frame_alloc=np.zeros(nr_frames, dtype=np.int32),
        frame_flag=np.zeros(nr_frames, dtype=np.uint8),
        fifo_pfn=np.zeros((2, fifo_cap), dtype=np.int64),
        fifo_n=np.zeros((2, fifo_cap), dtype=np.int64),
        fifo_ts=np.zeros((2, fifo_cap), dtype=np.int64),
        bal_pfn=np.zeros(nr_pages + 16 if policy == BALLOON else 1, dtype=np.int64),
        bal_n=np.zeros(nr_pages + 16 if policy == BALLOON else 1, dtype=np.int64),
        region_free_since=np.zeros(
            nr_regions if policy == DAMON else 1, dtype=np.int64
        ),
        scratch=np.zeros(nr_pages + 1024, dtype=np.int64),
        scratch2=np.zeros(scratch2, dtype=np.int64),
        refill=np.zeros(
            nr_pages if placement == CAPTURED and is_pager else 1, dtype=np.int64
        ),
    )
    out = new_op_buffer(capacity)
    return guest, state, out, params


def _no_memory_error(
    events: AllocatorEvents, config: ReplayConfig, state: ReplayState, nr_pages: int
) -> ModelError:
    index = int(state.meta[K_ERROR_EVENT])
    order = int(state.meta[K_ERROR_ORDER])
    at_s = (int(events.ts_ns[index]) - events.start_ts_ns) / 1e9
    allocated_mib = int(state.meta[K_ALLOC_PAGES]) * opcodes.PAGE_SIZE / _MIB
    peak_mib = peak_allocated_pages(events, config) * opcodes.PAGE_SIZE / _MIB
    needed_mib = _round_up(int(peak_mib * 1.25) + 64, 64)
    return ModelError(
        f"a guest of {nr_pages * opcodes.PAGE_SIZE // _MIB} MiB cannot place an "
        f"order-{order} allocation {at_s:.3f} s into trace {events.name!r} "
        f"({allocated_mib:.0f} MiB allocated then; the trace peaks at "
        f"{peak_mib:.0f} MiB)",
        hint=f"give the guest more RAM, e.g. --guest-ram {needed_mib}MiB",
    )


def peak_allocated_pages(events: AllocatorEvents, config: ReplayConfig) -> int:
    """Return the most pages the trace has allocated at once, base included."""
    sizes = np.left_shift(np.int64(1), events.order.astype(np.int64))
    delta = np.where(events.kind == EV_ALLOC, sizes, 0)
    frees = (events.kind == 0) & (events.pfn >= 0)
    delta = delta - np.where(frees, sizes, 0)
    running = np.cumsum(delta)
    peak = int(running.max()) if running.size else 0
    return max(peak, 0) + config.base_pages
