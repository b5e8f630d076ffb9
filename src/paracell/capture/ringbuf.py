"""Decoder for the binary pages of ``per_cpu/cpuN/trace_pipe_raw``.

A page starts with a header (page timestamp, commit word, see
``events/header_page``) followed by entries. Each entry starts with a 32-bit
word holding a 5-bit ``type_len`` and a 27-bit ``time_delta``:

* ``type_len`` 1..28: a data record of ``type_len * 4`` bytes follows;
* ``type_len`` 0: the next 32-bit word holds the length (it counts itself)
  and the record follows it;
* padding (29): the rest of the page when ``time_delta`` is 0, otherwise a
  discarded record whose length is in the next word; padding does not move
  the clock (the kernel's own reader skips its delta);
* time extend (30): adds ``time_delta | word1 << 27`` to the clock;
* time stamp (31): sets the clock to the absolute value
  ``time_delta | word1 << 27`` (59 bits, top bits kept from the clock).

The low bits of the commit word give the data length; bit 31 says events
were lost before this page and bit 30 says their count was stored as a
64-bit word right after the data.

NOTE: the decoder is compiled with numba; one pass counts records, a second
fills flat arrays, and fields are then gathered per event type with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paracell.capture.formats import EventFormat, PageLayout
from paracell.errors import CaptureError

# Flags in the commit word of a page handed to a reader.
MISSED_EVENTS = 1 << 31
MISSED_STORED = 1 << 30
COMMIT_LENGTH_MASK = (1 << 30) - 1
# The 59-bit absolute time stamp keeps the clock's top 5 bits.
TS_MSB = 0xF8 << 56
_TS_MSB_INT64 = TS_MSB - (1 << 64)  # the same bits as a signed 64-bit constant

# Page status codes written by the decoder.
PAGE_OK = 0
PAGE_BAD_LENGTH = 1
PAGE_OVERRUN = 2


@dataclass
class DecodedPages:
    """Records of a run of pages from one CPU, in buffer order."""

    ts_ns: np.ndarray  # int64 per record
    offset: np.ndarray  # int64 byte offset of the record payload in the buffer
    length: np.ndarray  # int32 payload length in bytes
    type_id: np.ndarray  # uint16 common_type of the record
    missed: np.ndarray  # int64 per page: -1 lost (count unknown), N lost, 0 none
    buffer: np.ndarray  # the uint8 buffer the offsets point into

    def __len__(self) -> int:
        return int(self.ts_ns.size)


_compiled = None


def _kernels():  # type: ignore[no-untyped-def]
    """Compile the numba kernels on first use (keeps imports fast)."""
    global _compiled
    if _compiled is not None:
        return _compiled
    import numba

    @numba.njit(cache=True, nogil=True)
    def walk(buf, page_size, ts_off, commit_off, commit_size, data_off,
             padding, time_extend, time_stamp, data_max,
             out_ts, out_off, out_len, out_type, page_missed, page_status, fill):
        npages = buf.size // page_size
        n = 0
        for p in range(npages):
            base = p * page_size
            ts = np.int64(0)
            for k in range(8):
                ts |= np.int64(buf[base + ts_off + k]) << (8 * k)
            commit = np.int64(0)
            for k in range(4):
                commit |= np.int64(buf[base + commit_off + k]) << (8 * k)
            length = commit & COMMIT_LENGTH_MASK
            page_missed[p] = 0
            page_status[p] = PAGE_OK
            if length > page_size - data_off:
                page_status[p] = PAGE_BAD_LENGTH
                continue
            if commit & MISSED_EVENTS:
                page_missed[p] = -1
                if commit & MISSED_STORED and length + 8 <= page_size - data_off:
                    cnt = np.int64(0)
                    at = base + data_off + length
                    for k in range(8):
                        cnt |= np.int64(buf[at + k]) << (8 * k)
                    page_missed[p] = cnt
            pos = base + data_off
            end = base + data_off + length
            while pos + 4 <= end:
                word = np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8) | \
                    (np.int64(buf[pos + 2]) << 16) | (np.int64(buf[pos + 3]) << 24)
                type_len = word & 0x1F
                delta = word >> 5
                if type_len == padding:
                    if delta == 0:
                        break
                    if pos + 8 > end:
                        page_status[p] = PAGE_OVERRUN
                        break
                    size = np.int64(buf[pos + 4]) | (np.int64(buf[pos + 5]) << 8) | \
                        (np.int64(buf[pos + 6]) << 16) | (np.int64(buf[pos + 7]) << 24)
                    pos += 4 + size
                    continue
                if type_len == time_extend or type_len == time_stamp:
                    if pos + 8 > end:
                        page_status[p] = PAGE_OVERRUN
                        break
                    hi = np.int64(buf[pos + 4]) | (np.int64(buf[pos + 5]) << 8) | \
                        (np.int64(buf[pos + 6]) << 16) | (np.int64(buf[pos + 7]) << 24)
                    value = (hi << 27) | delta
                    if type_len == time_extend:
                        ts += value
                    else:
                        msb = ts & np.int64(_TS_MSB_INT64)
                        value |= msb
                        if msb != 0 and value < ts:
                            value += np.int64(1) << 59
                        ts = value
                    pos += 8
                    continue
                if type_len > data_max:
                    page_status[p] = PAGE_OVERRUN
                    break
                ts += delta
                if type_len == 0:
                    if pos + 8 > end:
                        page_status[p] = PAGE_OVERRUN
                        break
                    size = np.int64(buf[pos + 4]) | (np.int64(buf[pos + 5]) << 8) | \
                        (np.int64(buf[pos + 6]) << 16) | (np.int64(buf[pos + 7]) << 24)
                    payload = pos + 8
                    plen = size - 4
                    nxt = pos + 4 + size
                else:
                    payload = pos + 4
                    plen = type_len * 4
                    nxt = payload + plen
                if nxt > end or plen < 2:
                    page_status[p] = PAGE_OVERRUN
                    break
                if fill:
                    out_ts[n] = ts
                    out_off[n] = payload
                    out_len[n] = plen
                    out_type[n] = np.int64(buf[payload]) | (np.int64(buf[payload + 1]) << 8)
                n += 1
                pos = nxt
        return n

    _compiled = walk
    return walk


def decode_pages(buf: np.ndarray, page_size: int, layout: PageLayout,
                 source: str = "ring buffer") -> DecodedPages:
    """Decode whole pages in ``buf`` (uint8, a multiple of ``page_size`` long).

    Raises :class:`CaptureError` naming ``source`` and the page when a page
    is malformed.
    """
    if buf.dtype != np.uint8:
        raise TypeError("buffer must be uint8")
    if buf.size % page_size:
        raise CaptureError(
            f"{source}: {buf.size} bytes is not a whole number of {page_size}-byte pages"
        )
    walk = _kernels()
    npages = buf.size // page_size
    missed = np.zeros(npages, dtype=np.int64)
    status = np.zeros(npages, dtype=np.int8)
    empty64 = np.zeros(0, dtype=np.int64)
    empty32 = np.zeros(0, dtype=np.int32)
    empty16 = np.zeros(0, dtype=np.uint16)
    args = (page_size, layout.timestamp_offset, layout.commit_offset, layout.commit_size,
            layout.data_offset, layout.padding, layout.time_extend, layout.time_stamp,
            layout.data_max)
    count = walk(buf, *args, empty64, empty64, empty32, empty16, missed, status, False)
    bad = np.flatnonzero(status)
    if bad.size:
        page = int(bad[0])
        reason = "commit length exceeds the page" if status[page] == PAGE_BAD_LENGTH \
            else "an entry runs past the committed data"
        raise CaptureError(f"{source}: page {page} is malformed: {reason}")
    ts = np.empty(count, dtype=np.int64)
    off = np.empty(count, dtype=np.int64)
    length = np.empty(count, dtype=np.int32)
    type_id = np.empty(count, dtype=np.uint16)
    walk(buf, *args, ts, off, length, type_id, missed, status, True)
    return DecodedPages(ts, off, length, type_id, missed, buf)


def gather_field(buf: np.ndarray, offsets: np.ndarray, fmt: EventFormat,
                 name: str) -> np.ndarray:
    """Return one scalar field of the records at ``offsets`` as a numpy array."""
    field = fmt.field(name)
    dtype = np.dtype(field.numpy_dtype)
    if offsets.size == 0:
        return np.zeros(0, dtype=dtype)
    idx = (offsets + field.offset)[:, None] + np.arange(field.size)
    return np.ascontiguousarray(buf[idx]).view(dtype).reshape(-1)


def gather_string(buf: np.ndarray, offsets: np.ndarray, fmt: EventFormat,
                  name: str) -> np.ndarray:
    """Return a fixed ``char[N]`` field as an array of Python strings."""
    field = fmt.field(name)
    if offsets.size == 0:
        return np.zeros(0, dtype=object)
    idx = (offsets + field.offset)[:, None] + np.arange(field.size)
    raw = np.ascontiguousarray(buf[idx]).view(f"S{field.size}").reshape(-1)
    # Decode each distinct value once; the text ends at the first NUL.
    uniq, inverse = np.unique(raw, return_inverse=True)
    text = np.array(
        [u.split(b"\0", 1)[0].decode("utf-8", "replace") for u in uniq], dtype=object
    )
    return text[inverse.reshape(-1)]
