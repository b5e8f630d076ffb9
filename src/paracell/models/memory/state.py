"""State of the modelled guest's page allocator, shared by the placement modules.

All state lives in numpy arrays bundled in :class:`GuestState`, so compiled
functions can change it in place. Scalars sit in ``meta`` at the ``M_*``
indices. One state type serves every placement; arrays a placement does not
use have length 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from paracell.models.memory.ops import HUGE_ORDER, HUGE_PAGES

MAX_ORDER = 10  # largest buddy order of Linux on x86-64 (MAX_PAGE_ORDER)
MAX_ORDER_PAGES = 1 << MAX_ORDER

# Placement kinds.
BUDDY = 0
LLFREE = 1
CAPTURED = 2
PLACEMENT_IDS = {"buddy": BUDDY, "llfree": LLFREE, "trace": CAPTURED}

# Per-CPU lists: orders 0 to PAGE_ALLOC_COSTLY_ORDER (3), and the pageblock
# order (9) that Linux caches when transparent huge pages are built in.
NR_PCP_LISTS = 5
PCP_HUGE_INDEX = 4

# Side events the allocator reports to the policy after each call.
SEV_REFILL = 0  # a block moved from the buddy free lists to a per-CPU list
SEV_DRAIN = 1  # a block moved from a per-CPU list back to the buddy

# meta indices
M_KIND = 0
M_NPAGES = 1
M_NCPU = 2
M_BATCH = 3
M_HIGH = 4
M_SEV_N = 5
M_FREE_PAGES = 6  # pages in the allocator's own free structure
M_MERGED_MAX = 7  # highest order a free formed in the last call, -1 if none
M_TREE_FRAMES = 8
M_NTREES = 9
M_LOW_WMARK = 10
M_PCP_CAP = 11
M_CURSOR = 12
M_NFRAMES = 13
META_LEN = 16


class GuestState(NamedTuple):
    """Arrays of one modelled guest allocator (see the module docstring)."""

    meta: np.ndarray  # int64[META_LEN]
    # buddy: free lists as doubly linked lists over block-head pfns
    nxt: np.ndarray  # int32[N]
    prv: np.ndarray  # int32[N]
    border: np.ndarray  # int8[N], order of a free buddy block head, else -1
    breported: np.ndarray  # uint8[N], 1 if the free block was reported
    fl_head: np.ndarray  # int32[MAX_ORDER + 1]
    fl_tail: np.ndarray  # int32[MAX_ORDER + 1]
    fl_nr: np.ndarray  # int64[MAX_ORDER + 1], blocks per free list
    # buddy: per-CPU lists as ring buffers of block-head pfns
    pcp_buf: np.ndarray  # int32[ncpu, NR_PCP_LISTS, cap]
    pcp_start: np.ndarray  # int64[ncpu, NR_PCP_LISTS]
    pcp_len: np.ndarray  # int64[ncpu, NR_PCP_LISTS]
    pcp_count: np.ndarray  # int64[ncpu], pages on all lists of the CPU
    pcp_rr: np.ndarray  # int64[ncpu], round-robin start of the next drain
    # every placement: per 2 MiB frame
    frame_free: np.ndarray  # int32[F], pages of the frame free in the allocator
    frame_evicted: np.ndarray  # uint8[F], 1 while the host has it reclaimed
    # LLFree and captured: per page
    used: np.ndarray  # uint8[N], 1 if allocated in the allocator's view
    child_huge: np.ndarray  # uint8[F], frame allocated whole (LLFree)
    tree_free: np.ndarray  # int64[T], free pages of unreserved trees
    tree_reserved: np.ndarray  # uint8[T]
    local_tree: np.ndarray  # int64[ncpu], reserved tree or -1
    local_free: np.ndarray  # int64[ncpu], free pages of the reserved tree
    local_start: np.ndarray  # int64[ncpu], pfn where the next search starts
    # side events of the last call
    sev_kind: np.ndarray  # int8[K]
    sev_pfn: np.ndarray  # int64[K]
    sev_order: np.ndarray  # int64[K]


def pcp_batch_for(nr_pages: int) -> int:
    """Return the per-CPU batch Linux picks for a zone of ``nr_pages`` (zone_batchsize)."""
    batch = min(nr_pages >> 10, (1 << 20) // 4096)
    batch //= 4
    batch = max(batch, 1)
    value = batch + batch // 2
    # Linux uses at least one page per batch (max(1, zone_batchsize())).
    return max((1 << (value.bit_length() - 1)) - 1, 1)


def low_wmark_for(nr_pages: int) -> int:
    """Return the low watermark, in pages, of a zone of ``nr_pages`` (Linux 6.x defaults).

    min_free_kbytes is sqrt(16 x lowmem kbytes), clamped to [128, 262144];
    the low watermark adds the larger of a quarter of it and
    watermark_scale_factor (10) / 10000 of the zone.
    """
    kbytes = nr_pages * 4
    min_free_kbytes = min(max(int((kbytes * 16) ** 0.5), 128), 262144)
    min_pages = min_free_kbytes // 4
    return min_pages + max(min_pages // 4, nr_pages * 10 // 10000)


def pcp_high_for(nr_pages: int, nr_cpus: int, batch: int) -> int:
    """Return pcp->high as zone_highsize() computes it at boot."""
    return max(low_wmark_for(nr_pages) // max(nr_cpus, 1), batch * 4)


def new_guest_state(
    kind: int,
    nr_pages: int,
    nr_cpus: int,
    batch: int = 0,
    high: int = 0,
    tree_frames: int = 8,
) -> GuestState:
    """Allocate the arrays of a guest of ``nr_pages`` pages, all memory free.

    The placement's ``*_init`` function fills the free structures.
    """
    nr_frames = (nr_pages + HUGE_PAGES - 1) // HUGE_PAGES
    meta = np.zeros(META_LEN, dtype=np.int64)
    meta[M_KIND] = kind
    meta[M_NPAGES] = nr_pages
    meta[M_NCPU] = nr_cpus
    meta[M_NFRAMES] = nr_frames
    meta[M_MERGED_MAX] = -1
    is_buddy = kind == BUDDY
    n_buddy = nr_pages if is_buddy else 1
    cpus_buddy = nr_cpus if is_buddy else 1
    if is_buddy:
        batch = batch or pcp_batch_for(nr_pages)
        high = high or pcp_high_for(nr_pages, nr_cpus, batch)
        meta[M_BATCH] = batch
        meta[M_HIGH] = high
        meta[M_LOW_WMARK] = low_wmark_for(nr_pages)
    pcp_cap = high + batch + 8 if is_buddy else 1
    meta[M_PCP_CAP] = pcp_cap
    is_llfree = kind == LLFREE
    nr_trees = (nr_frames + tree_frames - 1) // tree_frames if is_llfree else 1
    meta[M_TREE_FRAMES] = tree_frames
    meta[M_NTREES] = nr_trees
    meta[M_CURSOR] = nr_pages - 1
    n_used = nr_pages if kind != BUDDY else 1
    # The largest burst of side events is draining every per-CPU list at once.
    sev_cap = cpus_buddy * (high + batch + 8) * NR_PCP_LISTS + 1024 if is_buddy else 16
    return GuestState(
        meta=meta,
        nxt=np.full(n_buddy, -1, dtype=np.int32),
        prv=np.full(n_buddy, -1, dtype=np.int32),
        border=np.full(n_buddy, -1, dtype=np.int8),
        breported=np.zeros(n_buddy, dtype=np.uint8),
        fl_head=np.full(MAX_ORDER + 1, -1, dtype=np.int32),
        fl_tail=np.full(MAX_ORDER + 1, -1, dtype=np.int32),
        fl_nr=np.zeros(MAX_ORDER + 1, dtype=np.int64),
        pcp_buf=np.zeros((cpus_buddy, NR_PCP_LISTS, pcp_cap), dtype=np.int32),
        pcp_start=np.zeros((cpus_buddy, NR_PCP_LISTS), dtype=np.int64),
        pcp_len=np.zeros((cpus_buddy, NR_PCP_LISTS), dtype=np.int64),
        pcp_count=np.zeros(cpus_buddy, dtype=np.int64),
        pcp_rr=np.zeros(cpus_buddy, dtype=np.int64),
        frame_free=np.zeros(nr_frames, dtype=np.int32),
        frame_evicted=np.zeros(nr_frames, dtype=np.uint8),
        used=np.zeros(n_used, dtype=np.uint8),
        child_huge=np.zeros(nr_frames if is_llfree else 1, dtype=np.uint8),
        tree_free=np.zeros(nr_trees, dtype=np.int64),
        tree_reserved=np.zeros(nr_trees, dtype=np.uint8),
        local_tree=np.full(nr_cpus, -1, dtype=np.int64),
        local_free=np.zeros(nr_cpus, dtype=np.int64),
        local_start=np.zeros(nr_cpus, dtype=np.int64),
        sev_kind=np.zeros(sev_cap, dtype=np.int8),
        sev_pfn=np.zeros(sev_cap, dtype=np.int64),
        sev_order=np.zeros(sev_cap, dtype=np.int64),
    )


__all__ = [
    "BUDDY",
    "CAPTURED",
    "HUGE_ORDER",
    "HUGE_PAGES",
    "LLFREE",
    "MAX_ORDER",
    "GuestState",
    "new_guest_state",
]
