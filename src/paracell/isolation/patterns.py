"""Byte sequences that can write PKRU, found at every byte offset.

Three instructions can load PKRU from user-chosen data:

- WRPKRU, ``0F 01 EF``: writes EAX to PKRU (ECX and EDX must be 0).
- XRSTOR, ``0F AE /5`` with a memory operand (ModRM mod != 3, reg == 5);
  with REX.W it is XRSTOR64. With mod == 3 the same opcode bytes
  ``0F AE E8``-``EF`` are LFENCE, which is harmless. The requested-feature
  bitmap EDX:EAX is a run-time value, so any XRSTOR may load PKRU.
- XRSTORS, ``0F C7 /3`` with a memory operand. It faults outside ring 0, but
  a scanner cannot know where the code will run, so it is reported too.

x86 instructions have no alignment, so a jump can start decoding at any byte:
a sequence hidden inside an immediate, split across two instructions or
across two pages still executes. The search therefore looks at every offset
and reports the position of the ``0F`` byte. Prefixes do not matter because
a jump can land after them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class WriterKind(StrEnum):
    """Instruction that a hit decodes to when execution starts at its ``0F`` byte."""

    WRPKRU = "wrpkru"
    XRSTOR = "xrstor"
    XRSTORS = "xrstors"


#: Length of the opcode bytes plus ModRM that identify each kind.
SIGNATURE_BYTES = 3

# ModRM bytes with mod != 3 and the given reg field: reg 5 is XRSTOR under
# 0F AE, reg 3 is XRSTORS under 0F C7.
_XRSTOR_MODRM = rb"[\x28-\x2f\x68-\x6f\xa8-\xaf]"
_XRSTORS_MODRM = rb"[\x18-\x1f\x58-\x5f\x98-\x9f]"
# NOTE: re's search for the literal 0x0F prefix runs at about 600 MB/s here,
# faster than a numpy version of the same test (benchmarks/bench_scan.py).
# No match can contain a 0x0F after its first byte, so the non-overlapping
# matches of finditer are all the matches.
_ALL_WRITERS = re.compile(
    rb"\x0f(?:(\x01\xef)|(\xae" + _XRSTOR_MODRM + rb")|(\xc7" + _XRSTORS_MODRM + rb"))"
)
_WRPKRU_ONLY = re.compile(rb"\x0f(\x01\xef)")


@dataclass(frozen=True, order=True)
class PatternHit:
    """One PKRU-writing byte sequence in a buffer.

    ``offset`` is the position of the ``0F`` byte. ``rex_w`` is true when the
    byte before it is a REX prefix with W set, so a decoder starting one byte
    earlier decodes the 64-bit form (XRSTOR64, XRSTORS64).
    """

    offset: int
    kind: WriterKind
    rex_w: bool = False

    @property
    def mnemonic(self) -> str:
        if self.rex_w and self.kind is not WriterKind.WRPKRU:
            return f"{self.kind.value}64"
        return self.kind.value


def find_pkru_writers(
    data: bytes | bytearray | memoryview, *, include_xrstor: bool = True
) -> list[PatternHit]:
    """Return every WRPKRU, XRSTOR and XRSTORS byte sequence in ``data``, by offset.

    A sequence must lie entirely inside ``data``; callers that scan a region
    in pieces pass two bytes of overlap. With ``include_xrstor`` false only
    WRPKRU is searched.
    """
    pattern = _ALL_WRITERS if include_xrstor else _WRPKRU_ONLY
    hits = []
    for match in pattern.finditer(data):
        offset = match.start()
        if match.lastindex == 1:
            kind = WriterKind.WRPKRU
        elif match.lastindex == 2:
            kind = WriterKind.XRSTOR
        else:
            kind = WriterKind.XRSTORS
        rex_w = offset > 0 and (data[offset - 1] & 0xF8) == 0x48
        hits.append(PatternHit(offset, kind, rex_w))
    return hits
