"""Scan real ELF files for byte sequences that can write PKRU.

For every x86-64 ELF file the scanner finds the executable PT_LOAD segments
and searches them at every byte offset for WRPKRU, XRSTOR and XRSTORS
(``paracell.isolation.patterns``). It scans what the loader actually maps
executable: each segment's file range rounded out to whole 4 KiB pages, so
bytes that share a page with the segment are included and reported as lying
outside the segment. Hits get the containing section (from section headers)
and function symbol (from .symtab or .dynsym) when the file has them, and a
disassembly of the surrounding code.

Directory trees are walked without following symbolic links, and a file
reached twice (hard links, repeated arguments) is scanned once.
"""

from __future__ import annotations

import bisect
import functools
import logging
import mmap
import os
import stat
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from paracell.isolation.patterns import PatternHit, find_pkru_writers

if TYPE_CHECKING:
    from elftools.elf.structs import ELFStructs

log = logging.getLogger("paracell.isolation")

PAGE_SIZE = 4096
EM_X86_64 = 62
PHDR_BYTES = 56
MAX_INSTRUCTION_BYTES = 15
PT_LOAD = 1
PF_X = 0x1
ELF_MAGIC = b"\x7fELF"
#: Bytes decoded before a hit when no function symbol gives a better start.
#: Linear x86 decoding resynchronises within a few instructions, so this
#: usually lands on the compiler's instruction boundaries.
DECODE_LEAD_BYTES = 96
#: Decode from the function start only when it is at most this far back.
MAX_FUNCTION_DECODE_BYTES = 4096
#: Elf64_Sym as stored in .symtab and .dynsym (little-endian).
ELF64_SYM = np.dtype(
    [
        ("st_name", "<u4"),
        ("st_info", "u1"),
        ("st_other", "u1"),
        ("st_shndx", "<u2"),
        ("st_value", "<u8"),
        ("st_size", "<u8"),
    ]
)
STT_FUNC_CODE = 2


@dataclass(frozen=True)
class Instruction:
    address: int
    raw: bytes
    text: str

    def render(self) -> str:
        return f"{self.address:#x}: {self.raw.hex(' '):<24} {self.text}"


@dataclass
class ScanHit:
    """One PKRU-writing byte sequence in an executable segment of a file."""

    file: str
    offset: int
    vaddr: int
    kind: str
    section: str | None
    symbol: str | None
    #: False when the byte lies in the page rounding around a segment.
    in_segment: bool
    #: Instruction that runs when a jump lands on the hit's first byte.
    instruction: str
    #: Whether a linear disassembly has an instruction starting at the hit.
    aligned: bool
    #: Linear-disassembly instructions that contain the hit's bytes.
    overlapping: list[Instruction] = field(default_factory=list)
    context: list[Instruction] = field(default_factory=list)
    allowed: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "section": self.section,
            "offset": self.offset,
            "vaddr": self.vaddr,
            "kind": self.kind,
            "symbol": self.symbol,
            "in_segment": self.in_segment,
            "instruction": self.instruction,
            "aligned": self.aligned,
            "overlapping": [i.render() for i in self.overlapping],
            "context": [i.render() for i in self.context],
            "allowed": self.allowed,
        }


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class ScanReport:
    files_scanned: int = 0
    files_skipped: list[SkippedFile] = field(default_factory=list)
    hits: list[ScanHit] = field(default_factory=list)
    #: Executable bytes searched, summed over files.
    bytes_scanned: int = 0
    #: Paths of the files that were scanned, in scan order.
    scanned_paths: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        counts = Counter(_reason_class(s.reason) for s in self.files_skipped)
        return dict(counts.most_common())


def _reason_class(reason: str) -> str:
    return reason.split(":", 1)[0]


@dataclass(frozen=True)
class _Segment:
    file_start: int  # page-rounded
    file_end: int
    seg_start: int  # p_offset .. p_offset + p_filesz
    seg_end: int
    vaddr_delta: int  # p_vaddr - p_offset


