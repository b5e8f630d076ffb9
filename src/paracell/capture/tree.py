"""The traced process tree over time, and which allocator events belong to it.

Membership comes from ``task:task_newtask`` recorded system-wide: a task
joins the tree when a tree task creates it, and leaves when its id is given
to a task created outside the tree (pid reuse). Its thread-group id is the
creator's when ``CLONE_THREAD`` is set, its own id otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("paracell.capture")

CLONE_THREAD = 0x00010000
# Interval end for tasks that never left the tree.
_FOREVER = np.iinfo(np.int64).max


@dataclass
class TaskTree:
    """Membership intervals: task ``tid[i]`` of process ``tgid[i]`` in [start, end)."""

    tid: np.ndarray
    tgid: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    # Thread-group ids of tasks created outside the tree, for the pid column
    # of events from other contexts.
    other_tgid: dict[int, int]
    # Whether /proc lists global (initial pid namespace) ids, the ids events
    # carry; only then may it be asked for the tgid of older tasks.
    resolve_from_proc: bool = True

    @classmethod
    def build(
        cls,
        root_pid: int,
        ts_ns: np.ndarray,
        parent_tid: np.ndarray,
        child_tid: np.ndarray,
        clone_flags: np.ndarray,
        resolve_from_proc: bool = True,
    ) -> TaskTree:
        """Replay time-sorted ``task_newtask`` events starting from ``root_pid``.

        All ids, ``root_pid`` included, are global ids as events record them.
        """
        # tid -> (tgid, membership start)
        member: dict[int, tuple[int, int]] = {root_pid: (root_pid, 0)}
        other_tgid: dict[int, int] = {}
        closed: list[tuple[int, int, int, int]] = []
        for ts, parent, child, flags in zip(
            ts_ns.tolist(),
            parent_tid.tolist(),
            child_tid.tolist(),
            clone_flags.tolist(),
            strict=True,
        ):
            if parent in member:
                tgid = member[parent][0] if flags & CLONE_THREAD else child
                if child in member:
                    old_tgid, start = member.pop(child)
                    closed.append((child, old_tgid, start, ts))
                member[child] = (tgid, ts)
            else:
                if child in member:
                    old_tgid, start = member.pop(child)
                    closed.append((child, old_tgid, start, ts))
                parent_tgid = other_tgid.get(parent, parent)
                other_tgid[child] = parent_tgid if flags & CLONE_THREAD else child
        rows = closed + [
            (tid, tgid, start, int(_FOREVER)) for tid, (tgid, start) in member.items()
        ]
        rows.sort()
        arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
        return cls(
            arr[:, 0].copy(),
            arr[:, 1].copy(),
            arr[:, 2].copy(),
            arr[:, 3].copy(),
            other_tgid,
            resolve_from_proc,
        )

    @property
    def nr_tasks(self) -> int:
        return int(self.tid.size)

    def lookup(self, tid: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
        """Return the tgid of each (tid, ts) that is in the tree, -1 otherwise."""
        return _lookup_kernel()(
            self.tid,
            self.tgid,
            self.start_ns,
            self.end_ns,
            tid.astype(np.int64),
            ts_ns.astype(np.int64),
        )

    def tgid_of(self, tid: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
        """Return a tgid for every event: tree membership first, then other tasks.

        Tasks that were not created during the capture (kworkers, the idle
        task, older processes) get their tgid from ``/proc`` when they still
        exist and /proc shows global ids, and their own id otherwise, which
        is right for kernel threads.
        """
        out = self.lookup(tid, ts_ns)
        missing = out < 0
        if missing.any():
            uniq, inv = np.unique(tid[missing], return_inverse=True)
            fallback = _proc_tgid if self.resolve_from_proc else int
            resolved = np.array(
                [self.other_tgid.get(int(t), fallback(int(t))) for t in uniq],
                dtype=np.int64,
            )
            out[missing] = resolved[inv]
        return out


def _proc_tgid(tid: int) -> int:
    if tid <= 0:
        return tid
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


_kernels: dict[str, object] = {}


def _lookup_kernel():  # type: ignore[no-untyped-def]
    if "lookup" in _kernels:
        return _kernels["lookup"]
    import numba

    @numba.njit(cache=True)
    def lookup(i_tid, i_tgid, i_start, i_end, tid, ts):
        # Intervals are sorted by (tid, start); binary search the tid block.
        out = np.full(tid.size, -1, dtype=np.int64)
        for k in range(tid.size):
            lo = np.searchsorted(i_tid, tid[k])
            j = lo
            while j < i_tid.size and i_tid[j] == tid[k]:
                if i_start[j] <= ts[k] < i_end[j]:
                    out[k] = i_tgid[j]
                    break
                j += 1
        return out

    _kernels["lookup"] = lookup
    return lookup


# Kinds of allocator events, in the codes the filter kernel uses.
ALLOC, FREE, FREE_BATCHED, ZONE_LOCKED, PCPU_DRAIN = range(5)


def filter_allocator_events(
    code: np.ndarray, pfn: np.ndarray, order: np.ndarray, in_tree: np.ndarray
) -> np.ndarray:
    """Return a keep-mask over time-sorted allocator events of all tasks.

    Kept are allocations by tree tasks and the free (and batched free) of
    every page the tree allocated, from whatever context. Also kept are
    per-CPU list refills by tree tasks and per-CPU drains of pages the tree
    allocated last. Pages are tracked one 4 KiB frame at a time, so an
    order-9 allocation freed as order-0 pieces after a split is followed
    piece by piece.
    """
    if code.size == 0:
        return np.zeros(0, dtype=bool)
    valid = pfn < (1 << 52)
    top = (
        int((pfn[valid] + (np.int64(1) << order[valid].astype(np.int64))).max())
        if valid.any()
        else 1
    )
    return _filter_kernel()(
        code.astype(np.int8),
        pfn.astype(np.int64),
        order.astype(np.int64),
        in_tree.astype(np.bool_),
        top + 1,
    )


def _filter_kernel():  # type: ignore[no-untyped-def]
    if "filter" in _kernels:
        return _kernels["filter"]
    import numba

    @numba.njit(cache=True)
    def run(code, pfn, order, in_tree, nr_frames):
        # state per frame: 0 not the tree's, 1 allocated by the tree,
        # 2 allocated by the tree and since freed.
        state = np.zeros(nr_frames, dtype=np.uint8)
        keep = np.zeros(code.size, dtype=np.bool_)
        for i in range(code.size):
            p = pfn[i]
            if p < 0 or p >= nr_frames:
                continue
            n = np.int64(1) << order[i]
            c = code[i]
            if c == ALLOC:
                if in_tree[i]:
                    keep[i] = True
                    state[p : p + n] = 1
                else:
                    state[p : p + n] = 0
            elif c == FREE:
                hit = False
                for q in range(p, min(p + n, nr_frames)):
                    if state[q] == 1:
                        hit = True
                        state[q] = 2
                keep[i] = hit
            elif c == FREE_BATCHED:
                # mm_page_free of the same page precedes it on Linux 6.x.
                if state[p] != 0:
                    keep[i] = True
                    state[p] = 2
            elif c == ZONE_LOCKED:
                keep[i] = in_tree[i]
            elif c == PCPU_DRAIN:
                for q in range(p, min(p + n, nr_frames)):
                    if state[q] == 2:
                        keep[i] = True
                        break
        return keep

    _kernels["filter"] = run
    return run
