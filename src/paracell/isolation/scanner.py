"""Scan real ELF files for byte sequences that can write PKRU.

For every x86 ELF file (x86-64, x32 and 32-bit i386, because PKU also
applies to 32-bit code) the scanner finds the executable PT_LOAD segments
and searches them at every byte offset for WRPKRU, XRSTOR and XRSTORS
(``paracell.isolation.patterns``). It scans what the loader actually maps
executable: each segment's file range rounded out to whole 4 KiB pages, so
bytes that share a page with the segment are included and reported as lying
outside the segment. Hits get the containing section (from section headers)
and function symbol (from .symtab or .dynsym) when the file has them, and a
disassembly of the surrounding code.

Directory trees are walked without following symbolic links, and a file
reached twice (hard links, repeated arguments) is scanned once. A file that
may be executable but could not be checked (unreadable, truncated, invalid
ELF headers) is recorded apart from files that need no scan, so a build gate
can fail on it.
"""

from __future__ import annotations

import bisect
import functools
import logging
import mmap
import os
import shutil
import stat
import subprocess
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
EM_386 = 3
EM_X86_64 = 62
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
#: Size of the ELF header per ELF class (Elf32_Ehdr, Elf64_Ehdr).
EHDR_BYTES = {ELFCLASS32: 52, ELFCLASS64: 64}
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
#: Elf32_Sym: the same fields in another order, with 32-bit value and size.
ELF32_SYM = np.dtype(
    [
        ("st_name", "<u4"),
        ("st_value", "<u4"),
        ("st_size", "<u4"),
        ("st_info", "u1"),
        ("st_other", "u1"),
        ("st_shndx", "<u2"),
    ]
)
STT_FUNC_CODE = 2
#: Skip reasons of files that may be executable code but could not be
#: checked. Every other reason means the file needs no scan.
UNSCANNED_REASONS = frozenset({"unreadable", "truncated", "invalid ELF"})
#: Symbol-name prefixes of the Itanium C++ ABI and of Rust's v0 mangling.
MANGLED_PREFIXES = ("_Z", "_R")


@dataclass(frozen=True)
class X86Arch:
    """An x86 ELF flavour: its name, ELF class and the CPU mode its code runs in."""

    name: str
    elf_class: int
    #: Operating mode of the code, 64 or 32 bits. x32 code runs in 64-bit mode.
    bits: int


