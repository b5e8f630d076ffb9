"""Layout of the signal frame the container kernel writes on the user stack.

It follows the shape of Linux's x86-64 rt_sigframe. It contains the
handler's return address (the restorer, which calls rt_sigreturn), the
signal number and the interrupted registers. A standard-format XSAVE area
follows, and its PKRU component stores the interrupted PKRU. The frame is
user memory, so everything in it is attacker-controlled by the time
rt_sigreturn reads it back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from paracell.isolation.cpu import (
    XCR0,
    XFEATURE_PKRU,
    XSAVE_AREA_BYTES,
    XSAVE_HEADER_OFFSET,
    XSAVE_PKRU_OFFSET,
    Registers,
)

RESTORER_OFFSET = 0
SIGNO_OFFSET = 8
#: RAX..R15 in encoding order, then RIP.
REGS_OFFSET = 16
XSAVE_OFFSET = 192  # 64-byte aligned, as XRSTOR requires
FRAME_BYTES = (XSAVE_OFFSET + XSAVE_AREA_BYTES + 63) & ~63
#: Bytes below the interrupted RSP that the frame leaves alone (the x86-64
#: System V red zone).
RED_ZONE_BYTES = 128


@dataclass(frozen=True)
class XsaveHeader:
    xstate_bv: int
    xcomp_bv: int

    @property
    def valid(self) -> bool:
        """Standard format with no component outside XCR0, as XRSTOR demands."""
        return self.xcomp_bv == 0 and not self.xstate_bv & ~XCR0


def frame_address(interrupted_rsp: int) -> int:
    """Return where the frame for a signal interrupting at ``interrupted_rsp`` goes."""
    return (interrupted_rsp - RED_ZONE_BYTES - FRAME_BYTES) & ~63


def encode_frame(
    restorer: int, signo: int, regs: Registers, pkru: int, *, xstate_bv: int = XCR0
) -> bytes:
    """Return the bytes of a signal frame."""
    frame = bytearray(FRAME_BYTES)
    struct.pack_into("<QQ", frame, RESTORER_OFFSET, restorer, signo)
    struct.pack_into("<16Q", frame, REGS_OFFSET, *regs.gpr)
    struct.pack_into("<Q", frame, REGS_OFFSET + 16 * 8, regs.rip)
    struct.pack_into("<QQ", frame, XSAVE_OFFSET + XSAVE_HEADER_OFFSET, xstate_bv, 0)
    struct.pack_into("<I", frame, XSAVE_OFFSET + XSAVE_PKRU_OFFSET, pkru)
    return bytes(frame)


def decode_registers(frame: bytes) -> Registers:
    """Return the registers saved in ``frame`` (RIP included, PKRU not)."""
    values = struct.unpack_from("<17Q", frame, REGS_OFFSET)
    return Registers(gpr=list(values[:16]), rip=values[16])


def decode_xsave_header(frame: bytes) -> XsaveHeader:
    return XsaveHeader(
        *struct.unpack_from("<QQ", frame, XSAVE_OFFSET + XSAVE_HEADER_OFFSET)
    )


def decode_pkru(frame: bytes) -> int:
    """Return the PKRU an XRSTOR of the frame would load when asked for PKRU.

    With the PKRU bit of XSTATE_BV clear, XRSTOR loads the init value 0,
    which opens every key.
    """
    header = decode_xsave_header(frame)
    if not header.xstate_bv & XFEATURE_PKRU:
        return 0
    return int(struct.unpack_from("<I", frame, XSAVE_OFFSET + XSAVE_PKRU_OFFSET)[0])