class ElfScanner:
    """Scans files and trees; collects a ``ScanReport``."""

    def __init__(self, context_instructions: int = 3) -> None:
        self.context_instructions = context_instructions
        self.report = ScanReport()
        self._seen_inodes: dict[tuple[int, int], str] = {}

    def scan_paths(self, paths: Iterable[Path]) -> ScanReport:
        """Scan files and directory trees; return the report."""
        started = time.perf_counter()
        for path in paths:
            for candidate, root in self._walk(path):
                self._scan_candidate(candidate, root)
        self.report.elapsed_s = time.perf_counter() - started
        return self.report

    def _skip(self, path: Path | str, reason: str) -> None:
        self.report.files_skipped.append(SkippedFile(str(path), reason))
        log.debug("skip %s: %s", path, reason)

    def _walk(self, path: Path) -> Iterator[tuple[Path, Path | None]]:
        """Yield (file, tree root); the root is None for a file named directly."""
        if path.is_dir() and not path.is_symlink():
            for directory, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames.sort()
                for name in sorted(
                    filenames + [d for d in dirnames if _is_link(directory, d)]
                ):
                    yield Path(directory, name), path
            return
        yield path, None

    def _scan_candidate(self, path: Path, root: Path | None) -> None:
        try:
            info = path.lstat()
        except OSError as exc:
            self._skip(path, f"unreadable: {exc.strerror}")
            return
        if stat.S_ISLNK(info.st_mode):
            if root is not None:
                target = _resolve_inside(path, root)
                if target is None:
                    self._skip(path, "symlink: points outside the tree or nowhere")
                else:
                    self._skip(path, f"symlink: to {target} (scanned as that file)")
                return
            try:
                info = path.stat()
            except OSError as exc:
                self._skip(path, f"unreadable: {exc.strerror}")
                return
        if not stat.S_ISREG(info.st_mode):
            self._skip(path, "not a regular file")
            return
        inode = (info.st_dev, info.st_ino)
        if inode in self._seen_inodes:
            self._skip(
                path, f"same file: already scanned as {self._seen_inodes[inode]}"
            )
            return
        self._seen_inodes[inode] = str(path)
        self._scan_file(path, info.st_size)

    def _scan_file(self, path: Path, size: int) -> None:
        # Imported here so `paracell --help` does not load pyelftools.
        from elftools.common.exceptions import ELFError
        from elftools.construct import ConstructError

        try:
            with open(path, "rb") as stream:
                head = stream.read(20)
                reason = _header_problem(head, size)
                if reason:
                    self._skip(path, reason)
                    return
                try:
                    segments = _executable_segments(stream, size)
                except (ELFError, ConstructError) as exc:
                    self._skip(path, f"invalid ELF: {exc}")
                    return
                if isinstance(segments, str):
                    self._skip(path, segments)
                    return
                with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    hits = self._scan_segments(path, stream, data, segments)
        except OSError as exc:
            self._skip(path, f"unreadable: {exc.strerror or exc}")
            return
        self.report.files_scanned += 1
        self.report.scanned_paths.append(str(path))
        self.report.hits.extend(hits)

    def _scan_segments(
        self, path: Path, stream: BinaryIO, data: mmap.mmap, segments: list[_Segment]
    ) -> list[ScanHit]:
        view = memoryview(data)
        raw_hits: list[tuple[PatternHit, _Segment]] = []
        try:
            for segment in segments:
                self.report.bytes_scanned += segment.file_end - segment.file_start
                chunk = view[segment.file_start : segment.file_end]
                for hit in find_pkru_writers(chunk):
                    shifted = PatternHit(
                        segment.file_start + hit.offset, hit.kind, hit.rex_w
                    )
                    raw_hits.append((shifted, segment))
            if not raw_hits:
                return []
            names = _FileNames(stream)
            return [
                self._describe(path, data, hit, segment, names)
                for hit, segment in raw_hits
            ]
        finally:
            view.release()

    def _describe(
        self,
        path: Path,
        data: mmap.mmap,
        hit: PatternHit,
        segment: _Segment,
        names: _FileNames,
    ) -> ScanHit:
        vaddr = hit.offset + segment.vaddr_delta
        symbol, symbol_start = names.symbol_at(vaddr)

        # Decode from the function start when it is close, else a little before.
        decode_from = hit.offset - DECODE_LEAD_BYTES
        if (
            symbol_start is not None
            and 0 <= vaddr - symbol_start <= MAX_FUNCTION_DECODE_BYTES
        ):
            decode_from = symbol_start - segment.vaddr_delta
        decode_from = max(decode_from, segment.file_start)

        # capstone decodes its whole input before yielding, so bound it.
        at_hit_end = min(segment.file_end, hit.offset + MAX_INSTRUCTION_BYTES)
        at_hit = _decode(data, hit.offset, at_hit_end, segment.vaddr_delta, limit=1)
        instruction = at_hit[0].text if at_hit else "(undecodable)"
        linear = _decode(
            data,
            decode_from,
            min(
                segment.file_end, hit.offset + 3 + 16 * (self.context_instructions + 1)
            ),
            segment.vaddr_delta,
        )

        hit_lo, hit_hi = vaddr, vaddr + 3
        overlapping = [
            i for i in linear if i.address < hit_hi and i.address + len(i.raw) > hit_lo
        ]
        aligned = any(
            i.address in (vaddr, vaddr - 1) and _same_kind(i, hit) for i in overlapping
        )
        context = _context(linear, overlapping, self.context_instructions)
        return ScanHit(
            file=str(path),
            offset=hit.offset,
            vaddr=vaddr,
            kind=hit.mnemonic,
            section=names.section_at(hit.offset),
            symbol=symbol,
            in_segment=segment.seg_start <= hit.offset < segment.seg_end,
            instruction=instruction,
            aligned=aligned,
            overlapping=overlapping,
            context=context,
        )