X86_64 = X86Arch("x86-64", ELFCLASS64, 64)
X32 = X86Arch("x32", ELFCLASS32, 64)
I386 = X86Arch("i386", ELFCLASS32, 32)


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
    #: Function symbol as stored in the symbol table (mangled for C++).
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
    #: ``x86-64``, ``x32`` or ``i386``.
    arch: str = X86_64.name
    #: Demangled form of ``symbol``, or None when it is not mangled or no
    #: demangler was available.
    symbol_demangled: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "arch": self.arch,
            "section": self.section,
            "offset": self.offset,
            "vaddr": self.vaddr,
            "kind": self.kind,
            "symbol": self.symbol,
            "symbol_demangled": self.symbol_demangled,
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

    @property
    def unscanned(self) -> bool:
        """Whether the file may hold code that could not be checked."""
        return _reason_class(self.reason) in UNSCANNED_REASONS


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

    def files_unscanned(self) -> list[SkippedFile]:
        """Return the skipped files whose reason is in UNSCANNED_REASONS."""
        return [s for s in self.files_skipped if s.unscanned]


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
        demangled = demangle_symbols(h.symbol for h in self.report.hits if h.symbol)
        for hit in self.report.hits:
            if hit.symbol is not None:
                hit.symbol_demangled = demangled.get(hit.symbol)
        self.report.elapsed_s = time.perf_counter() - started
        return self.report

    def _skip(self, path: Path | str, reason: str) -> None:
        self.report.files_skipped.append(SkippedFile(str(path), reason))
        log.debug("skip %s: %s", path, reason)

    def _walk(self, path: Path) -> Iterator[tuple[Path, Path | None]]:
        """Yield (file, tree root); the root is None for a file named directly."""
        if path.is_dir() and not path.is_symlink():
            # Without onerror, os.walk skips a directory it cannot list, and a
            # tree would pass with files that were never scanned.
            def record_error(exc: OSError) -> None:
                where = exc.filename if exc.filename is not None else path
                self._skip(where, f"unreadable: directory: {exc.strerror or exc}")

            walk = os.walk(path, onerror=record_error, followlinks=False)
            for directory, dirnames, filenames in walk:
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
                arch = _identify_x86(head, size)
                if isinstance(arch, str):
                    self._skip(path, arch)
                    return
                try:
                    segments = _executable_segments(stream, size, arch)
                except (ELFError, ConstructError) as exc:
                    self._skip(path, f"invalid ELF: {exc}")
                    return
                if isinstance(segments, str):
                    self._skip(path, segments)
                    return
                with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    hits = self._scan_segments(path, stream, data, segments, arch)
        except OSError as exc:
            self._skip(path, f"unreadable: {exc.strerror or exc}")
            return
        self.report.files_scanned += 1
        self.report.scanned_paths.append(str(path))
        self.report.hits.extend(hits)

    def _scan_segments(
        self,
        path: Path,
        stream: BinaryIO,
        data: mmap.mmap,
        segments: list[_Segment],
        arch: X86Arch,
    ) -> list[ScanHit]:
        view = memoryview(data)
        raw_hits: list[tuple[PatternHit, _Segment]] = []
        try:
            for segment in segments:
                self.report.bytes_scanned += segment.file_end - segment.file_start
                chunk = view[segment.file_start : segment.file_end]
                for hit in find_pkru_writers(chunk, bits=arch.bits):
                    shifted = PatternHit(
                        segment.file_start + hit.offset, hit.kind, hit.rex_w
                    )
                    raw_hits.append((shifted, segment))
            if not raw_hits:
                return []
            names = _FileNames(stream)
            return [
                self._describe(path, data, hit, segment, names, arch)
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
        arch: X86Arch,
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
        at_hit = _decode(
            data, hit.offset, at_hit_end, segment.vaddr_delta, arch.bits, limit=1
        )
        instruction = at_hit[0].text if at_hit else "(undecodable)"
        linear = _decode(
            data,
            decode_from,
            min(
                segment.file_end, hit.offset + 3 + 16 * (self.context_instructions + 1)
            ),
            segment.vaddr_delta,
            arch.bits,
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
            arch=arch.name,
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


def _identify_x86(head: bytes, size: int) -> X86Arch | str:
    """Return the x86 flavour of an ELF file from its first bytes, or a skip reason."""
    if len(head) < 4 or head[:4] != ELF_MAGIC:
        return "not ELF"
    if len(head) < 20:
        return "truncated: shorter than an ELF header"
    elf_class, encoding = head[4], head[5]
    if elf_class not in EHDR_BYTES:
        return f"invalid ELF: EI_CLASS {elf_class}"
    if size < EHDR_BYTES[elf_class]:
        return "truncated: shorter than an ELF header"
    machine = int.from_bytes(head[18:20], "little" if encoding == 1 else "big")
    bits = "ELF32" if elf_class == ELFCLASS32 else "ELF64"
    if machine not in (EM_386, EM_X86_64):
        return f"not x86: {bits}, e_machine {machine}"
    # x86 is little-endian only, and no ABI puts i386 code in an ELF64 file,
    # so Linux refuses to load either. They are reported, not passed over.
    if encoding != ELFDATA2LSB:
        return f"invalid ELF: {bits}, e_machine {machine}, EI_DATA {encoding}"
    if machine == EM_X86_64:
        return X86_64 if elf_class == ELFCLASS64 else X32
    if elf_class == ELFCLASS32:
        return I386
    return f"invalid ELF: ELF64 with e_machine {EM_386} (i386)"


def _executable_segments(
    stream: BinaryIO, size: int, arch: X86Arch
) -> list[_Segment] | str:
    """Return executable PT_LOAD segments, page-rounded and merged, or a skip reason."""
    stream.seek(0)
    structs = _elf_structs(arch)
    header = structs.Elf_Ehdr.parse(stream.read(EHDR_BYTES[arch.elf_class]))
    phdr_bytes = structs.Elf_Phdr.sizeof()
    if header["e_phnum"] and header["e_phentsize"] < phdr_bytes:
        return (
            f"invalid ELF: e_phentsize {header['e_phentsize']}, "
            f"expected at least {phdr_bytes}"
        )
    table_end = header["e_phoff"] + header["e_phnum"] * header["e_phentsize"]
    if table_end > size:
        return f"truncated: program headers end at {table_end}, file has {size} bytes"
    stream.seek(header["e_phoff"])
    table = stream.read(header["e_phnum"] * header["e_phentsize"])

    segments: list[_Segment] = []
    for index in range(header["e_phnum"]):
        start_byte = index * header["e_phentsize"]
        phdr = structs.Elf_Phdr.parse(table[start_byte : start_byte + phdr_bytes])
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
def _elf_structs(arch: X86Arch) -> ELFStructs:
    # NOTE: building pyelftools' structs costs about 1.5 ms, which ELFFile pays
    # for every file; building them once per flavour keeps a tree scan at
    # disk speed.
    from elftools.elf.structs import ELFStructs

    elfclass = 64 if arch.elf_class == ELFCLASS64 else 32
    machine = "EM_386" if arch is I386 else "EM_X86_64"
    structs = ELFStructs(little_endian=True, elfclass=elfclass)
    structs.create_basic_structs()
    structs.create_advanced_structs("ET_DYN", machine, "ELFOSABI_SYSV")
    return structs


class _FileNames:
    """Section and function-symbol lookup, built only for files with hits."""

    def __init__(self, stream: BinaryIO) -> None:
        from elftools.common.exceptions import ELFError
        from elftools.construct import ConstructError
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
        except (ELFError, ConstructError) as exc:
            log.debug("section headers unusable: %s", exc)
        self._sections.sort()
        self._section_starts = [s[0] for s in self._sections]

    @staticmethod
    def _functions(section: object, elf: object) -> tuple[np.ndarray, object]:
        # NOTE: pyelftools parses symbols one by one (about 0.2 ms each); large
        # libraries have 10^5 of them, so the table is read with numpy instead.
        raw = section.data()  # type: ignore[attr-defined]
        dtype = ELF64_SYM if elf.elfclass == 64 else ELF32_SYM  # type: ignore[attr-defined]
        table = np.frombuffer(raw[: len(raw) // dtype.itemsize * dtype.itemsize], dtype)
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
    data: mmap.mmap,
    start: int,
    end: int,
    vaddr_delta: int,
    bits: int,
    limit: int = 0,
) -> list[Instruction]:
    """Linearly disassemble file bytes [start, end), skipping undecodable bytes.

    ``bits`` is the CPU mode, 64 or 32. With ``limit`` the decoding stops
    after that many instructions, and at the first undecodable byte.
    """
    import capstone

    mode = capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32
    decoder = capstone.Cs(capstone.CS_ARCH_X86, mode)
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


def demangle_symbols(names: Iterable[str]) -> dict[str, str]:
    """Demangle C++ and Rust symbol names with binutils' ``c++filt``.

    Return a map from each mangled name to its demangled form. All names go
    to one ``c++filt`` process. Names that are not mangled, or that c++filt
    leaves unchanged, are left out. Without c++filt, or when it fails, the
    map is empty and callers show the mangled names.
    """
    mangled = sorted(
        {
            name
            for name in names
            if name.startswith(MANGLED_PREFIXES) and not any(c.isspace() for c in name)
        }
    )
    if not mangled:
        return {}
    tool = shutil.which("c++filt")
    if tool is None:
        log.info("c++filt not found (binutils); %d symbols stay mangled", len(mangled))
        return {}
    try:
        done = subprocess.run(
            [tool],
            input="\n".join(mangled) + "\n",
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("c++filt failed (%s); symbols stay mangled", exc)
        return {}
    lines = done.stdout.splitlines()
    if len(lines) != len(mangled):
        log.warning(
            "c++filt returned %d lines for %d names; symbols stay mangled",
            len(lines),
            len(mangled),
        )
        return {}
    return {
        name: text
        for name, text in zip(mangled, lines, strict=True)
        if text and text != name
    }
