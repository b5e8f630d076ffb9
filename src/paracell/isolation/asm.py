"""A small x86-64 assembler for the instructions the model's CPU executes.

The gates and the attack payloads are built from these encoders, so the bytes
the loader scans and the CPU executes are real x86-64 machine code (capstone
decodes them the same way). Memory operands use absolute 32-bit addresses
(ModRM with a SIB byte of 0x25), which is why the model's address space lies
below 2 GiB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)

REGISTER_NAMES = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split()

GS_PREFIX = b"\x65"

WRPKRU = b"\x0f\x01\xef"
RDPKRU = b"\x0f\x01\xee"
VMCALL = b"\x0f\x01\xc1"
SYSCALL = b"\x0f\x05"
UD2 = b"\x0f\x0b"
RET = b"\xc3"
INT3 = b"\xcc"
NOP = b"\x90"


def _rex(w: bool, reg: int, rm: int, force: bool = False) -> bytes:
    value = 0x40 | (w << 3) | ((reg >> 3) << 2) | (rm >> 3)
    return bytes([value]) if value != 0x40 or force else b""


def _abs32(address: int) -> bytes:
    if not -(1 << 31) <= address < (1 << 31):
        raise ValueError(f"address {address:#x} does not fit a 32-bit displacement")
    return struct.pack("<i", address)


def xor32(dst: int, src: int) -> bytes:
    """``xor dst32, src32`` (zero-extends into the 64-bit register)."""
    return _rex(False, src, dst) + bytes([0x31, 0xC0 | (src & 7) << 3 | (dst & 7)])


def mov_imm32(reg: int, value: int) -> bytes:
    """``mov reg32, imm32``."""
    return (
        _rex(False, 0, reg)
        + bytes([0xB8 | (reg & 7)])
        + struct.pack("<I", value & 0xFFFFFFFF)
    )


def mov_imm64(reg: int, value: int) -> bytes:
    """``mov reg64, imm64``."""
    return (
        _rex(True, 0, reg)
        + bytes([0xB8 | (reg & 7)])
        + struct.pack("<Q", value & (2**64 - 1))
    )


def mov_rr(dst: int, src: int) -> bytes:
    """``mov dst64, src64``."""
    return _rex(True, src, dst) + bytes([0x89, 0xC0 | (src & 7) << 3 | (dst & 7)])


def load_abs(dst: int, address: int, *, wide: bool = True, gs: bool = False) -> bytes:
    """``mov dst, [address]`` (64-bit, or 32-bit with ``wide`` false)."""
    prefix = GS_PREFIX if gs else b""
    modrm = 0x04 | (dst & 7) << 3
    return prefix + _rex(wide, dst, 0) + bytes([0x8B, modrm, 0x25]) + _abs32(address)


def store_abs(address: int, src: int, *, wide: bool = True, gs: bool = False) -> bytes:
    """``mov [address], src`` (64-bit, or 32-bit with ``wide`` false)."""
    prefix = GS_PREFIX if gs else b""
    modrm = 0x04 | (src & 7) << 3
    return prefix + _rex(wide, src, 0) + bytes([0x89, modrm, 0x25]) + _abs32(address)


def load_indirect(dst: int, base: int) -> bytes:
    """``mov dst64, [base]`` for a base other than rsp, rbp, r12 and r13."""
    if base & 7 in (RSP, RBP):
        raise ValueError("base register needs a SIB byte or displacement")
    return _rex(True, dst, base) + bytes([0x8B, (dst & 7) << 3 | (base & 7)])


def store_indirect(base: int, src: int) -> bytes:
    """``mov [base], src64`` for a base other than rsp, rbp, r12 and r13."""
    if base & 7 in (RSP, RBP):
        raise ValueError("base register needs a SIB byte or displacement")
    return _rex(True, src, base) + bytes([0x89, (src & 7) << 3 | (base & 7)])


def cmp_eax_imm32(value: int) -> bytes:
    return b"\x3d" + struct.pack("<I", value & 0xFFFFFFFF)


def test_eax_imm32(value: int) -> bytes:
    return b"\xa9" + struct.pack("<I", value & 0xFFFFFFFF)


def xrstor(base: int, *, rex_w: bool = False) -> bytes:
    """``xrstor [base]`` (``xrstor64`` with ``rex_w``); ModRM reg field 5, mod 0."""
    if base & 7 in (RSP, RBP):
        raise ValueError("base register needs a SIB byte or displacement")
    return _rex(rex_w, 0, base) + bytes([0x0F, 0xAE, 0x28 | (base & 7)])


def push(reg: int) -> bytes:
    return _rex(False, 0, reg) + bytes([0x50 | (reg & 7)])


def pop(reg: int) -> bytes:
    return _rex(False, 0, reg) + bytes([0x58 | (reg & 7)])


def jmp_reg(reg: int) -> bytes:
    """``jmp reg64``."""
    return _rex(False, 0, reg) + bytes([0xFF, 0xE0 | (reg & 7)])


def call_reg(reg: int) -> bytes:
    """``call reg64``."""
    return _rex(False, 0, reg) + bytes([0xFF, 0xD0 | (reg & 7)])


def rel32(target: int, next_address: int) -> bytes:
    return struct.pack("<i", target - next_address)


@dataclass
class Assembler:
    """Builds code at a fixed origin and records label addresses.

    Branches to labels defined later are patched by ``finish``.
    """

    origin: int
    code: bytearray = field(default_factory=bytearray)
    labels: dict[str, int] = field(default_factory=dict)
    _fixups: list[tuple[int, str]] = field(default_factory=list)

    @property
    def here(self) -> int:
        return self.origin + len(self.code)

    def label(self, name: str) -> int:
        self.labels[name] = self.here
        return self.here

    def emit(self, data: bytes) -> int:
        address = self.here
        self.code += data
        return address

    def _branch(self, opcode: bytes, target: int | str) -> int:
        address = self.emit(opcode)
        if isinstance(target, int):
            self.code += rel32(target, self.here + 4)
        else:
            self._fixups.append((len(self.code), target))
            self.code += b"\0\0\0\0"
        return address

    def jmp(self, target: int | str) -> int:
        return self._branch(b"\xe9", target)

    def call(self, target: int | str) -> int:
        return self._branch(b"\xe8", target)

    def jne(self, target: int | str) -> int:
        return self._branch(b"\x0f\x85", target)

    def je(self, target: int | str) -> int:
        return self._branch(b"\x0f\x84", target)

    def finish(self) -> bytes:
        for position, name in self._fixups:
            next_address = self.origin + position + 4
            self.code[position : position + 4] = rel32(self.labels[name], next_address)
        self._fixups.clear()
        return bytes(self.code)
