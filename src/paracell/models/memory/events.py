"""Page-allocator events of a trace, merged into one time-ordered stream.

The replay needs, per event, its time, kind (free, refill, allocation), the
captured page frame, the order and the CPU. Captured pfns are compacted: the
4 MiB blocks (order 10, the largest buddy block) that any allocation or
recorded refill touches are numbered densely, with one empty block left
between blocks that were not adjacent, so offsets inside blocks, 2 MiB frames
and adjacency survive while the space shrinks to what the trace uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from paracell.errors import ModelError
from paracell.trace import Trace

log = logging.getLogger("paracell.memory")

EV_FREE = 0
EV_REFILL = 1
EV_ALLOC = 2

CHUNK_ORDER = 10
CHUNK_PAGES = 1 << CHUNK_ORDER


@dataclass(frozen=True)
class AllocatorEvents:
    """Allocator events of one trace, sorted by time; frees first among equal times.

    ``pfn`` holds compacted captured pfns; -1 marks a free of a page that no
    allocation in the trace produced.
    """

    name: str
    ts_ns: np.ndarray  # int64
    kind: np.ndarray  # int8, EV_*
    pfn: np.ndarray  # int64
    order: np.ndarray  # int8
    cpu: np.ndarray  # int32
    nr_captured_pages: int
    nr_cpus: int
    start_ts_ns: int
    end_ts_ns: int
    nr_free_batched: int = 0

    @property
    def nr_allocs(self) -> int:
        return int(np.count_nonzero(self.kind == EV_ALLOC))

    @property
    def nr_frees(self) -> int:
        return int(np.count_nonzero(self.kind == EV_FREE))

    @property
    def nr_refills(self) -> int:
        return int(np.count_nonzero(self.kind == EV_REFILL))

    @property
    def nr_unknown_free_pages(self) -> int:
        mask = (self.kind == EV_FREE) & (self.pfn < 0)
        return int(np.sum(np.left_shift(1, self.order[mask].astype(np.int64))))

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    @classmethod
    def from_trace(cls, trace: Trace) -> AllocatorEvents:
        """Read the allocator events of ``trace``; raise ModelError if it has none."""
        if not trace.has("mm_page_alloc"):
            raise ModelError(
                f"{trace.path}: trace has no mm_page_alloc events, so there is no "
                "memory to model",
                hint="capture with the kmem event group, e.g. "
                "`paracell trace --events kmem`",
            )
        alloc = (
            trace.column("mm_page_alloc", "ts_ns"),
            trace.column("mm_page_alloc", "pfn"),
            trace.column("mm_page_alloc", "order"),
            trace.column("mm_page_alloc", "cpu"),
        )
        free_ts, free_pfn, free_order, free_cpu, nr_batched = select_free_events(trace)
        if trace.has("mm_page_alloc_zone_locked"):
            refill_mask = trace.column("mm_page_alloc_zone_locked", "percpu_refill") == 1
            refill = tuple(
                trace.column("mm_page_alloc_zone_locked", c)[refill_mask]
                for c in ("ts_ns", "pfn", "order", "cpu")
            )
        else:
            refill = (np.zeros(0, np.int64),) * 4
        manifest = trace.manifest
        return cls.from_arrays(
            name=trace.name,
            alloc=alloc,
            free=(free_ts, free_pfn, free_order, free_cpu),
            refill=refill,
            nr_cpus=manifest.cpu_count,
            start_ts_ns=manifest.start_ts_ns,
            end_ts_ns=manifest.end_ts_ns,
            nr_free_batched=nr_batched,
        )

    @classmethod
    def from_arrays(
        cls,
        name: str,
        alloc: tuple[np.ndarray, ...],
        free: tuple[np.ndarray, ...],
        refill: tuple[np.ndarray, ...] | None = None,
        nr_cpus: int = 1,
        start_ts_ns: int | None = None,
        end_ts_ns: int | None = None,
        nr_free_batched: int = 0,
    ) -> AllocatorEvents:
        """Merge ``(ts_ns, pfn, order, cpu)`` arrays of each kind into one stream."""
        if refill is None:
            refill = (np.zeros(0, np.int64),) * 4
        parts = [(free, EV_FREE), (refill, EV_REFILL), (alloc, EV_ALLOC)]
        ts = np.concatenate([np.asarray(p[0], dtype=np.int64) for p, _ in parts])
        raw_pfn = np.concatenate([np.asarray(p[1], dtype=np.int64) for p, _ in parts])
        order = np.concatenate([np.asarray(p[2], dtype=np.int8) for p, _ in parts])
        cpu = np.concatenate([np.asarray(p[3], dtype=np.int32) for p, _ in parts])
        kind = np.concatenate(
            [np.full(len(p[0]), k, dtype=np.int8) for p, k in parts]
        )
        pfn, nr_captured = _compact_pfns(raw_pfn, order, kind)
        # Sort by time; among equal times frees go first, then refills, then
        # allocations, so a page freed and reallocated at once is reused.
        index = np.lexsort((kind, ts))
        ts = ts[index]
        if ts.size:
            first, last = int(ts[0]), int(ts[-1])
        else:
            first = last = 0
        start = first if start_ts_ns is None else min(int(start_ts_ns), first)
        end = last if end_ts_ns is None else max(int(end_ts_ns), last)
        max_cpu = int(cpu.max()) + 1 if cpu.size else 1
        return cls(
            name=name,
            ts_ns=ts,
            kind=kind[index],
            pfn=pfn[index],
            order=order[index],
            cpu=cpu[index],
            nr_captured_pages=nr_captured,
            nr_cpus=max(int(nr_cpus), max_cpu),
            start_ts_ns=start,
            end_ts_ns=end,
            nr_free_batched=nr_free_batched,
        )


def select_free_events(
    trace: Trace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Return the free events ``(ts_ns, pfn, order, cpu)`` and the count of batch markers.

    ``mm_page_free`` is the free event. On Linux 6.x every path that frees a
    page runs free_pages_prepare(), which emits ``mm_page_free``; a batched
    free (free_unref_folios()) emits ``mm_page_free_batched`` in addition,
    for the same page. Counting both would free those pages twice, so
    ``mm_page_free_batched`` only marks batches and is counted, not replayed.
    """
    ts = trace.column("mm_page_free", "ts_ns")
    pfn = trace.column("mm_page_free", "pfn")
    order = trace.column("mm_page_free", "order")
    cpu = trace.column("mm_page_free", "cpu")
    nr_batched = 0
    if trace.has("mm_page_free_batched"):
        nr_batched = int(trace.table("mm_page_free_batched").num_rows)
    return ts, pfn, order, cpu, nr_batched


