"""The placement allocators on their own: the buddy and its per-CPU lists, LLFree."""

from __future__ import annotations

import numpy as np

from paracell.models.memory.buddy import (
    buddy_alloc,
    buddy_free,
    buddy_init,
    free_one,
    rmqueue_smallest,
)
from paracell.models.memory.llfree import llf_get, llf_init, llf_put
from paracell.models.memory.state import (
    BUDDY,
    LLFREE,
    M_MERGED_MAX,
    M_SEV_N,
    SEV_DRAIN,
    SEV_REFILL,
    low_wmark_for,
    new_guest_state,
    pcp_batch_for,
    pcp_high_for,
)


def buddy(nr_pages=2048, cpus=1, batch=4, high=16):
    g = new_guest_state(BUDDY, nr_pages, cpus, batch=batch, high=high)
    buddy_init(g, 0)
    return g


def free_list(g, order):
    out = []
    pfn = int(g.fl_head[order])
    while pfn >= 0:
        out.append(pfn)
        pfn = int(g.nxt[pfn])
    return out


def side_events(g, kind):
    n = int(g.meta[M_SEV_N])
    return [int(g.sev_pfn[i]) for i in range(n) if int(g.sev_kind[i]) == kind]


def test_pcp_sizes_follow_linux_formulas():
    # zone_batchsize(): min(pages / 1024, 256) / 4 = 64 -> 64 + 32 -> 64 - 1.
    assert pcp_batch_for(1 << 20) == 63
    # min_free_kbytes = sqrt(4 GiB in KiB x 16) = 8192 KiB = 2048 pages; the low
    # watermark adds max(512, 1048576 x 10 / 10000) pages.
    assert low_wmark_for(1 << 20) == 2048 + 1048
    assert pcp_high_for(1 << 20, 2, 63) == (2048 + 1048) // 2
    assert pcp_batch_for(1 << 14) == 3


def test_buddy_splits_the_smallest_block():
    g = buddy()
    assert free_list(g, 10) == [0, 1024]
    assert rmqueue_smallest(g, 0) == 0
    # The upper halves of block 0 went to the lists of orders 9 down to 0.
    for order in range(10):
        assert free_list(g, order) == [1 << order]
    assert free_list(g, 10) == [1024]
    # The next order-0 request takes the order-0 half, then splits order 1.
    assert rmqueue_smallest(g, 0) == 1
    assert rmqueue_smallest(g, 0) == 2
    assert free_list(g, 0) == [3]


def test_buddy_merges_back_to_max_order():
    g = buddy()
    pages = [rmqueue_smallest(g, 0) for _ in range(4)]
    assert pages == [0, 1, 2, 3]
    for p in pages[:3]:
        free_one(g, p, 0, False)
    assert free_list(g, 10) == [1024]
    assert free_one(g, 3, 0, False) == 10
    assert g.meta[M_MERGED_MAX] == 10
    assert sorted(free_list(g, 10)) == [0, 1024]
    assert all(free_list(g, order) == [] for order in range(10))


def test_buddy_free_goes_to_tail_when_merge_is_likely():
    g = buddy()
    pages = [rmqueue_smallest(g, 0) for _ in range(5)]
    assert pages == [0, 1, 2, 3, 4]
    assert free_list(g, 0) == [5]
    # Page 3's buddy (2) is in use and the buddy of the pair {2, 3} is not
    # free: a plain free goes to the head.
    free_one(g, 3, 0, False)
    assert free_list(g, 0) == [3, 5]
    rmqueue_smallest(g, 0)  # takes 3 again
    # Once {0, 1} is a free order-1 block, freeing 3 may lead to a merge up
    # to order 2 when 2 comes back, so 3 goes to the tail.
    free_one(g, 0, 0, False)
    free_one(g, 1, 0, False)
    assert free_list(g, 1) == [0, 6]
    free_one(g, 3, 0, False)
    assert free_list(g, 0) == [5, 3]


