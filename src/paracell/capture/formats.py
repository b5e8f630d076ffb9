"""Layouts read from tracefs at run time: event formats and the ring-buffer header.

The kernel describes each event's binary record in ``events/SYS/NAME/format``
and the ring-buffer page and entry headers in ``events/header_page`` and
``events/header_event``. Field offsets are taken from these files rather
than hard-coded, because they change between kernel releases (for example
``mm_page_alloc`` carried a ``page`` pointer before it carried ``pfn``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from paracell.errors import CaptureError

_FIELD_RE = re.compile(
    r"field:\s*(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>\d+);"
)
_ARRAY_RE = re.compile(r"\[(\d*)\]\s*$")


@dataclass(frozen=True)
class Field:
    """One field of a binary event record."""

    name: str
    offset: int
    size: int
    signed: bool
    # Element count for fixed arrays such as ``char comm[16]``; 0 for scalars.
    array_len: int = 0

    @property
    def numpy_dtype(self) -> str:
        """Little-endian numpy type of a scalar field of this size."""
        kind = "i" if self.signed else "u"
        if self.size not in (1, 2, 4, 8):
            raise CaptureError(f"field {self.name!r} has unsupported size {self.size}")
        return f"<{kind}{self.size}"


@dataclass(frozen=True)
class EventFormat:
    """The id and fields of one tracepoint, from its ``format`` file."""

    system: str
    name: str
    id: int
    fields: dict[str, Field]

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise CaptureError(
                f"event {self.system}:{self.name} has no field {name!r} on this kernel "
                f"(fields: {', '.join(self.fields)})"
            ) from None

    @property
    def record_size(self) -> int:
        return max((f.offset + f.size for f in self.fields.values()), default=0)


def parse_event_format(text: str, system: str = "?") -> EventFormat:
    """Parse the text of an event ``format`` file."""
    name_match = re.search(r"^name:\s*(\S+)", text, re.M)
    id_match = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name_match or not id_match:
        raise CaptureError(f"event format of {system} lacks a name or ID line")
    fields: dict[str, Field] = {}
    for m in _FIELD_RE.finditer(text):
        decl = m.group("decl").strip()
        array_len = 0
        arr = _ARRAY_RE.search(decl)
        if arr:
            array_len = int(arr.group(1) or 0)
            decl = decl[: arr.start()].strip()
        fname = decl.split()[-1].lstrip("*")
        fields[fname] = Field(
            fname, int(m.group("offset")), int(m.group("size")),
            m.group("signed") == "1", array_len,
        )
    return EventFormat(system, name_match.group(1), int(id_match.group(1)), fields)


@dataclass(frozen=True)
class PageLayout:
    """The ring-buffer page header and entry-header type codes."""

    timestamp_offset: int = 0
    commit_offset: int = 8
    commit_size: int = 8
    data_offset: int = 16
    # type_len values of the compressed entry header.
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max: int = 28


def parse_page_layout(header_page: str, header_event: str) -> PageLayout:
    """Parse ``events/header_page`` and ``events/header_event``."""
    fields = {}
    for m in _FIELD_RE.finditer(header_page):
        decl = m.group("decl").split()
        fields[decl[-1]] = (int(m.group("offset")), int(m.group("size")))
    try:
        ts_off, ts_size = fields["timestamp"]
        commit_off, commit_size = fields["commit"]
        data_off, _ = fields["data"]
    except KeyError as exc:
        raise CaptureError(f"events/header_page lacks field {exc.args[0]!r}") from None
    if ts_size != 8 or commit_size not in (4, 8):
        raise CaptureError(
            f"unsupported ring-buffer page header (timestamp size {ts_size}, "
            f"commit size {commit_size})"
        )

    def code(label: str) -> int:
        m = re.search(rf"{label}\s*:\s*type\s*==\s*(\d+)", header_event)
        if not m:
            raise CaptureError(f"events/header_event lacks the {label!r} type code")
        return int(m.group(1))

    data_max = re.search(r"data max type_len\s*==\s*(\d+)", header_event)
    if not re.search(r"type_len\s*:\s*5 bits", header_event):
        raise CaptureError("events/header_event describes an entry header this tool "
                           "cannot decode (expected a 5-bit type_len)")
    return PageLayout(
        timestamp_offset=ts_off,
        commit_offset=commit_off,
        commit_size=commit_size,
        data_offset=data_off,
        padding=code("padding"),
        time_extend=code("time_extend"),
        time_stamp=code("time_stamp"),
        data_max=int(data_max.group(1)) if data_max else 28,
    )
