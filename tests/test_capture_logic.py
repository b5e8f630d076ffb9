"""Process-tree membership, page ownership and system-call pairing, by hand."""

from __future__ import annotations

import numpy as np

from paracell.capture.pairing import pair_syscalls
from paracell.capture.tree import (
    ALLOC,
    CLONE_THREAD,
    FREE,
    FREE_BATCHED,
    PCPU_DRAIN,
    ZONE_LOCKED,
    TaskTree,
    filter_allocator_events,
)

ROOT = 100


def tree_from(rows: list[tuple[int, int, int, int]]) -> TaskTree:
    """Build a tree from (ts, parent tid, child tid, clone flags) rows."""
    ts, parent, child, flags = (
        np.array(c, dtype=np.int64) for c in zip(*rows, strict=True)
    )
    return TaskTree.build(ROOT, ts, parent, child, flags.astype(np.uint64))


def test_thread_shares_creator_pid() -> None:
    tree = tree_from([(10, ROOT, 101, CLONE_THREAD), (20, ROOT, 102, 0)])
    tgid = tree.lookup(np.array([ROOT, 101, 102]), np.array([30, 30, 30]))
    assert tgid.tolist() == [ROOT, ROOT, 102]


def test_grandchild_thread_joins_tree() -> None:
    tree = tree_from([(10, ROOT, 101, 0), (20, 101, 103, CLONE_THREAD)])
    assert tree.lookup(np.array([103]), np.array([25])).tolist() == [101]


def test_outside_task_not_in_tree() -> None:
    tree = tree_from([(10, 500, 501, 0)])
    assert tree.lookup(np.array([501]), np.array([20])).tolist() == [-1]
    # Its pid column still gets the right thread-group id.
    assert tree.tgid_of(np.array([501]), np.array([20])).tolist() == [501]


def test_reused_tid_leaves_tree() -> None:
    # 101 is a tree task until an outside task is created with the same id.
    tree = tree_from([(10, ROOT, 101, 0), (50, 500, 101, 0)])
    tgid = tree.lookup(np.array([101, 101, 101]), np.array([5, 30, 60]))
    assert tgid.tolist() == [-1, 101, -1]


def test_membership_starts_at_creation() -> None:
    tree = tree_from([(10, ROOT, 101, 0)])
    assert tree.lookup(np.array([101, 101]), np.array([9, 10])).tolist() == [-1, 101]


def keep(events: list[tuple[int, int, int, bool]]) -> list[bool]:
    """Run the filter on (code, pfn, order, in_tree) rows."""
    code, pfn, order, in_tree = zip(*events, strict=True)
    mask = filter_allocator_events(
        np.array(code), np.array(pfn), np.array(order), np.array(in_tree)
    )
    return mask.tolist()


def test_free_from_other_context_kept() -> None:
    assert keep([(ALLOC, 1000, 0, True), (FREE, 1000, 0, False)]) == [True, True]


def test_foreign_pages_dropped() -> None:
    assert keep([(ALLOC, 1000, 0, False), (FREE, 1000, 0, False)]) == [False, False]


def test_split_block_freed_piecewise() -> None:
    events = [(ALLOC, 512, 9, True)]
    events += [(FREE, 512 + i, 0, False) for i in range(0, 512, 64)]
    events += [(FREE, 2048, 0, False)]  # outside the block
    assert keep(events) == [True] + [True] * 8 + [False]


def test_batched_free_after_page_free() -> None:
    events = [
        (ALLOC, 7, 0, True),
        (FREE, 7, 0, True),
        (FREE_BATCHED, 7, 0, True),
        (FREE_BATCHED, 8, 0, True),
    ]
    assert keep(events) == [True, True, True, False]


def test_reallocation_by_other_task_resets() -> None:
    events = [
        (ALLOC, 7, 0, True),
        (FREE, 7, 0, True),
        (ALLOC, 7, 0, False),
        (FREE, 7, 0, False),
    ]
    assert keep(events) == [True, True, False, False]


def test_double_free_counted_once() -> None:
    events = [(ALLOC, 7, 0, True), (FREE, 7, 0, False), (FREE, 7, 0, False)]
    assert keep(events) == [True, True, False]


def test_refill_and_drain_rules() -> None:
    events = [
        (ZONE_LOCKED, 9, 0, True),
        (ZONE_LOCKED, 9, 0, False),
        (ALLOC, 9, 0, True),
        (FREE, 9, 0, True),
        (PCPU_DRAIN, 9, 0, False),
        (PCPU_DRAIN, 10, 0, False),
    ]
    assert keep(events) == [True, False, True, True, True, False]


def columns(
    rows: list[tuple[int, int, int, int]], exit_: bool
) -> dict[str, np.ndarray]:
    """Tracepoint columns from (ts, tid, nr, ret or 0) rows."""
    ts, tid, nr, ret = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    cols = {
        "ts_ns": ts,
        "common_pid": tid.astype(np.int32),
        "id": nr,
        "cpu": np.zeros(ts.size, np.int32),
        "seq": np.arange(ts.size),
    }
    if exit_:
        cols["ret"] = ret
    return cols


def test_pairs_per_thread() -> None:
    enter = columns([(10, 1, 0, 0), (12, 2, 1, 0), (30, 1, 231, 0)], exit_=False)
    exit_ = columns([(5, 1, 3, 0), (20, 2, 1, 8), (25, 1, 0, 4)], exit_=True)
    rows = pair_syscalls(enter, exit_)
    assert rows["ts_ns"].tolist() == [10, 12, 30]
    assert rows["ret"].tolist() == [4, 8, 0]
    assert rows["duration_ns"].tolist() == [15, 8, 0]
    # exit_group (231) never returns; the exit of call 3 at ts 5 had no entry.
    assert rows["complete"].tolist() == [True, True, False]


def test_mismatched_exit_not_paired() -> None:
    enter = columns([(10, 1, 0, 0)], exit_=False)
    exit_ = columns([(20, 1, 1, 7)], exit_=True)
    rows = pair_syscalls(enter, exit_)
    assert rows["complete"].tolist() == [False]
    assert rows["ret"].tolist() == [0]


def test_pairing_empty() -> None:
    empty = columns([(0, 0, 0, 0)], exit_=True)
    empty = {k: v[:0] for k, v in empty.items()}
    assert pair_syscalls(empty, empty)["ts_ns"].size == 0
