"""The container user's powers: load code, set registers, jump, call the gate.

Attacks and property tests act only through this class, so they have exactly
the powers of user code: choose any register values, jump to any address,
read and write memory with its own rights, and make system calls.
"""

from __future__ import annotations

from collections.abc import Callable

from paracell.isolation import asm, layout
from paracell.isolation.kernel import NR_MMAP
from paracell.isolation.machine import DEFAULT_MAX_STEPS, Machine
from paracell.isolation.memory import PAGE_SIZE, Prot

PROT_RW = int(Prot.READ | Prot.WRITE)
PROT_RX = int(Prot.READ | Prot.EXEC)

#: Registers a user may set by name in ``jump``.
_REGISTERS = {name: index for index, name in enumerate(asm.REGISTER_NAMES)}


class User:
    """The user side of one container: a code loader and a debugger-like control."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._next_code = layout.USER_CODE_BASE
        # The syscall stub: ``call <entry gate>`` and then the stop address.
        self.stub = self._reserve(1)
        a = asm.Assembler(self.stub)
        a.call(machine.gates.entry)
        self.stop = a.emit(asm.INT3)
        machine.kernel.mm.load_segment(self.stub, a.finish(), Prot.READ | Prot.EXEC)
        machine.stop_addresses.add(self.stop)

    def _reserve(self, nr_pages: int) -> int:
        address = self._next_code
        self._next_code += nr_pages * PAGE_SIZE
        return address

    def load_code(
        self, build: bytes | Callable[[int, int], bytes], nr_pages: int = 1
    ) -> int:
        """Load user code through the kernel's loader and return its address.

        ``build`` is the code, or a function of (load address, stop address)
        that returns it. Raises ``LoadRejected`` when the loader refuses it.
        """
        address = self._reserve(nr_pages)
        code = build(address, self.stop) if callable(build) else build
        self.machine.kernel.mm.load_segment(address, code, Prot.READ | Prot.EXEC)
        return address

    def jump(
        self, address: int, max_steps: int = DEFAULT_MAX_STEPS, **registers: int
    ) -> str:
        """Set registers, jump to ``address`` and run; return why the run ended."""
        m = self.machine
        if m.current is None:
            return "no-thread"
        for name, value in registers.items():
            m.regs[_REGISTERS[name]] = value
        m.regs.rip = address
        return m.run(max_steps)

    def syscall(self, nr: int, *args: int) -> int | None:
        """Call the entry gate; return the signed result (None if it never returns)."""
        m = self.machine
        if m.current is None:
            return None
        tid = m.current
        values = dict(zip(("rdi", "rsi", "r10", "r8"), args, strict=False))
        outcome = self.jump(self.stub, rax=nr, **values)
        if outcome != "stop" or m.current != tid:
            return None
        result = m.regs[asm.RAX]
        return result - (1 << 64) if result >> 63 else result

    def mmap(self, nr_pages: int = 1, prot: int = PROT_RW) -> int:
        """Map anonymous memory; raise ``RuntimeError`` when the kernel refuses."""
        result = self.syscall(NR_MMAP, 0, nr_pages * PAGE_SIZE, prot, 0)
        if result is None or result < 0:
            raise RuntimeError(f"mmap failed: {result}")
        return result

    def push(self, value: int) -> bool:
        """Push a 64-bit value on the user stack with user rights."""
        rsp = self.machine.regs[asm.RSP] - 8
        if not self.write(rsp, value.to_bytes(8, "little")):
            return False
        self.machine.regs[asm.RSP] = rsp
        return True

    def read(self, address: int, size: int) -> bytes | None:
        """Read memory as user code at the current RIP would; None after a fault."""
        return self._access(address, size, None)

    def write(self, address: int, data: bytes) -> bool:
        """Write memory as user code at the current RIP would; false after a fault."""
        return self._access(address, len(data), data) is not None

    def _access(self, address: int, size: int, data: bytes | None) -> bytes | None:
        return self.machine.user_access(address, size, data)
