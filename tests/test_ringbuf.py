"""Ring-buffer page decoder: hand-made pages and the kernel's own text output."""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest

from paracell.capture.formats import PageLayout, parse_event_format, parse_page_layout
from paracell.capture.ringbuf import (
    MISSED_EVENTS,
    MISSED_STORED,
    decode_pages,
    gather_field,
    gather_string,
)
from paracell.errors import CaptureError
from tracefs_fixture import tracefs_top  # noqa: F401  (pytest fixture)

PAGE = 4096
LAYOUT = PageLayout()
HEADER_PAGE = """\
\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
"""
HEADER_EVENT = """\
# compressed entry header
\ttype_len    :    5 bits
\ttime_delta  :   27 bits
\tarray       :   32 bits

\tpadding     : type == 29
\ttime_extend : type == 30
\ttime_stamp : type == 31
\tdata max type_len  == 28
"""


class PageWriter:
    """Builds one ring-buffer page the way the kernel lays it out."""

    def __init__(self, page_ts: int) -> None:
        self.page_ts = page_ts
        self.data = bytearray()

    def _word(self, type_len: int, delta: int) -> bytes:
        return struct.pack("<I", (delta << 5) | type_len)

    def event(self, delta: int, type_id: int, payload: bytes) -> PageWriter:
        body = struct.pack("<H", type_id) + payload
        body += b"\0" * (-len(body) % 4)
        if len(body) <= 112:
            self.data += self._word(len(body) // 4, delta) + body
        else:  # type_len 0: the length word counts itself
            self.data += self._word(0, delta) + struct.pack("<I", len(body) + 4) + body
        return self

    def extend(self, delta: int) -> PageWriter:
        self.data += self._word(30, delta & ((1 << 27) - 1)) + struct.pack(
            "<I", delta >> 27
        )
        return self

    def absolute(self, ts: int) -> PageWriter:
        self.data += self._word(31, ts & ((1 << 27) - 1)) + struct.pack("<I", ts >> 27)
        return self

    def discarded(self, delta: int, size: int) -> PageWriter:
        self.data += (
            self._word(29, delta) + struct.pack("<I", size) + b"\xaa" * (size - 4)
        )
        return self

    def page(
        self, missed: int | None = None, stored: bool = True, tail_padding: bool = False
    ) -> bytes:
        data = bytes(self.data)
        commit = len(data)
        if tail_padding:
            data += self._word(29, 0)
            commit = len(data)
        flags = 0
        if missed is not None:
            flags |= MISSED_EVENTS
            if stored:
                data += struct.pack("<Q", missed)
                flags |= MISSED_STORED
        header = struct.pack("<Qq", self.page_ts, commit | flags)
        page = header + data
        return page + b"\0" * (PAGE - len(page))


def decode(*pages: bytes):  # type: ignore[no-untyped-def]
    return decode_pages(
        np.frombuffer(b"".join(pages), dtype=np.uint8).copy(), PAGE, LAYOUT
    )


def test_page_layout_parsed_from_headers() -> None:
    assert parse_page_layout(HEADER_PAGE, HEADER_EVENT) == LAYOUT


def test_deltas_accumulate_from_page_stamp() -> None:
    page = PageWriter(1_000).event(5, 7, b"\1" * 6).event(10, 8, b"\2" * 6).page()
    out = decode(page)
    assert out.ts_ns.tolist() == [1_005, 1_015]
    assert out.type_id.tolist() == [7, 8]
    assert out.length.tolist() == [8, 8]
    assert out.missed.tolist() == [0]


def test_time_extend_adds_high_bits() -> None:
    big = (3 << 27) + 12345
    page = (
        PageWriter(100).extend(big).event(0, 1, b"\0" * 6).event(1, 1, b"\0" * 6).page()
    )
    assert decode(page).ts_ns.tolist() == [100 + big, 101 + big]


def test_absolute_stamp_replaces_clock() -> None:
    ts = (1 << 40) + 777
    page = (
        PageWriter(5).event(1, 1, b"\0" * 6).absolute(ts).event(0, 2, b"\0" * 6).page()
    )
    assert decode(page).ts_ns.tolist() == [6, ts]


def test_discarded_event_keeps_clock() -> None:
    # The kernel's reader ignores the delta of padding, so must we.
    page = PageWriter(0).event(4, 1, b"\0" * 6).discarded(99, 16).event(3, 2, b"\0" * 6)
    out = decode(page.page())
    assert out.ts_ns.tolist() == [4, 7]
    assert out.type_id.tolist() == [1, 2]


def test_tail_padding_ends_page() -> None:
    page = PageWriter(0).event(1, 1, b"\0" * 6).page(tail_padding=True)
    assert len(decode(page)) == 1


def test_long_record_uses_length_word() -> None:
    payload = bytes(range(200))
    out = decode(PageWriter(0).event(2, 9, payload).page())
    assert out.length.tolist() == [204]  # 2-byte type id + 200, padded to 4
    start = int(out.offset[0])
    assert out.buffer[start + 2 : start + 202].tobytes() == payload


def test_missed_events_stored_count() -> None:
    page = PageWriter(0).event(1, 1, b"\0" * 6).page(missed=42)
    out = decode(page)
    assert out.missed.tolist() == [42]
    assert len(out) == 1


def test_missed_events_without_count() -> None:
    page = PageWriter(0).event(1, 1, b"\0" * 6).page(missed=5, stored=False)
    assert decode(page).missed.tolist() == [-1]


def test_pages_decode_in_sequence() -> None:
    first = PageWriter(10).event(1, 1, b"\0" * 6).page()
    second = PageWriter(50).event(2, 1, b"\0" * 6).page()
    assert decode(first, second).ts_ns.tolist() == [11, 52]


def test_bad_commit_length_rejected() -> None:
    page = bytearray(PageWriter(0).event(1, 1, b"\0" * 6).page())
    page[8:16] = struct.pack("<q", PAGE)
    with pytest.raises(CaptureError, match="page 0 is malformed"):
        decode(bytes(page))


def test_record_past_commit_rejected() -> None:
    page = bytearray(PageWriter(0).event(1, 1, b"\0" * 30).page())
    page[8:16] = struct.pack("<q", 12)  # cut the record short
    with pytest.raises(CaptureError, match="runs past the committed data"):
        decode(bytes(page))


def test_partial_page_buffer_rejected() -> None:
    with pytest.raises(CaptureError, match="whole number"):
        decode_pages(np.zeros(PAGE + 1, np.uint8), PAGE, LAYOUT)


SCHED_SWITCH_FORMAT = """\
name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;
"""


def test_fields_gathered_by_format() -> None:
    fmt = parse_event_format(SCHED_SWITCH_FORMAT)
    assert fmt.id == 372
    assert fmt.field("prev_comm").array_len == 16
    record = struct.pack(
        "<BBi16siiq16sii",
        0,
        0,
        4321,
        b"bash\0garbage",
        4321,
        120,
        -1,
        b"swapper/0",
        0,
        120,
    )
    out = decode(PageWriter(0).event(1, 372, record).page())
    offsets = out.offset
    assert gather_field(out.buffer, offsets, fmt, "prev_pid").tolist() == [4321]
    assert gather_field(out.buffer, offsets, fmt, "prev_state").tolist() == [-1]
    assert gather_string(out.buffer, offsets, fmt, "prev_comm").tolist() == ["bash"]
    assert gather_string(out.buffer, offsets, fmt, "next_comm").tolist() == [
        "swapper/0"
    ]


def test_missing_field_named() -> None:
    fmt = parse_event_format(SCHED_SWITCH_FORMAT)
    with pytest.raises(CaptureError, match="no field 'pfn'"):
        fmt.field("pfn")


# --- against the kernel -----------------------------------------------------------


@pytest.mark.tracefs
def test_decoder_matches_kernel_text(tracefs_top) -> None:  # type: ignore[no-untyped-def]
    """Decode a real buffer and compare every timestamp with the ``trace`` file."""
    top = tracefs_top
    name = f"paracell-test-{os.getpid()}"
    top.mkdir(f"instances/{name}")
    fs = top.instance(name)
    events = ["raw_syscalls/sys_enter", "sched/sched_switch", "kmem/mm_page_alloc"]
    try:
        fs.write("trace_clock", "mono")
        for e in events:
            fs.write(f"events/{e}/enable", "1")
        os.system("ls -R /usr/lib >/dev/null 2>&1")
        fs.write("tracing_on", "0")
        text = fs.read("trace")
        layout = parse_page_layout(
            top.read("events/header_page"), top.read("events/header_event")
        )
        formats = {
            parse_event_format(top.read(f"events/{e}/format")).id: e for e in events
        }
        stamps: list[np.ndarray] = []
        types: list[np.ndarray] = []
        for cpu in range(os.cpu_count() or 1):
            if not fs.exists(f"per_cpu/cpu{cpu}"):
                continue
            fd = fs.open_read(f"per_cpu/cpu{cpu}/trace_pipe_raw")
            chunks = []
            try:
                while True:
                    try:
                        data = os.read(fd, PAGE)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    chunks.append(data)
            finally:
                os.close(fd)
            if chunks:
                pages = decode_pages(
                    np.frombuffer(b"".join(chunks), np.uint8).copy(), PAGE, layout
                )
                stamps.append(pages.ts_ns)
                types.append(pages.type_id)
    finally:
        top.rmdir(f"instances/{name}")
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    text_us = sorted(
        int(m.group(1) + m.group(2))
        for m in (re.search(r"\s(\d+)\.(\d{6}):", ln) for ln in lines)
        if m
    )
    # The text output rounds nanoseconds to the nearest microsecond.
    ours_us = sorted(((np.concatenate(stamps) + 500) // 1000).tolist())
    assert len(lines) > 100
    assert ours_us == text_us
    names = {formats[int(t)] for t in np.concatenate(types)}
    assert names == set(events)
