"""Allow-list of scanner hits that an image build accepts.

Format: one entry per line; ``#`` starts a comment; blank lines are ignored.
Each entry is ``FILE:WHERE``, split at the last colon:

``FILE``
    The path as the scanner prints it, or a shell glob (``fnmatch``). A
    pattern without ``/`` is matched against the file's base name, so
    ``libc.so.6:pkey_set`` allows that function in any copy of libc.
``WHERE``
    A file offset of the hit's ``0F`` byte (``0x109352`` or ``1086290``),
    the name of the function symbol that contains the hit (``pkey_set``),
    or ``*`` for every hit in the file.

Example::

    # glibc's pkey_set(3) and the dynamic linker's lazy-binding trampolines
    # (Debian's ld.so has no symbols for them, so they are named by offset)
    libc.so.6:pkey_set
    ld-linux-x86-64.so.2:0x12254
    /opt/app/bin/server:0x4a2f10
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from paracell.errors import ParacellError


@dataclass(frozen=True)
class AllowEntry:
    pattern: str
    offset: int | None
    symbol: str | None
    line: int

    def matches(self, path: str, offset: int, symbol: str | None) -> bool:
        target = path if "/" in self.pattern else path.rsplit("/", 1)[-1]
        if not fnmatch.fnmatchcase(target, self.pattern):
            return False
        if self.offset is not None:
            return offset == self.offset
        if self.symbol == "*":
            return True
        return symbol is not None and symbol == self.symbol


class AllowList:
    """Parsed allow-list; ``allows`` returns whether one hit is accepted."""

    def __init__(self, entries: list[AllowEntry] | None = None) -> None:
        self.entries = entries or []

    @classmethod
    def load(cls, path: Path) -> AllowList:
        """Parse ``path``; raise ``ParacellError`` naming the line of a bad entry."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParacellError(
                f"{path}: cannot read the allow-list ({exc})",
                hint="pass a readable UTF-8 text file to --allow",
            ) from None
        return cls(cls.parse(text, str(path)))

    @staticmethod
    def parse(text: str, source: str = "<allow-list>") -> list[AllowEntry]:
        entries = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            pattern, sep, where = line.rpartition(":")
            if not sep or not pattern or not where:
                raise ParacellError(
                    f"{source}: line {number}: entry {raw.strip()!r} is not FILE:WHERE",
                    hint="WHERE is a file offset, a function symbol or *",
                )
            offset = _parse_offset(where)
            if offset is None and any(ch.isspace() for ch in where):
                raise ParacellError(
                    f"{source}: line {number}: symbol {where!r} contains a space",
                    hint="WHERE is a file offset, a function symbol or *",
                )
            symbol = None if offset is not None else where
            entries.append(AllowEntry(pattern.strip(), offset, symbol, number))
        return entries

    def allows(self, path: str, offset: int, symbol: str | None) -> bool:
        return any(entry.matches(path, offset, symbol) for entry in self.entries)


def _parse_offset(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None
