"""A byte-level x86-64 interpreter for the instructions the model needs.

It decodes real machine code from the address space one byte at a time, so a
jump to any byte offset (into the middle of a gate, into an immediate, across
a page boundary) executes whatever those bytes mean. Supported: the PKRU
instructions (WRPKRU, RDPKRU, XRSTOR, XRSTORS), VMCALL, SYSCALL, mov between
registers and memory, mov of immediates, xor, cmp/test against EAX,
push/pop, call/jmp/ret and je/jne. Anything else raises #UD, which is the
conservative choice: the model never runs an instruction it does not know.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

from paracell.isolation import asm

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
MAX_INSTRUCTION_BYTES = 15

#: XCR0 of the modelled CPU: x87, SSE, AVX and PKRU state components.
XCR0 = 0x207
XFEATURE_PKRU = 1 << 9
#: Offset of the PKRU component in a standard-format XSAVE area. CPUID leaf
#: 0xD sub-leaf 9 reports it; 2688 (0xA80) is the value on Intel CPUs with
#: AVX-512, and the model uses it throughout.
XSAVE_PKRU_OFFSET = 0xA80
XSAVE_HEADER_OFFSET = 512
XSAVE_AREA_BYTES = XSAVE_PKRU_OFFSET + 8


class MemoryPort(Protocol):
    """Memory access path of the CPU; the machine adds checks and the oracle."""

    def fetch(self, address: int) -> int: ...

    def load(self, address: int, size: int) -> bytes: ...

    def store(self, address: int, data: bytes) -> None: ...


class CpuFault(Exception):
    """An exception raised by an instruction: ``#UD``, ``#GP``, ``#PF`` or ``#BP``.

    ``rip`` is the address of the faulting instruction and ``address`` the
    data or fetch address of a page fault.
    """

    def __init__(
        self,
        vector: str,
        rip: int,
        detail: str,
        address: int | None = None,
        page_fault: Exception | None = None,
    ):
        self.vector = vector
        self.rip = rip
        self.detail = detail
        self.address = address
        #: The ``PageFault`` behind a ``#PF``, when there is one.
        self.page_fault = page_fault
        super().__init__(f"{vector} at {rip:#x}: {detail}")


@dataclass(frozen=True)
class Trap:
    """An instruction that leaves the CPU for the host: SYSCALL or VMCALL."""

    kind: str
    rip: int
    next_rip: int


@dataclass
class Registers:
    """Architectural state of one hardware thread (the vCPU)."""

    gpr: list[int] = field(default_factory=lambda: [0] * 16)
    rip: int = 0
    zf: bool = False
    pkru: int = 0
    gs_base: int = 0

    def copy(self) -> Registers:
        return Registers(list(self.gpr), self.rip, self.zf, self.pkru, self.gs_base)

    def __getitem__(self, reg: int) -> int:
        return self.gpr[reg]

    def __setitem__(self, reg: int, value: int) -> None:
        self.gpr[reg] = value & MASK64


def _s8(value: int) -> int:
    return value - 0x100 if value & 0x80 else value


def _s32(value: int) -> int:
    return value - (1 << 32) if value & 0x8000_0000 else value


class _Decoder:
    def __init__(self, port: MemoryPort, start: int):
        self.port = port
        self.start = start
        self.pos = start

    def byte(self) -> int:
        if self.pos - self.start >= MAX_INSTRUCTION_BYTES:
            raise CpuFault("#GP", self.start, "instruction longer than 15 bytes")
        value = self.port.fetch(self.pos & MASK64)
        self.pos += 1
        return value

    def imm(self, size: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(size)), "little")


@dataclass
class _ModRM:
    mod: int
    reg: int
    rm: int
    address: int | None


class Cpu:
    """Executes one instruction per ``step`` on ``regs`` through ``port``."""

    def __init__(self, port: MemoryPort, regs: Registers | None = None):
        self.port = port
        self.regs = regs or Registers()

    def step(self) -> Trap | None:
        """Execute the instruction at RIP; return a ``Trap`` for SYSCALL and VMCALL."""
        regs = self.regs
        start = regs.rip
        dec = _Decoder(self.port, start)
        gs = False
        legacy: set[int] = set()
        op = dec.byte()
        while op in (0x65, 0x66, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x64, 0x36, 0xF0):
            if op == 0x65:
                gs = True
            else:
                legacy.add(op)
            op = dec.byte()
        rex = 0
        if 0x40 <= op <= 0x4F:
            rex = op
            op = dec.byte()
        wide = bool(rex & 8)
        if op == 0x0F:
            return self._two_byte(dec, rex, gs, legacy)
        if legacy - {0xF3}:
            raise CpuFault("#UD", start, f"prefix {sorted(legacy)} not modelled")
        size = 8 if wide else 4

        if op == 0x90 and not rex & 1:
            pass
        elif op == 0xCC:
            raise CpuFault("#BP", start, "int3")
        elif op == 0x31:
            m = self._modrm(dec, rex, gs)
            if m.address is not None:
                raise CpuFault(
                    "#UD", start, "xor with a memory operand is not modelled"
                )
            value = regs[m.rm] ^ regs[m.reg]
            value &= MASK64 if wide else MASK32
            regs[m.rm] = value
            regs.zf = value == 0
        elif op in (0x89, 0x8B):
            m = self._modrm(dec, rex, gs)
            if op == 0x89:
                value = regs[m.reg] & (MASK64 if wide else MASK32)
                if m.address is None:
                    regs[m.rm] = value
                else:
                    self.port.store(m.address, value.to_bytes(size, "little"))
            else:
                if m.address is None:
                    value = regs[m.rm] & (MASK64 if wide else MASK32)
                else:
                    value = int.from_bytes(self.port.load(m.address, size), "little")
                regs[m.reg] = value
        elif 0xB8 <= op <= 0xBF:
            reg = (op & 7) | (rex & 1) << 3
            regs[reg] = dec.imm(8 if wide else 4)
        elif op == 0x3D:
            imm = dec.imm(4)
            if wide:
                regs.zf = regs[asm.RAX] == _s32(imm) & MASK64
            else:
                regs.zf = regs[asm.RAX] & MASK32 == imm
        elif op == 0xA9:
            imm = dec.imm(4)
            mask = _s32(imm) & MASK64 if wide else imm
            regs.zf = regs[asm.RAX] & mask == 0
        elif 0x50 <= op <= 0x57:
            self._push(regs[(op & 7) | (rex & 1) << 3])
        elif 0x58 <= op <= 0x5F:
            value = self._pop()
            regs[(op & 7) | (rex & 1) << 3] = value
        elif op in (0x74, 0x75, 0xEB):
            disp = _s8(dec.byte())
            taken = op == 0xEB or (op == 0x74) == regs.zf
            regs.rip = (dec.pos + disp) & MASK64 if taken else dec.pos
            return None
        elif op in (0xE8, 0xE9):
            disp = _s32(dec.imm(4))
            if op == 0xE8:
                self._push(dec.pos)
            regs.rip = (dec.pos + disp) & MASK64
            return None
        elif op in (0xC3, 0xC2):
            extra = dec.imm(2) if op == 0xC2 else 0
            target = self._pop()
            regs[asm.RSP] = regs[asm.RSP] + extra
            regs.rip = target
            return None
        elif op == 0xFF:
            m = self._modrm(dec, rex, gs)
            if m.reg not in (2, 4):
                raise CpuFault("#UD", start, f"FF /{m.reg} is not modelled")
            if m.address is None:
                target = regs[m.rm]
            else:
                target = int.from_bytes(self.port.load(m.address, 8), "little")
            if m.reg == 2:
                self._push(dec.pos)
            regs.rip = target
            return None
        else:
            raise CpuFault("#UD", start, f"opcode {op:#04x} is not modelled")
        regs.rip = dec.pos & MASK64
        return None

    def _two_byte(
        self, dec: _Decoder, rex: int, gs: bool, legacy: set[int]
    ) -> Trap | None:
        regs = self.regs
        start = dec.start
        op = dec.byte()
        if op == 0x01:
            sub = dec.byte()
            if sub == 0xEF:  # WRPKRU
                if regs[asm.RCX] & MASK32 or regs[asm.RDX] & MASK32:
                    raise CpuFault("#GP", start, "wrpkru needs ECX = EDX = 0")
                regs.pkru = regs[asm.RAX] & MASK32
            elif sub == 0xEE:  # RDPKRU
                if regs[asm.RCX] & MASK32:
                    raise CpuFault("#GP", start, "rdpkru needs ECX = 0")
                regs[asm.RAX] = regs.pkru
                regs[asm.RDX] = 0
            elif sub == 0xC1:
                regs.rip = dec.pos
                return Trap("vmcall", start, dec.pos)
            else:
                raise CpuFault("#UD", start, f"0f 01 {sub:02x} is not modelled")
        elif op == 0x05:
            regs.rip = dec.pos
            return Trap("syscall", start, dec.pos)
        elif op == 0x0B:
            raise CpuFault("#UD", start, "ud2")
        elif op in (0x84, 0x85):
            disp = _s32(dec.imm(4))
            taken = (op == 0x84) == regs.zf
            regs.rip = (dec.pos + disp) & MASK64 if taken else dec.pos
            return None
        elif op == 0xAE:
            m = self._modrm(dec, rex, gs)
            if m.address is None:
                if m.reg != 5:
                    raise CpuFault(
                        "#UD", start, f"0f ae /{m.reg} (register form) is not modelled"
                    )
                # mod == 3 with reg == 5 is LFENCE: no architectural effect here.
            elif m.reg == 5:
                self._xrstor(m.address, start)
            else:
                raise CpuFault("#UD", start, f"0f ae /{m.reg} is not modelled")
        elif op == 0xC7:
            m = self._modrm(dec, rex, gs)
            if m.address is not None and m.reg == 3:
                raise CpuFault("#GP", start, "xrstors is privileged (CPL 0 only)")
            raise CpuFault("#UD", start, f"0f c7 /{m.reg} is not modelled")
        else:
            raise CpuFault("#UD", start, f"opcode 0f {op:02x} is not modelled")
        regs.rip = dec.pos & MASK64
        return None

    def _xrstor(self, address: int, start: int) -> None:
        # Only the PKRU component is modelled; the other components have no
        # effect on isolation. Only the standard (non-compacted) format is accepted.
        regs = self.regs
        if address % 64:
            raise CpuFault("#GP", start, "xrstor operand is not 64-byte aligned")
        header = self.port.load(address + XSAVE_HEADER_OFFSET, 16)
        xstate_bv, xcomp_bv = struct.unpack("<QQ", header)
        if xcomp_bv or xstate_bv & ~XCR0:
            raise CpuFault("#GP", start, "xrstor header has reserved or compacted bits")
        requested = XCR0 & ((regs[asm.RDX] & MASK32) << 32 | (regs[asm.RAX] & MASK32))
        if requested & XFEATURE_PKRU:
            if xstate_bv & XFEATURE_PKRU:
                raw = self.port.load(address + XSAVE_PKRU_OFFSET, 4)
                regs.pkru = int.from_bytes(raw, "little")
            else:
                regs.pkru = 0  # the init value of PKRU: every key open

    def _modrm(self, dec: _Decoder, rex: int, gs: bool) -> _ModRM:
        byte = dec.byte()
        mod, reg, rm = byte >> 6, (byte >> 3) & 7, byte & 7
        reg |= (rex >> 2 & 1) << 3
        if mod == 3:
            return _ModRM(mod, reg, rm | (rex & 1) << 3, None)

        # Memory operand: SIB, RIP-relative or base register, then displacement.
        regs = self.regs
        address = 0
        rip_relative = False
        if rm == 4:
            sib = dec.byte()
            scale, index, base = sib >> 6, (sib >> 3) & 7 | (rex >> 1 & 1) << 3, sib & 7
            if index != 4:
                address += regs[index] << scale
            if base == 5 and mod == 0:
                address += _s32(dec.imm(4))
            else:
                address += regs[base | (rex & 1) << 3]
        elif rm == 5 and mod == 0:
            rip_relative = True
            address += _s32(dec.imm(4))
        else:
            address += regs[rm | (rex & 1) << 3]

        if mod == 1:
            address += _s8(dec.byte())
        elif mod == 2:
            address += _s32(dec.imm(4))
        if rip_relative:
            # No modelled instruction has an immediate after a RIP-relative
            # operand, so the decoder position is the end of the instruction.
            address += dec.pos
        if gs:
            address += regs.gs_base
        return _ModRM(mod, reg, rm, address & MASK64)

    def _push(self, value: int) -> None:
        rsp = (self.regs[asm.RSP] - 8) & MASK64
        self.port.store(rsp, (value & MASK64).to_bytes(8, "little"))
        self.regs[asm.RSP] = rsp

    def _pop(self) -> int:
        rsp = self.regs[asm.RSP]
        value = int.from_bytes(self.port.load(rsp, 8), "little")
        self.regs[asm.RSP] = rsp + 8
        return value
