"""Compiled loops of the classifier: one pass over a batch of events, no temporaries.

Each loop walks the sorted event times together with the sorted steps of
the concurrency level, so weighting an event costs one comparison instead
of a binary search, and nothing per event is allocated.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def weighted_total(
    ts_ns: np.ndarray,
    amount: np.ndarray,
    step_ts_ns: np.ndarray,
    step_weight: np.ndarray,
) -> tuple[float, float]:
    """Return (sum of amount, sum of amount x weight) over sorted events.

    ``step_weight[j]`` is the weight after ``j`` steps; an empty ``amount``
    means 1 per event.
    """
    level = np.searchsorted(step_ts_ns, ts_ns[0], side="right") if ts_ns.size else 0
    nr_steps = step_ts_ns.size
    unit = amount.size == 0
    total = 0.0
    total_weighted = 0.0
    for i in range(ts_ns.size):
        t = ts_ns[i]
        while level < nr_steps and step_ts_ns[level] <= t:
            level += 1
        a = 1.0 if unit else amount[i]
        total += a
        total_weighted += a * step_weight[level]
    return total, total_weighted


@numba.njit(cache=True, nogil=True)
def syscall_totals(
    ts_ns: np.ndarray,
    nr: np.ndarray,
    ret: np.ndarray,
    complete: np.ndarray,
    step_ts_ns: np.ndarray,
    step_weight: np.ndarray,
    group_of: np.ndarray,
    rule_of: np.ndarray,
    code_of: np.ndarray,
    clone_group: int,
    counts: np.ndarray,
    weighted: np.ndarray,
    clone_rows: np.ndarray,
) -> int:
    """Add each call's extra-path code to ``counts``/``weighted`` (index 0: no path).

    ``counts[-1]`` and ``weighted[-1]`` receive every call (the transition
    path). Successful clone calls are left out, because only the clone flags
    tell whether they copied the address space. Their rows go to
    ``clone_rows`` and their number is returned.
    """
    level = np.searchsorted(step_ts_ns, ts_ns[0], side="right") if ts_ns.size else 0
    nr_steps = step_ts_ns.size
    nr_clones = 0
    total = counts.size - 1
    for i in range(ts_ns.size):
        t = ts_ns[i]
        while level < nr_steps and step_ts_ns[level] <= t:
            level += 1
        w = step_weight[level]
        counts[total] += 1.0
        weighted[total] += w
        group = group_of[nr[i]]
        code = 0
        if group != 0:
            rule = rule_of[group]
            r = ret[i]
            if rule == 0:
                took = True
            elif rule == 1:
                took = r > 0
            elif rule == 2:
                took = r == 0 and complete[i]
            else:
                took = not (-4095 <= r < 0)
            if took:
                if group == clone_group:
                    clone_rows[nr_clones] = i
                    nr_clones += 1
                    continue
                code = code_of[group]
        counts[code] += 1.0
        weighted[code] += w
    return nr_clones


@numba.njit(cache=True, nogil=True)
def first_touches(
    pfn: np.ndarray, order: np.ndarray, low: np.uint64, span: int
) -> np.ndarray:
    """Return, per allocation, how many of its pages no earlier allocation covered.

    Page frames lie in ``[low, low + span)``; a byte map of ``span`` entries
    records the frames already covered.
    """
    seen = np.zeros(span, dtype=np.uint8)
    new_pages = np.zeros(pfn.size, dtype=np.int64)
    for i in range(pfn.size):
        # Unsigned and signed integers mix to floats in numba, so cast first.
        first = np.int64(pfn[i] - low)
        count = 0
        for page in range(first, first + (np.int64(1) << np.int64(order[i]))):
            if seen[page] == 0:
                seen[page] = 1
                count += 1
        new_pages[i] = count
    return new_pages