def test_pcp_refill_and_lifo_reuse():
    g = buddy(batch=4, high=16)
    assert buddy_alloc(g, 0, 0) == 0
    assert side_events(g, SEV_REFILL) == [0, 1, 2, 3]
    assert buddy_alloc(g, 0, 0) == 1
    assert side_events(g, SEV_REFILL) == [0, 1, 2, 3]  # no new refill
    g.meta[M_SEV_N] = 0
    assert buddy_alloc(g, 0, 0) == 2
    buddy_free(g, 0, 1, 0)
    # The most recently freed page comes back first.
    assert buddy_alloc(g, 0, 0) == 1
    assert buddy_alloc(g, 0, 0) == 3
    assert side_events(g, SEV_REFILL) == []


def test_pcp_drains_oldest_pages_at_high():
    g = buddy(batch=4, high=8)
    pages = [buddy_alloc(g, 0, 0) for _ in range(8)]
    assert pages == list(range(8))
    g.meta[M_SEV_N] = 0
    for p in pages:
        buddy_free(g, 0, p, 0)
    # The eighth free reaches high and drains a batch from the tail: the
    # four pages freed first, which merge into an order-2 block.
    assert side_events(g, SEV_DRAIN) == [0, 1, 2, 3]
    assert g.pcp_count[0] == 4
    assert g.border[0] == 2


def test_large_orders_bypass_the_per_cpu_lists():
    g = buddy()
    assert buddy_alloc(g, 0, 4) == 0
    assert side_events(g, SEV_REFILL) == []
    assert g.pcp_count[0] == 0


def test_per_cpu_lists_are_separate():
    g = buddy(cpus=2, batch=4, high=16)
    assert buddy_alloc(g, 0, 0) == 0
    assert buddy_alloc(g, 1, 0) == 4
    buddy_free(g, 1, 4, 0)
    assert buddy_alloc(g, 0, 0) == 1
    assert buddy_alloc(g, 1, 0) == 4


def llfree(nr_pages=4096, cpus=2, tree_frames=2, first_free=0):
    g = new_guest_state(LLFREE, nr_pages, cpus, tree_frames=tree_frames)
    llf_init(g, first_free)
    return g


def test_llfree_cpus_reserve_different_trees():
    g = llfree()
    # Four trees of two frames; CPU 1 starts its search at tree 2.
    assert llf_get(g, 0, 0) == 0
    assert llf_get(g, 1, 0) == 2048
    assert list(g.local_tree) == [0, 2]
    assert [llf_get(g, 0, 0) for _ in range(3)] == [1, 2, 3]


def test_llfree_huge_allocation_takes_an_empty_frame():
    g = llfree()
    assert llf_get(g, 0, 0) == 0
    assert llf_get(g, 0, 9) == 512
    assert g.frame_free[1] == 0
    assert g.child_huge[1] == 1
    # Small allocations stay in the partly used frame.
    assert llf_get(g, 0, 0) == 1


def test_llfree_new_reservation_prefers_partly_used_tree():
    # Tree 0 is full and tree 1 partly used before the trace (pages 0-1199).
    g = llfree(cpus=1, first_free=1200)
    assert llf_get(g, 0, 0) == 1200
    assert g.local_tree[0] == 1


def test_llfree_frees_update_the_right_counters():
    g = llfree()
    first = llf_get(g, 0, 0)
    llf_get(g, 1, 0)
    local_before = int(g.local_free[0])
    llf_put(g, 0, first, 0)
    assert g.local_free[0] == local_before + 1
    second = llf_get(g, 0, 0)
    global_before = int(g.tree_free[0])
    # A free from another CPU goes to the tree's global counter.
    llf_put(g, 1, second, 0)
    assert g.tree_free[0] == global_before + 1
    assert g.meta[M_MERGED_MAX] == 9  # frame 0 is entirely free again


def test_llfree_prefers_installed_frames():
    g = llfree(cpus=1)
    g.frame_evicted[:] = 1
    g.frame_evicted[1] = 0
    assert llf_get(g, 0, 0) == 512
    g.frame_evicted[1] = 1
    assert np.all(g.frame_evicted == 1)
    # With every frame reclaimed, the search falls back to them in order.
    assert llf_get(g, 0, 0) == 513
