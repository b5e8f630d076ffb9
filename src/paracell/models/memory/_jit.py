"""The numba decorator used by the memory model's hot loops.

Compiled functions are cached on disk (``cache=True``), so only the first
run after an install or a code change pays the compile time.
"""

from __future__ import annotations

from typing import Any

import numba

# NOTE: ``_nrt=False`` compiles without numba's reference counting. The
# replay passes tuples of 20-30 arrays into small helpers many times per
# event; with reference counting every such call costs about 250 ns of
# atomic increments (measured on the project's machines), without it about
# 10 ns. The price: these functions cannot allocate arrays, so every buffer
# comes from the caller. ``boundscheck`` stays off (numba's default).
njit: Any = numba.njit(cache=True, nogil=True, _nrt=False)
# Small helpers called with the state tuples in hot loops are inlined at
# numba's IR level: a call passes every array of the tuple by value.
njit_inline: Any = numba.njit(cache=True, nogil=True, _nrt=False, inline="always")


@njit
def sort_prefix(values, count):
    """Sort ``values[:count]`` (int64) in place.

    numba's own ``ndarray.sort`` returns the array and so needs reference
    counting; this heapsort does not. Short lists use insertion sort.
    """
    if count <= 16:
        for i in range(1, count):
            item = values[i]
            j = i - 1
            while j >= 0 and values[j] > item:
                values[j + 1] = values[j]
                j -= 1
            values[j + 1] = item
        return
    for start in range(count // 2 - 1, -1, -1):
        _sift_down(values, start, count)
    for end in range(count - 1, 0, -1):
        values[0], values[end] = values[end], values[0]
        _sift_down(values, 0, end)


@njit
def _sift_down(values, root, count):
    while True:
        child = 2 * root + 1
        if child >= count:
            return
        if child + 1 < count and values[child + 1] > values[child]:
            child += 1
        if values[root] >= values[child]:
            return
        values[root], values[child] = values[child], values[root]
        root = child
