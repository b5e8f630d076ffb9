"""`paracell scan` on ELF files built with gcc here and on the system's own trees."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from paracell.cli import main
from paracell.isolation.scanner import (
    ElfScanner,
    ScanHit,
    ScanReport,
    demangle_symbols,
)

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="gcc is needed to build the test ELF files"
)

# Each function contains one case. The page-spanning case puts 0F as the last
# byte of a page and 01 EF at the start of the next.
GADGETS_S = r"""
    .text
    .globl _start
_start:
    mov $60, %eax
    xor %edi, %edi
    syscall

    .globl aligned_wrpkru
    .type aligned_wrpkru, @function
aligned_wrpkru:
    .byte 0x0f, 0x01, 0xef
    ret
    .size aligned_wrpkru, . - aligned_wrpkru

    .globl hidden_wrpkru
    .type hidden_wrpkru, @function
hidden_wrpkru:
    movl $0xef010f90, %eax      # b8 90 0f 01 ef
    ret
    .size hidden_wrpkru, . - hidden_wrpkru

    .globl split_wrpkru
    .type split_wrpkru, @function
split_wrpkru:
    movl $0x0f000000, %eax      # b8 00 00 00 0f
    .byte 0x01, 0xef            # add %ebp, %edi
    ret
    .size split_wrpkru, . - split_wrpkru

    .globl xrstor_mem
    .type xrstor_mem, @function
xrstor_mem:
    xrstor (%rdi)
    ret
    .size xrstor_mem, . - xrstor_mem

    .globl xrstor64_mem
    .type xrstor64_mem, @function
xrstor64_mem:
    xrstor64 0x40(%rsp)
    ret
    .size xrstor64_mem, . - xrstor64_mem

    .globl xrstors_mem
    .type xrstors_mem, @function
xrstors_mem:
    xrstors (%rsi)
    ret
    .size xrstors_mem, . - xrstors_mem

    .globl fences
    .type fences, @function
fences:
    lfence                      # 0f ae e8: the register form of 0f ae /5
    mfence
    sfence
    ret
    .size fences, . - fences

    .balign 4096
    .globl span_page
    .type span_page, @function
span_page:
    .fill 4095, 1, 0x90
    .byte 0x0f
    .byte 0x01, 0xef
    ret
    .size span_page, . - span_page
