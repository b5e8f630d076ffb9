"""An LLFree-style allocator (LLF23), the guest allocator HyperAlloc shares with its host (HA25).

Memory is cut into trees of ``tree_frames`` 2 MiB frames. Each CPU reserves
one tree and allocates inside it:

- a small allocation (order < 9) takes the first frame of the tree, starting
  at the frame of the CPU's last allocation, that has enough free pages, and
  in it the first free aligned block from the 64-page row of the last
  allocation on (LLFree's bitfield search);
- an allocation of order 9 or 10 takes one or two entirely free frames;
- when the reserved tree cannot serve a request, the CPU returns it and
  reserves another, searching outwards from its current tree: first trees
  that are partly used (more than 1/16 free but not entirely free), then
  entirely free trees, then any tree with room;
- a free goes to the CPU's counter if it falls in the CPU's tree, else to the
  tree's global counter.

With HyperAlloc the host marks reclaimed frames in the shared state
(``frame_evicted``). The model lets the guest prefer frames that are still
installed and take a reclaimed one only when no installed frame fits, since
installing costs about 0.5 ms per frame.

NOTE: the free-reserve heuristic (reserving a tree where many frees happen)
is left out; it is an optional feature in LLFree's Rust code.
"""

from __future__ import annotations

from paracell.models.memory._jit import njit
from paracell.models.memory.state import (
    HUGE_ORDER,
    HUGE_PAGES,
    M_FREE_PAGES,
    M_MERGED_MAX,
    M_NCPU,
    M_NFRAMES,
    M_NPAGES,
    M_NTREES,
    M_TREE_FRAMES,
)

_ROW = 64  # pages per bitfield row