def _is_link(directory: str, name: str) -> bool:
    return os.path.islink(os.path.join(directory, name))


def _resolve_inside(link: Path, root: Path) -> Path | None:
    try:
        target = link.resolve(strict=True)
        real_root = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target == real_root or real_root in target.parents:
        return target
    return None


def _header_problem(head: bytes, size: int) -> str | None:
    if len(head) < 4 or head[:4] != ELF_MAGIC:
        return "not ELF"
    if len(head) < 20 or size < 64:
        return "truncated: shorter than an ELF header"
    elf_class = head[4]
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    if elf_class != 2 or machine != EM_X86_64:
        bits = {1: "ELF32", 2: "ELF64"}.get(elf_class, f"class {elf_class}")
        return f"not x86-64: {bits}, e_machine {machine}"
    return None


def _executable_segments(stream: BinaryIO, size: int) -> list[_Segment] | str:
    """Return executable PT_LOAD segments, page-rounded and merged, or a skip reason."""
    stream.seek(0)
    structs = _elf64_structs()
    header = structs.Elf_Ehdr.parse(stream.read(64))
    table_end = header["e_phoff"] + header["e_phnum"] * header["e_phentsize"]
    if table_end > size:
        return f"truncated: program headers end at {table_end}, file has {size} bytes"
    stream.seek(header["e_phoff"])
    table = stream.read(header["e_phnum"] * header["e_phentsize"])

    segments: list[_Segment] = []
    for index in range(header["e_phnum"]):
        start_byte = index * header["e_phentsize"]
        phdr = structs.Elf_Phdr.parse(table[start_byte : start_byte + PHDR_BYTES])
        if phdr["p_type"] != "PT_LOAD" or not phdr["p_flags"] & PF_X:
            continue
        start, filesz = phdr["p_offset"], phdr["p_filesz"]
        if start + filesz > size:
            end = start + filesz
            return f"truncated: segment {index} ends at {end}, file has {size} bytes"
        if filesz == 0:
            continue
        file_start = start - start % PAGE_SIZE
        file_end = min(size, -(-(start + filesz) // PAGE_SIZE) * PAGE_SIZE)
        delta = phdr["p_vaddr"] - start
        segments.append(_Segment(file_start, file_end, start, start + filesz, delta))
    if not segments:
        return "no executable segment"
    return _merge_segments(segments)


def _merge_segments(segments: list[_Segment]) -> list[_Segment]:
    """Merge segments whose page-rounded file ranges overlap."""
    segments.sort(key=lambda s: s.file_start)
    merged = [segments[0]]
    for segment in segments[1:]:
        last = merged[-1]
        if (
            segment.file_start < last.file_end
            and segment.vaddr_delta == last.vaddr_delta
        ):
            merged[-1] = _Segment(
                last.file_start,
                max(last.file_end, segment.file_end),
                min(last.seg_start, segment.seg_start),
                max(last.seg_end, segment.seg_end),
                last.vaddr_delta,
            )
        else:
            merged.append(segment)
    return merged


@functools.cache
def _elf64_structs() -> ELFStructs:
    # NOTE: building pyelftools' structs costs about 1.5 ms, which ELFFile pays
    # for every file; building them once keeps a tree scan at disk speed.
    from elftools.elf.structs import ELFStructs

    structs = ELFStructs(little_endian=True, elfclass=64)
    structs.create_basic_structs()
    structs.create_advanced_structs("ET_DYN", "EM_X86_64", "ELFOSABI_SYSV")
    return structs


class _FileNames:
    """Section and function-symbol lookup, built only for files with hits."""

    def __init__(self, stream: BinaryIO) -> None:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        self._sections: list[tuple[int, int, str]] = []
        self._symbol_tables: list[tuple[np.ndarray, object]] = []
        try:
            elf = ELFFile(stream)
            for section in elf.iter_sections():
                header = section.header
                start, length = header["sh_offset"], header["sh_size"]
                if header["sh_type"] != "SHT_NOBITS" and length and start:
                    self._sections.append((start, start + length, section.name))
                if isinstance(section, SymbolTableSection) and length:
                    self._symbol_tables.append(self._functions(section, elf))
        except ELFError as exc:
            log.debug("section headers unusable: %s", exc)
        self._sections.sort()
        self._section_starts = [s[0] for s in self._sections]

    @staticmethod
    def _functions(section: object, elf: object) -> tuple[np.ndarray, object]:
        # NOTE: pyelftools parses symbols one by one (about 0.2 ms each); large
        # libraries have 10^5 of them, so the table is read with numpy instead.
        raw = section.data()  # type: ignore[attr-defined]
        table = np.frombuffer(
            raw[: len(raw) // ELF64_SYM.itemsize * ELF64_SYM.itemsize], ELF64_SYM
        )
        functions = table[
            ((table["st_info"] & 0xF) == STT_FUNC_CODE) & (table["st_value"] != 0)
        ]
        functions = functions[np.argsort(functions["st_value"], kind="stable")]
        strings = elf.get_section(section.header["sh_link"])  # type: ignore[attr-defined]
        return functions, strings

    def section_at(self, offset: int) -> str | None:
        index = bisect.bisect_right(self._section_starts, offset) - 1
        if index >= 0:
            start, end, name = self._sections[index]
            if start <= offset < end:
                return name
        return None

    def symbol_at(self, vaddr: int) -> tuple[str | None, int | None]:
        for functions, strings in self._symbol_tables:
            index = int(np.searchsorted(functions["st_value"], vaddr, side="right")) - 1
            # Walk back over aliases and nested entries to one that covers vaddr.
            while index >= 0:
                entry = functions[index]
                start, size = int(entry["st_value"]), int(entry["st_size"])
                if start <= vaddr < start + max(size, 1):
                    name = strings.get_string(int(entry["st_name"]))  # type: ignore[attr-defined]
                    return name, start
                if vaddr - start > MAX_FUNCTION_DECODE_BYTES * 16:
                    break
                index -= 1
        return None, None


def _decode(
    data: mmap.mmap, start: int, end: int, vaddr_delta: int, limit: int = 0
) -> list[Instruction]:
    """Linearly disassemble file bytes [start, end), skipping undecodable bytes.

    With ``limit`` the decoding stops after that many instructions, and at
    the first undecodable byte.
    """
    import capstone

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    code = bytes(data[start:end])
    base = start + vaddr_delta
    out: list[Instruction] = []
    offset = 0
    while offset < len(code):
        for address, size, mnemonic, operands in decoder.disasm_lite(
            code[offset:], base + offset
        ):
            local = address - base
            text = f"{mnemonic} {operands}".strip()
            out.append(Instruction(address, code[local : local + size], text))
            offset = local + size
            if limit and len(out) >= limit:
                return out
        if offset < len(code):
            if limit:
                return out
            out.append(Instruction(base + offset, code[offset : offset + 1], "(bad)"))
            offset += 1
    return out


def _same_kind(insn: Instruction, hit: PatternHit) -> bool:
    return insn.text.split(" ", 1)[0].startswith(hit.kind.value)


def _context(
    linear: list[Instruction], overlapping: list[Instruction], count: int
) -> list[Instruction]:
    if not overlapping:
        return []
    first = linear.index(overlapping[0])
    last = linear.index(overlapping[-1])
    return linear[max(0, first - count) : last + count + 1]