"""

CLEAN_C = r"""
#include <stdio.h>
int main(void) { puts("no pkru writers here"); return 0; }
"""


def _gcc(tmp_path: Path, name: str, source: str, suffix: str, *flags: str) -> Path:
    src = tmp_path / f"{name}{suffix}"
    src.write_text(source)
    out = tmp_path / name
    subprocess.run(
        ["gcc", *flags, "-o", str(out), str(src)], check=True, capture_output=True
    )
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("elf")
    files = {
        "gadgets": _gcc(
            tmp, "gadgets", GADGETS_S, ".S", "-nostdlib", "-static", "-no-pie"
        ),
        "clean": _gcc(tmp, "clean", CLEAN_C, ".c", "-O2"),
    }
    stripped = tmp / "gadgets-stripped"
    shutil.copy(files["gadgets"], stripped)
    subprocess.run(["strip", str(stripped)], check=True, capture_output=True)
    files["stripped"] = stripped
    obj = tmp / "object.o"
    subprocess.run(
        ["gcc", "-c", "-o", str(obj), str(tmp / "clean.c")],
        check=True,
        capture_output=True,
    )
    files["object"] = obj
    return files


def _symbols(path: Path) -> dict[str, int]:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as stream:
        table = ELFFile(stream).get_section_by_name(".symtab")
        return {s.name: s["st_value"] for s in table.iter_symbols() if s.name}


def _scan(*paths: Path) -> ScanReport:
    return ElfScanner().scan_paths(list(paths))


def _by_symbol(report: ScanReport) -> dict[str, list[ScanHit]]:
    out: dict[str, list[ScanHit]] = {}
    for hit in report.hits:
        out.setdefault(hit.symbol or "", []).append(hit)
    return out


def test_gadget_hits_at_expected_places(built: dict[str, Path]) -> None:
    symbols = _symbols(built["gadgets"])
    report = _scan(built["gadgets"])
    assert report.files_scanned == 1
    hits = _by_symbol(report)
    assert set(hits) == {
        "aligned_wrpkru",
        "hidden_wrpkru",
        "split_wrpkru",
        "xrstor_mem",
        "xrstor64_mem",
        "xrstors_mem",
        "span_page",
    }
    expected = {
        "aligned_wrpkru": (0, "wrpkru", True),
        "hidden_wrpkru": (2, "wrpkru", False),
        "split_wrpkru": (4, "wrpkru", False),
        "xrstor_mem": (0, "xrstor", True),
        "xrstor64_mem": (1, "xrstor64", True),
        "xrstors_mem": (0, "xrstors", True),
        "span_page": (4095, "wrpkru", True),
    }
    for name, (delta, kind, aligned) in expected.items():
        [hit] = hits[name]
        assert hit.vaddr == symbols[name] + delta, name
        assert hit.kind == kind, name
        assert hit.aligned is aligned, name
        assert hit.section == ".text", name
        assert hit.in_segment, name


def test_page_spanning_hit_straddles_a_page(built: dict[str, Path]) -> None:
    [hit] = _by_symbol(_scan(built["gadgets"]))["span_page"]
    assert hit.vaddr % 4096 == 4095
    assert hit.offset % 4096 == 4095
    assert hit.instruction == "wrpkru"


def test_hit_offsets_point_at_the_bytes(built: dict[str, Path]) -> None:
    data = built["gadgets"].read_bytes()
    for hit in _scan(built["gadgets"]).hits:
        assert data[hit.offset] == 0x0F
        assert data[hit.offset + 1] in (0x01, 0xAE, 0xC7)


def test_unaligned_hits_show_the_hiding_instructions(built: dict[str, Path]) -> None:
    hits = _by_symbol(_scan(built["gadgets"]))
    [hidden] = hits["hidden_wrpkru"]
    assert [i.text for i in hidden.overlapping] == ["mov eax, 0xef010f90"]
    assert hidden.instruction == "wrpkru"
    [split] = hits["split_wrpkru"]
    assert [i.text for i in split.overlapping] == ["mov eax, 0xf000000", "add edi, ebp"]
    assert any(i in split.context for i in split.overlapping)


def test_lfence_is_not_reported(built: dict[str, Path]) -> None:
    symbols = _symbols(built["gadgets"])
    fences = symbols["fences"]
    for hit in _scan(built["gadgets"]).hits:
        assert not fences <= hit.vaddr < fences + 10


def test_stripped_file_keeps_sections_loses_symbols(built: dict[str, Path]) -> None:
    full = _scan(built["gadgets"])
    stripped = _scan(built["stripped"])
    assert [h.offset for h in stripped.hits] == [h.offset for h in full.hits]
    assert all(h.section == ".text" for h in stripped.hits)
    assert all(h.symbol is None for h in stripped.hits)


def test_clean_program_has_no_hits(built: dict[str, Path]) -> None:
    report = _scan(built["clean"])
    assert report.files_scanned == 1
    assert report.hits == []
    assert report.bytes_scanned > 0


def _reasons(report: ScanReport) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in report.files_skipped}


def _elf_header(elf_class: int, machine: int) -> bytes:
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    body = struct.pack("<HHI", 2, machine, 1)
    return (ident + body).ljust(64, b"\0")


def test_skips_with_reasons(built: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "root"
    tree.mkdir()
    (tree / "notes.txt").write_text("not an ELF file\n")
    # A 32-bit x86 header is parsed like any x86 file. This one has no
    # program headers.
    (tree / "i386.elf").write_bytes(_elf_header(1, 3))
    (tree / "aarch64.elf").write_bytes(_elf_header(2, 183))
    (tree / "arm.elf").write_bytes(_elf_header(1, 40))
    (tree / "i386-in-elf64.elf").write_bytes(_elf_header(2, 3))
    big_endian = bytearray(_elf_header(2, 0))
    big_endian[5] = 2
    big_endian[18:20] = (62).to_bytes(2, "big")
    (tree / "big-endian-x86.elf").write_bytes(bytes(big_endian))
    (tree / "bad-class.elf").write_bytes(_elf_header(7, 62))
    data = built["gadgets"].read_bytes()
    (tree / "short-header").write_bytes(data[:40])
    (tree / "cut-tables").write_bytes(data[:100])
    (tree / "cut-text").write_bytes(data[:5000])
    shutil.copy(built["object"], tree / "object.o")
    report = _scan(tree)
    reasons = _reasons(report)
    assert reasons["notes.txt"] == "not ELF"
    assert reasons["i386.elf"] == "no executable segment"
    assert reasons["aarch64.elf"] == "not x86: ELF64, e_machine 183"
    assert reasons["arm.elf"] == "not x86: ELF32, e_machine 40"
    assert reasons["i386-in-elf64.elf"] == "invalid ELF: ELF64 with e_machine 3 (i386)"
    assert (
        reasons["big-endian-x86.elf"] == "invalid ELF: ELF64, e_machine 62, EI_DATA 2"
    )
    assert reasons["bad-class.elf"] == "invalid ELF: EI_CLASS 7"
    assert reasons["short-header"].startswith("truncated")
    assert reasons["cut-tables"].startswith("truncated: program headers")
    assert reasons["cut-text"].startswith("truncated: segment")
    assert reasons["object.o"] == "no executable segment"
    assert report.files_scanned == 0
    assert report.skipped_by_reason() == {
        "truncated": 3,
        "invalid ELF": 3,
        "no executable segment": 2,
        "not x86": 2,
        "not ELF": 1,
    }
    # Files that may be code but could not be checked are kept apart.
    unscanned = sorted(Path(s.path).name for s in report.files_unscanned())
    assert unscanned == [
        "bad-class.elf",
        "big-endian-x86.elf",
        "cut-tables",
        "cut-text",
        "i386-in-elf64.elf",
        "short-header",
    ]


def test_links_are_not_followed_out_of_the_tree(
    built: dict[str, Path], tmp_path: Path
) -> None:
    tree = tmp_path / "root"
    (tree / "bin").mkdir(parents=True)
    shutil.copy(built["gadgets"], tree / "bin" / "prog")
    os.link(tree / "bin" / "prog", tree / "bin" / "hardlink")
    (tree / "bin" / "inside").symlink_to("prog")
    (tree / "bin" / "outside").symlink_to(built["clean"])
    (tree / "lib").symlink_to(built["clean"].parent)
    report = _scan(tree)
    reasons = _reasons(report)
    assert report.files_scanned == 1
    # The walk is sorted, so "hardlink" is scanned and "prog" is the repeat.
    assert reasons["prog"].startswith("same file: already scanned as")
    assert "hardlink" not in reasons
    assert reasons["inside"].startswith("symlink: to")
    assert reasons["outside"] == "symlink: points outside the tree or nowhere"
    assert reasons["lib"] == "symlink: points outside the tree or nowhere"
    assert len(report.hits) == 7
    assert all(Path(h.file).name == "hardlink" for h in report.hits)


def test_file_named_twice_is_scanned_once(built: dict[str, Path]) -> None:
    report = _scan(built["gadgets"], built["gadgets"])
    assert report.files_scanned == 1
    assert len(report.hits) == 7


# 32-bit x86 code: PKU applies in compatibility mode too. `dec %eax` is 48,
# the REX.W prefix in 64-bit mode, so it must not turn XRSTOR into XRSTOR64.
GADGETS_32_S = r"""
    .text
    .globl _start
