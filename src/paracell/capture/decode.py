"""Turn the spooled ring-buffer pages into numpy columns per tracepoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paracell.capture.events import Tracepoint
from paracell.capture.formats import EventFormat, PageLayout
from paracell.capture.ringbuf import decode_pages, gather_field, gather_string
from paracell.errors import CaptureError

log = logging.getLogger("paracell.capture")

Columns = dict[str, np.ndarray]


@dataclass
class DecodeResult:
    """Columns per tracepoint, time-sorted, plus loss and volume counters."""

    columns: dict[Tracepoint, Columns]
    # Per (role, cpu): events the page headers report as lost (-1 entries,
    # where the count was not stored, are counted as one).
    missed_in_pages: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0
    pages: int = 0
    unknown_types: int = 0


def decode_spool(files: list[tuple[str, int, Path]], page_size: int, layout: PageLayout,
                 formats: dict[Tracepoint, EventFormat],
                 roles: dict[Tracepoint, str]) -> DecodeResult:
    """Decode spool files ``(role, cpu, path)`` into columns per tracepoint.

    ``formats`` gives each tracepoint's layout and ``roles`` which instance
    recorded it; a record whose type id belongs to no chosen tracepoint of
    its instance is counted in ``unknown_types`` and dropped.
    """
    parts: dict[Tracepoint, list[Columns]] = {tp: [] for tp in formats}
    result = DecodeResult({})
    for role, cpu, path in files:
        buf = np.fromfile(path, dtype=np.uint8)
        if buf.size == 0:
            continue
        pages = decode_pages(buf, page_size, layout, source=str(path))
        result.pages += buf.size // page_size
        result.records += len(pages)
        missed = pages.missed
        result.missed_in_pages[(role, cpu)] = int(np.where(missed < 0, 1, missed).sum())
        known = np.zeros(len(pages), dtype=bool)
        for tp, fmt in formats.items():
            if roles[tp] != role:
                continue
            sel = np.flatnonzero(pages.type_id == fmt.id)
            known[sel] = True
            if sel.size == 0:
                continue
            cols = extract(pages.buffer, pages.offset[sel], pages.length[sel], fmt, str(path))
            cols["ts_ns"] = pages.ts_ns[sel]
            cols["cpu"] = np.full(sel.size, cpu, dtype=np.int32)
            # Position in this CPU's stream: breaks ties between equal stamps.
            cols["seq"] = sel.astype(np.int64)
            parts[tp].append(cols)
        result.unknown_types += int((~known).sum())
    for tp, chunks in parts.items():
        result.columns[tp] = _concat_sorted(chunks, formats[tp])
    return result


def extract(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, fmt: EventFormat,
            source: str) -> Columns:
    """Gather every scalar and char-array field of one event type."""
    short = np.flatnonzero(lengths < fmt.record_size)
    if short.size:
        raise CaptureError(
            f"{source}: a {fmt.system}:{fmt.name} record is {int(lengths[short[0]])} "
            f"bytes, shorter than its format's {fmt.record_size}"
        )
    cols: Columns = {}
    for name, f in fmt.fields.items():
        if f.array_len and f.size == f.array_len:
            cols[name] = gather_string(buf, offsets, fmt, name)
        elif not f.array_len and f.size in (1, 2, 4, 8):
            cols[name] = gather_field(buf, offsets, fmt, name)
    return cols


def _concat_sorted(chunks: list[Columns], fmt: EventFormat) -> Columns:
    if not chunks:
        return _empty(fmt)
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.lexsort((cols["seq"], cols["cpu"], cols["ts_ns"]))
    return {k: v[order] for k, v in cols.items()}


def _empty(fmt: EventFormat) -> Columns:
    cols: Columns = {"ts_ns": np.zeros(0, np.int64), "cpu": np.zeros(0, np.int32),
                     "seq": np.zeros(0, np.int64)}
    for name, f in fmt.fields.items():
        if f.array_len and f.size == f.array_len:
            cols[name] = np.zeros(0, dtype=object)
        elif not f.array_len and f.size in (1, 2, 4, 8):
            cols[name] = np.zeros(0, dtype=f.numpy_dtype)
    return cols