def _compact_pfns(
    raw_pfn: np.ndarray, order: np.ndarray, kind: np.ndarray
) -> tuple[np.ndarray, int]:
    """Map captured pfns to the compacted space; return it and its size in pages."""
    sizes = np.left_shift(np.int64(1), order.astype(np.int64))
    placed = kind != EV_FREE
    first_chunk = raw_pfn[placed] >> CHUNK_ORDER
    last_chunk = (raw_pfn[placed] + sizes[placed] - 1) >> CHUNK_ORDER
    chunks = np.unique(np.concatenate([first_chunk, last_chunk]))
    if chunks.size == 0:
        return np.full(raw_pfn.shape, -1, dtype=np.int64), 0
    gaps = np.concatenate([[0], np.cumsum(np.diff(chunks) > 1)])
    dense = np.arange(chunks.size, dtype=np.int64) + gaps
    chunk = raw_pfn >> CHUNK_ORDER
    index = np.clip(np.searchsorted(chunks, chunk), 0, chunks.size - 1)
    known = chunks[index] == chunk
    # A block that runs past its chunk must find the next chunk present too.
    end_chunk = (raw_pfn + sizes - 1) >> CHUNK_ORDER
    end_index = np.clip(np.searchsorted(chunks, end_chunk), 0, chunks.size - 1)
    known &= chunks[end_index] == end_chunk
    pfn = np.where(
        known, dense[index] * CHUNK_PAGES + (raw_pfn & (CHUNK_PAGES - 1)), -1
    )
    nr_pages = int(dense[-1] + 1) * CHUNK_PAGES
    return pfn.astype(np.int64), nr_pages