_start:
    ret

    .globl aligned_wrpkru
    .type aligned_wrpkru, @function
aligned_wrpkru:
    .byte 0x0f, 0x01, 0xef
    ret
    .size aligned_wrpkru, . - aligned_wrpkru

    .globl dec_then_xrstor
    .type dec_then_xrstor, @function
dec_then_xrstor:
    dec %eax
    xrstor (%edi)
    ret
    .size dec_then_xrstor, . - dec_then_xrstor

    .globl _ZN5outer6gadgetEi
    .type _ZN5outer6gadgetEi, @function
_ZN5outer6gadgetEi:
    movl $0xef010f90, %eax      # b8 90 0f 01 ef
    ret
    .size _ZN5outer6gadgetEi, . - _ZN5outer6gadgetEi
"""

# x32 code runs in 64-bit mode, so here 48 is a REX.W prefix.
GADGETS_X32_S = r"""
    .text
    .globl _start
_start:
    ret

    .globl xrstor64_mem
    .type xrstor64_mem, @function
xrstor64_mem:
    xrstor64 (%rdi)
    ret
    .size xrstor64_mem, . - xrstor64_mem
"""


def _gcc_nostdlib(tmp_path: Path, name: str, source: str, flag: str) -> Path:
    src = tmp_path / f"{name}.S"
    src.write_text(source)
    out = tmp_path / name
    done = subprocess.run(
        ["gcc", flag, "-nostdlib", "-static", "-no-pie", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"gcc {flag} cannot build here: {done.stderr.strip()[-200:]}")
    return out


def test_i386_file_is_scanned_in_32bit_mode(tmp_path: Path) -> None:
    binary = _gcc_nostdlib(tmp_path, "gadgets32", GADGETS_32_S, "-m32")
    symbols = _symbols(binary)
    report = _scan(binary)
    assert report.files_scanned == 1
    assert report.files_skipped == []
    hits = _by_symbol(report)
    assert set(hits) == {"aligned_wrpkru", "dec_then_xrstor", "_ZN5outer6gadgetEi"}
    [aligned] = hits["aligned_wrpkru"]
    assert aligned.vaddr == symbols["aligned_wrpkru"]
    assert aligned.kind == "wrpkru"
    assert aligned.aligned
    assert aligned.arch == "i386"
    [xrstor] = hits["dec_then_xrstor"]
    assert xrstor.vaddr == symbols["dec_then_xrstor"] + 1
    assert xrstor.kind == "xrstor"
    assert xrstor.instruction == "xrstor ptr [edi]"
    assert [i.text for i in xrstor.context][:1] == ["dec eax"]
    [hidden] = hits["_ZN5outer6gadgetEi"]
    assert hidden.vaddr == symbols["_ZN5outer6gadgetEi"] + 2
    assert not hidden.aligned
    assert [i.text for i in hidden.overlapping] == ["mov eax, 0xef010f90"]


def test_x32_file_is_scanned_in_64bit_mode(tmp_path: Path) -> None:
    binary = _gcc_nostdlib(tmp_path, "gadgets-x32", GADGETS_X32_S, "-mx32")
    symbols = _symbols(binary)
    [hit] = _scan(binary).hits
    assert hit.arch == "x32"
    assert hit.kind == "xrstor64"
    assert hit.vaddr == symbols["xrstor64_mem"] + 1
    assert hit.aligned


def test_mangled_symbol_is_demangled(tmp_path: Path) -> None:
    if shutil.which("c++filt") is None:
        pytest.skip("c++filt (binutils) is not installed")
    binary = _gcc_nostdlib(tmp_path, "gadgets32", GADGETS_32_S, "-m32")
    hits = _by_symbol(_scan(binary))
    [hit] = hits["_ZN5outer6gadgetEi"]
    assert hit.symbol_demangled == "outer::gadget(int)"
    [plain] = hits["aligned_wrpkru"]
    assert plain.symbol_demangled is None


def test_demangle_without_cxxfilt_keeps_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert demangle_symbols(["_ZN5outer6gadgetEi", "pkey_set"]) == {}


def test_demangle_batch_maps_each_name() -> None:
    if shutil.which("c++filt") is None:
        pytest.skip("c++filt (binutils) is not installed")
    names = ["_ZN5outer6gadgetEi", "pkey_set", "_Z3foov", "_ZN5outer6gadgetEi"]
    assert demangle_symbols(names) == {
        "_ZN5outer6gadgetEi": "outer::gadget(int)",
        "_Z3foov": "foo()",
    }


# -- command line ---------------------------------------------------------------


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    status = main(["scan", "--json", *argv])
    return status, json.loads(capsys.readouterr().out)


def test_cli_json_and_exit_status(
    built: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, document = _run_json(capsys, str(built["gadgets"]), str(built["clean"]))
    assert status == 1
    assert document["files_scanned"] == 2
    assert document["files_skipped"] == []
    assert len(document["hits"]) == 7
    for hit in document["hits"]:
        assert {"file", "section", "offset", "instruction"} <= set(hit)
        assert hit["allowed"] is False
    status, document = _run_json(capsys, str(built["clean"]))
    assert status == 0
    assert document["hits"] == []


def test_cli_allow_list(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _scan(built["gadgets"])
    span = next(h for h in report.hits if h.symbol == "span_page")
    allow = tmp_path / "allow.txt"
    symbols = [
        "aligned_wrpkru",
        "hidden_wrpkru",
        "split_wrpkru",
        "xrstor_mem",
        "xrstor64_mem",
    ]
    lines = ["# accepted gadgets"] + [f"gadgets:{name}" for name in symbols]
    lines.append(f"{built['gadgets']}:{span.offset:#x}")
    allow.write_text("\n".join(lines) + "\n")
    status, document = _run_json(capsys, "--allow", str(allow), str(built["gadgets"]))
    assert status == 1
    remaining = [h["symbol"] for h in document["hits"] if not h["allowed"]]
    assert remaining == ["xrstors_mem"]
    allow.write_text(allow.read_text() + "*/gadgets:*\n")
    status, document = _run_json(capsys, "--allow", str(allow), str(built["gadgets"]))
    assert status == 0
    assert document["hits_not_allowed"] == 0


def test_cli_text_output(
    built: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", "--context", "1", str(built["gadgets"])]) == 1
    out = capsys.readouterr().out
    assert "1 ELF file scanned" in out
    assert "inside other instructions" in out
    assert "a jump to" in out
    assert "7 hits: 0 allowed, 7 not allowed" in out


def test_cli_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    bad = tmp_path / "allow.txt"
    bad.write_text("ok:pkey_set\nnot-an-entry\n")
    assert main(["scan", "--allow", str(bad), str(tmp_path)]) == 2
    assert "line 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["scan", "--context", "-2", str(tmp_path)])
    assert info.value.code == 2


def test_cli_singular_wording(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _scan(built["gadgets"])
    allow = tmp_path / "allow.txt"
    names = {h.symbol for h in report.hits} - {"span_page"}
    allow.write_text("".join(f"gadgets:{name}\n" for name in sorted(names)))
    assert main(["scan", "--allow", str(allow), str(built["gadgets"])]) == 1
    out = capsys.readouterr().out
    assert "1 ELF file scanned" in out
    assert "7 hits: 6 allowed, 1 not allowed" in out
    only = tmp_path / "one"
    only.mkdir()
    shutil.copy(built["clean"], only / "clean")
    (only / "notes.txt").write_text("text\n")
    assert main(["scan", str(only)]) == 0
    out = capsys.readouterr().out
    assert "1 ELF file scanned" in out
    assert "\n0 hits: 0 allowed, 0 not allowed\n" in out


def test_cli_single_hit_is_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = _gcc_nostdlib(tmp_path, "gadgets-x32", GADGETS_X32_S, "-mx32")
    assert main(["scan", str(binary)]) == 1
    out = capsys.readouterr().out
    assert "\n1 hit: 0 allowed, 1 not allowed\n" in out
    assert "x32" in out


def test_cli_truncated_file_exit_3(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "root"
    tree.mkdir()
    shutil.copy(built["clean"], tree / "clean")
    (tree / "cut").write_bytes(built["gadgets"].read_bytes()[:5000])
    (tree / "notes.txt").write_text("text\n")
    assert main(["scan", str(tree)]) == 3
    out = capsys.readouterr().out
    assert f"not scanned {tree / 'cut'}: truncated: segment" in out
    assert "notes.txt" not in out
    assert "1 file could not be scanned" in out
    status, document = _run_json(capsys, str(tree))
    assert status == 3
    assert document["files_unscanned"] == 1
    flags = {Path(s["path"]).name: s["unscanned"] for s in document["files_skipped"]}
    assert flags == {"cut": True, "notes.txt": False}
    assert main(["scan", "--allow-unscanned", str(tree)]) == 0
    assert "accepted with --allow-unscanned" in capsys.readouterr().out


def test_cli_hits_take_precedence_over_unscanned(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "cut"
    cut.write_bytes(built["gadgets"].read_bytes()[:100])
    assert main(["scan", str(built["gadgets"]), str(cut)]) == 1
    assert "not scanned" in capsys.readouterr().out


def _run_without_read_override(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run paracell with no right to read files whose mode forbids it.

    As root, the capabilities that bypass file modes are removed from the
    child's bounding set, so root reads only what its owner bits allow.
    """
    command = [sys.executable, "-m", "paracell", *argv]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's read override")
        command = [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            *command,
        ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_unreadable_files_exit_3(built: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "root"
    (tree / "locked-dir").mkdir(parents=True)
    shutil.copy(built["clean"], tree / "clean")
    shutil.copy(built["clean"], tree / "locked-file")
    shutil.copy(built["gadgets"], tree / "locked-dir" / "hidden")
    (tree / "locked-file").chmod(0)
    (tree / "locked-dir").chmod(0)
    try:
        done = _run_without_read_override(["scan", str(tree)])
        assert done.returncode == 3, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert f"not scanned {tree / 'locked-file'}: unreadable" in done.stdout
        assert f"not scanned {tree / 'locked-dir'}: unreadable: directory" in (
            done.stdout
        )
        assert "2 files could not be scanned" in done.stdout
        allowed = _run_without_read_override(
            ["scan", "--allow-unscanned", "--json", str(tree)]
        )
        assert allowed.returncode == 0, allowed.stderr
        document = json.loads(allowed.stdout)
        assert document["files_scanned"] == 1
        assert document["files_unscanned"] == 2
    finally:
        (tree / "locked-dir").chmod(0o755)
        (tree / "locked-file").chmod(0o644)


# -- the system's own trees ---------------------------------------------------------

SYSTEM_TREES = [Path("/usr/bin"), Path("/usr/lib/x86_64-linux-gnu")]


@pytest.mark.parametrize("tree", SYSTEM_TREES, ids=str)
def test_system_tree_scans(tree: Path, record_property: pytest.RecordProperty) -> None:
    if not tree.is_dir():
        pytest.skip(f"{tree} does not exist on this machine")
    report = _scan(tree)
    record_property("files_scanned", report.files_scanned)
    record_property("files_skipped", len(report.files_skipped))
    record_property("hits", len(report.hits))
    print(
        f"{tree}: {report.files_scanned} scanned, {len(report.files_skipped)} skipped "
        f"{report.skipped_by_reason()}, {len(report.hits)} hits, "
        f"{report.bytes_scanned / 1e6:.0f} MB executable"
    )
    assert report.files_scanned > 10
    assert report.bytes_scanned > 0
    for hit in report.hits:
        assert hit.kind in {"wrpkru", "xrstor", "xrstor64", "xrstors", "xrstors64"}


def test_glibc_pkey_set_is_found() -> None:
    libc = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.exists():
        pytest.skip("no x86-64 glibc at /usr/lib/x86_64-linux-gnu/libc.so.6")
    from elftools.elf.elffile import ELFFile

    with open(libc, "rb") as stream:
        dynsym = ELFFile(stream).get_section_by_name(".dynsym")
        exported = {s.name for s in dynsym.iter_symbols()}
    if "pkey_set" not in exported:
        pytest.skip("this glibc has no pkey_set")
    hits = [h for h in _scan(libc).hits if h.symbol == "pkey_set"]
    # glibc's pkey_set(3) is a user-space WRPKRU, which a ParaCell loader rejects.
    assert [h.kind for h in hits] == ["wrpkru"]


def test_cli_named_non_elf_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    assert main(["scan", str(text)]) == 2
    err = capsys.readouterr().err
    assert f"skipped {text}: not ELF" in err
    assert "nothing was scanned" in err
