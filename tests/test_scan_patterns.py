"""The byte-pattern search shared by the scanner and the model's loader."""

from __future__ import annotations

import capstone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paracell.isolation import patterns
from paracell.isolation.patterns import WriterKind, find_pkru_writers

WRITER_MNEMONICS = {"wrpkru", "xrstor", "xrstor64", "xrstors", "xrstors64"}


def test_finds_each_kind() -> None:
    data = bytes.fromhex("90 0f01ef 90 0fae2f 90 480fae6c2440 90 0fc71f")
    hits = find_pkru_writers(data)
    assert [(h.offset, h.kind) for h in hits] == [
        (1, WriterKind.WRPKRU),
        (5, WriterKind.XRSTOR),
        (10, WriterKind.XRSTOR),
        (16, WriterKind.XRSTORS),
    ]
    assert hits[2].rex_w
    assert hits[2].mnemonic == "xrstor64"


@pytest.mark.parametrize("modrm", range(0xE8, 0xF0))
def test_lfence_encodings_are_not_xrstor(modrm: int) -> None:
    assert find_pkru_writers(bytes([0x0F, 0xAE, modrm])) == []


@pytest.mark.parametrize("modrm", [0x28, 0x2F, 0x68, 0x6C, 0xA8, 0xAF])
def test_xrstor_memory_forms_found(modrm: int) -> None:
    hits = find_pkru_writers(bytes([0x0F, 0xAE, modrm]))
    assert [h.kind for h in hits] == [WriterKind.XRSTOR]


@pytest.mark.parametrize("modrm", [0x20, 0x08, 0x30, 0x38, 0xF8])
def test_other_0fae_forms_ignored(modrm: int) -> None:
    # /4 XSAVE, /1 FXRSTOR, /6 XSAVEOPT, /7 CLFLUSH, mod=3 /7 SFENCE
    assert find_pkru_writers(bytes([0x0F, 0xAE, modrm])) == []


def test_xrstors_register_form_ignored() -> None:
    assert find_pkru_writers(bytes([0x0F, 0xC7, 0xDF])) == []  # mod 3: not XRSTORS


def test_sequence_at_buffer_end() -> None:
    assert [h.offset for h in find_pkru_writers(b"\x90\x90\x0f\x01\xef")] == [2]
    assert find_pkru_writers(b"\x90\x0f\x01") == []


def test_adjacent_and_overlapping_candidates() -> None:
    # A 0F that starts no match must not hide a match starting at the next byte.
    data = bytes.fromhex("0f 0f01ef 0f 0f 0fae2f 48 0fae6c2440")
    hits = find_pkru_writers(data)
    assert [(h.offset, h.kind, h.rex_w) for h in hits] == [
        (1, WriterKind.WRPKRU, False),
        (6, WriterKind.XRSTOR, False),
        (10, WriterKind.XRSTOR, True),
    ]


def test_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sequences across the 8-byte chunk edges at 8 and 24, and a REX prefix
    # just before the edge at 40.
    data = bytearray(b"\x90" * 64)
    for offset in (6, 13, 22, 61):
        data[offset : offset + 3] = b"\x0f\x01\xef"
    data[39:43] = b"\x48\x0f\xae\x2f"
    expected = find_pkru_writers(bytes(data))
    monkeypatch.setattr(patterns, "CHUNK_BYTES", 8)
    chunked = find_pkru_writers(bytes(data))
    assert chunked == expected
    wrpkru = [h.offset for h in chunked if h.kind is WriterKind.WRPKRU]
    assert wrpkru == [6, 13, 22, 61]
    xrstor = [(h.offset, h.rex_w) for h in chunked if h.kind is WriterKind.XRSTOR]
    assert xrstor == [(40, True)]


def test_memoryview_of_a_slice() -> None:
    data = memoryview(b"\x90" * 10 + b"\x0f\x01\xef")[5:]
    assert [h.offset for h in find_pkru_writers(data)] == [5]


def test_wrpkru_only_mode() -> None:
    data = bytes.fromhex("0f01ef 0fae2f")
    assert [h.kind for h in find_pkru_writers(data, include_xrstor=False)] == [
        WriterKind.WRPKRU
    ]


SIGNATURES = st.sampled_from(
    [b"\x0f\x01\xef", b"\x0f\xae", b"\x0f\xc7", b"\x0f\xae\xe8", b"\x48\x0f\xae"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=6) | SIGNATURES, max_size=24))
def test_matches_capstone_at_every_offset(parts: list[bytes]) -> None:
    # Independent check of the ModRM rules: decode at every 0F byte with capstone.
    data = b"".join(parts)
    padded = data + bytes(16)
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    expected = set()
    for offset in range(len(data)):
        if padded[offset] != 0x0F:
            continue
        for insn in decoder.disasm(padded[offset : offset + 15], 0, count=1):
            if insn.mnemonic in WRITER_MNEMONICS:
                expected.add(offset)
    found = {h.offset for h in find_pkru_writers(padded) if h.offset < len(data)}
    assert found == expected


def test_32bit_mode_has_no_rex_prefix() -> None:
    # In 32-bit mode 48 is `dec eax`, so the XRSTOR after it is not XRSTOR64.
    data = bytes.fromhex("48 0fae2f 90 0f01ef")
    hits = find_pkru_writers(data, bits=32)
    assert [(h.offset, h.kind) for h in hits] == [
        (1, WriterKind.XRSTOR),
        (5, WriterKind.WRPKRU),
    ]
    assert not hits[0].rex_w
    assert hits[0].mnemonic == "xrstor"
    assert find_pkru_writers(data, bits=64)[0].mnemonic == "xrstor64"


def test_invalid_mode_rejected() -> None:
    with pytest.raises(ValueError, match="bits must be 32 or 64"):
        find_pkru_writers(b"\x0f\x01\xef", bits=16)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=6) | SIGNATURES, max_size=24))
def test_matches_capstone_in_32bit_mode(parts: list[bytes]) -> None:
    data = b"".join(parts)
    padded = data + bytes(16)
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    expected = {}
    for offset in range(len(data)):
        if padded[offset] != 0x0F:
            continue
        for insn in decoder.disasm(padded[offset : offset + 15], 0, count=1):
            if insn.mnemonic in WRITER_MNEMONICS:
                expected[offset] = insn.mnemonic
    found = {
        h.offset: h.mnemonic
        for h in find_pkru_writers(padded, bits=32)
        if h.offset < len(data)
    }
    assert found == expected
