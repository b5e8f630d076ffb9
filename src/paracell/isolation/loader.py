"""The container kernel's scan of executable user memory.

Whenever user pages become executable (program load, mmap, mprotect,
pkey_mprotect) the kernel scans them for PKRU-writing byte sequences and
rejects the change when one appears anywhere except at the gates' own
WRPKRU and XRSTOR. The scan reads two bytes into each neighbouring executable
page, because a three-byte sequence can start on one page and end on the
next. Switched-off scan rules reproduce the weaker scans that attacks defeat:
instruction boundaries only, page by page, or WRPKRU only.
"""

from __future__ import annotations

from paracell.isolation.memory import PAGE_SIZE, AddressSpace, Prot, page_base
from paracell.isolation.patterns import SIGNATURE_BYTES, PatternHit, find_pkru_writers

_OVERLAP = SIGNATURE_BYTES - 1


def find_forbidden_writers(
    memory: AddressSpace,
    start: int,
    end: int,
    sanctioned: frozenset[int],
    rules: frozenset[str],
) -> list[int]:
    """Return addresses of PKRU writers that executable ``[start, end)`` exposes.

    A hit counts when its first byte is executable, it overlaps the range (or
    the two bytes either side, where a neighbouring page is executable), and
    its address is not one of the ``sanctioned`` gate instructions.
    """
    if "loader-scan" not in rules:
        return []
    include_xrstor = "scan-xrstor" in rules
    if "scan-across-pages" in rules:
        regions = _executable_runs(memory, start - _OVERLAP, end + _OVERLAP)
    else:
        regions = [
            (base, base + PAGE_SIZE)
            for base in range(page_base(start), end, PAGE_SIZE)
            if _executable(memory, base)
        ]
    found: list[int] = []
    for lo, hi in regions:
        data = memory.read_raw(lo, hi - lo)
        hits = find_pkru_writers(data, include_xrstor=include_xrstor)
        if "scan-every-offset" not in rules:
            hits = _at_instruction_boundaries(data, lo, hits)
        found.extend(
            lo + hit.offset for hit in hits if lo + hit.offset not in sanctioned
        )
    return sorted(set(found))


def _executable(memory: AddressSpace, address: int) -> bool:
    page = memory.page(address)
    return page is not None and bool(page.prot & Prot.EXEC)


def _executable_runs(memory: AddressSpace, lo: int, hi: int) -> list[tuple[int, int]]:
    """Split ``[lo, hi)`` into maximal pieces that lie on executable pages."""
    runs: list[tuple[int, int]] = []
    cursor = lo
    while cursor < hi:
        base = page_base(cursor)
        piece_end = min(hi, base + PAGE_SIZE)
        if _executable(memory, base):
            if runs and runs[-1][1] == cursor:
                runs[-1] = (runs[-1][0], piece_end)
            else:
                runs.append((cursor, piece_end))
        cursor = piece_end
    return runs


def _at_instruction_boundaries(
    data: bytes, base: int, hits: list[PatternHit]
) -> list[PatternHit]:
    # The weaker scan that the scan-every-offset rule replaces: decode linearly
    # from the start of the region, as a disassembler would, and keep only hits
    # where an instruction starts (at the 0F byte or at its REX prefix).
    import capstone

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    starts: set[int] = set()
    offset = 0
    while offset < len(data):
        for address, size, _mnemonic, _operands in decoder.disasm_lite(
            data[offset:], base + offset
        ):
            starts.add(address - base)
            offset = address - base + size
        if offset < len(data):
            offset += 1  # capstone stopped at a byte it cannot decode: skip it
    return [
        h for h in hits if h.offset in starts or (h.rex_w and h.offset - 1 in starts)
    ]