@njit
def llf_init(g, first_free):
    """Mark ``[0, first_free)`` allocated and everything else free; fill the counters."""
    nr_pages = g.meta[M_NPAGES]
    for p in range(first_free):
        g.used[p] = 1
    for f in range(g.meta[M_NFRAMES]):
        end = min((f + 1) * HUGE_PAGES, nr_pages)
        free = 0
        for p in range(f * HUGE_PAGES, end):
            if g.used[p] == 0:
                free += 1
        g.frame_free[f] = free
        g.meta[M_FREE_PAGES] += free
    tree_frames = g.meta[M_TREE_FRAMES]
    for f in range(g.meta[M_NFRAMES]):
        g.tree_free[f // tree_frames] += g.frame_free[f]


@njit
def _block_free(g, start, nr_pages):
    for p in range(start, start + nr_pages):
        if g.used[p] != 0:
            return False
    return True


@njit
def _mark(g, pfn, nr_pages, value):
    for p in range(pfn, pfn + nr_pages):
        g.used[p] = value


@njit
def _frame_search(g, frame, start_offset, order):
    """Return the offset of the first free aligned block in ``frame``, or -1.

    The search starts at the 64-page row holding ``start_offset`` and wraps.
    """
    size = 1 << order
    base = frame * HUGE_PAGES
    step = max(size, _ROW)
    first = (start_offset // step) * step
    for k in range(0, HUGE_PAGES, size):
        offset = (first + k) % HUGE_PAGES
        if base + offset + size > g.meta[M_NPAGES]:
            continue
        if _block_free(g, base + offset, size):
            return offset
    return -1


@njit
def _huge_fits(g, frame, count, nr_frames, evicted_ok):
    if frame + count > nr_frames:
        return False
    for f in range(frame, frame + count):
        if g.frame_free[f] != HUGE_PAGES:
            return False
        if g.frame_evicted[f] != 0 and not evicted_ok:
            return False
    return True


@njit
def lower_get(g, tree, start_pfn, order):
    """Allocate ``order`` inside ``tree``, searching from ``start_pfn``; return the pfn or -1."""
    tree_frames = g.meta[M_TREE_FRAMES]
    nr_frames = g.meta[M_NFRAMES]
    first_frame = tree * tree_frames
    start_child = (start_pfn >> HUGE_ORDER) - first_frame
    if start_child < 0 or start_child >= tree_frames:
        start_child = 0
    size = 1 << order
    for evicted_ok in (False, True):
        if order >= HUGE_ORDER:
            count = size // HUGE_PAGES
            base_child = (start_child // count) * count
            for i in range(0, tree_frames, count):
                child = (base_child + i) % tree_frames
                frame = first_frame + child
                if _huge_fits(g, frame, count, nr_frames, evicted_ok):
                    pfn = frame * HUGE_PAGES
                    _mark(g, pfn, size, 1)
                    for f in range(frame, frame + count):
                        g.frame_free[f] = 0
                        g.child_huge[f] = 1
                    g.meta[M_FREE_PAGES] -= size
                    return pfn
        else:
            for j in range(tree_frames):
                child = (start_child + j) % tree_frames
                frame = first_frame + child
                if frame >= nr_frames or g.frame_free[frame] < size:
                    continue
                if g.frame_evicted[frame] != 0 and not evicted_ok:
                    continue
                start_offset = start_pfn - frame * HUGE_PAGES if j == 0 else 0
                if start_offset < 0 or start_offset >= HUGE_PAGES:
                    start_offset = 0
                offset = _frame_search(g, frame, start_offset, order)
                if offset >= 0:
                    pfn = frame * HUGE_PAGES + offset
                    _mark(g, pfn, size, 1)
                    g.frame_free[frame] -= size
                    g.meta[M_FREE_PAGES] -= size
                    return pfn
    return -1


@njit
def _unreserve(g, cpu):
    tree = g.local_tree[cpu]
    if tree >= 0:
        g.tree_free[tree] += g.local_free[cpu]
        g.tree_reserved[tree] = 0
    g.local_tree[cpu] = -1
    g.local_free[cpu] = 0


@njit
def _tree_matches(free, need, tree_pages, search_pass):
    if free < need:
        return False
    if search_pass == 0:
        return tree_pages // 16 < free < tree_pages
    if search_pass == 1:
        return free == tree_pages
    return True


@njit
def _reserve_and_get(g, cpu, order, start_tree):
    need = 1 << order
    nr_trees = g.meta[M_NTREES]
    tree_pages = g.meta[M_TREE_FRAMES] * HUGE_PAGES
    for search_pass in range(3):
        for i in range(1, nr_trees + 1):
            # Alternate around the start tree: +0, -1, +1, -2, ...
            toggle = i // 2 if i & 1 else -(i // 2)
            tree = (start_tree + toggle) % nr_trees
            if g.tree_reserved[tree] != 0:
                continue
            if not _tree_matches(g.tree_free[tree], need, tree_pages, search_pass):
                continue
            pfn = lower_get(g, tree, tree * tree_pages, order)
            if pfn < 0:
                continue
            _unreserve(g, cpu)
            g.tree_reserved[tree] = 1
            g.local_tree[cpu] = tree
            g.local_free[cpu] = g.tree_free[tree] - need
            g.tree_free[tree] = 0
            g.local_start[cpu] = pfn
            return pfn
    return -1


@njit
def llf_get(g, cpu, order):
    """Allocate a block of ``order`` for ``cpu``; -1 if no tree can serve it."""
    need = 1 << order
    tree = g.local_tree[cpu]
    if tree >= 0:
        if g.local_free[cpu] < need:
            # Frees by other CPUs went to the global counter of this tree.
            g.local_free[cpu] += g.tree_free[tree]
            g.tree_free[tree] = 0
        if g.local_free[cpu] >= need:
            pfn = lower_get(g, tree, g.local_start[cpu], order)
            if pfn >= 0:
                g.local_free[cpu] -= need
                if order < HUGE_ORDER:
                    g.local_start[cpu] = pfn
                return pfn
        start_tree = tree
    else:
        ncpu = g.meta[M_NCPU]
        start_tree = (g.meta[M_NTREES] // ncpu) * cpu
    pfn = _reserve_and_get(g, cpu, order, start_tree)
    if pfn >= 0:
        return pfn
    # Out of memory: return every CPU's reservation and search once more.
    for other in range(g.meta[M_NCPU]):
        if other != cpu:
            _unreserve(g, other)
    return _reserve_and_get(g, cpu, order, start_tree)


@njit
def llf_put(g, cpu, pfn, order):
    """Free a block of ``order`` at ``pfn``."""
    size = 1 << order
    _mark(g, pfn, size, 0)
    if size >= HUGE_PAGES:
        for f in range(pfn >> HUGE_ORDER, (pfn + size) >> HUGE_ORDER):
            g.frame_free[f] = HUGE_PAGES
            g.child_huge[f] = 0
    else:
        frame = pfn >> HUGE_ORDER
        g.child_huge[frame] = 0
        g.frame_free[frame] += size
    g.meta[M_FREE_PAGES] += size
    if size >= HUGE_PAGES or g.frame_free[pfn >> HUGE_ORDER] == HUGE_PAGES:
        g.meta[M_MERGED_MAX] = HUGE_ORDER
    tree = (pfn >> HUGE_ORDER) // g.meta[M_TREE_FRAMES]
    if g.local_tree[cpu] == tree:
        g.local_free[cpu] += size
    else:
        g.tree_free[tree] += size


@njit
def llf_peek(g, after_pfn, out, max_pages):
    """Write the free pages that follow ``after_pfn`` in its frame; return their count.

    These are the pages a small allocation on the same CPU takes next.
    """
    n = 0
    end = min(((after_pfn >> HUGE_ORDER) + 1) * HUGE_PAGES, g.meta[M_NPAGES])
    for p in range(after_pfn, end):
        if n >= max_pages:
            break
        if g.used[p] == 0:
            out[n] = p
            n += 1
    return n
