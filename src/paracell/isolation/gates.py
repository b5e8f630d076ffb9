"""Gate code: the only executable bytes allowed to write PKRU.

Three gates share the gate page:

entry
    ``mov r11, rax`` keeps the system-call number. Then it zeroes ECX and
    EDX, loads the kernel PKRU into EAX and runs WRPKRU. RDPKRU and a compare
    with the kernel value follow (abort on a mismatch). Last, it saves the
    user RSP, switches to the kernel stack and jumps to the kernel's
    dispatcher.
exit
    Restore the user RSP, load the thread's user PKRU from per-CPU data,
    WRPKRU, then RDPKRU and test that the kernel key is access-disabled (abort
    otherwise), move the return value from R11 to RAX and return.
xrstor
    The kernel's FPU restore for rt_sigreturn: XRSTOR, then RDPKRU and compare
    with the kernel value (abort on a mismatch), and jump to fixed kernel code.

Abort is ``ud2``; the host kills a thread that faults inside the gate page.
When a rule is switched off the gate is assembled without that check, which
is how an attack shows the check matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paracell.isolation import asm, layout
from paracell.isolation import pkru as pk
from paracell.isolation.memory import PAGE_SIZE


@dataclass(frozen=True)
class GateImage:
    """Assembled gate page and the addresses the rest of the model needs."""

    code: bytes = field(repr=False)
    entry: int
    entry_wrpkru: int
    entry_dispatch: int
    exit: int
    exit_wrpkru: int
    exit_ret: int
    xrstor: int
    xrstor_dispatch: int
    abort: int
    #: Address of each check's branch to ``abort`` -> the rule that check implements.
    check_branches: dict[int, str] = field(default_factory=dict)

    @property
    def sanctioned_writers(self) -> frozenset[int]:
        """Addresses of the ``0F`` byte of every PKRU writer the gates contain."""
        return frozenset({self.entry_wrpkru, self.exit_wrpkru, self.xrstor})


def build_gates(rules: frozenset[str]) -> GateImage:
    """Assemble the gate page for the enabled ``rules``."""
    a = asm.Assembler(layout.GATE_PAGE)
    checks: dict[int, str] = {}
    use_gs = "gate-fixed-percpu" not in rules

    a.label("entry")
    a.emit(asm.mov_rr(asm.R11, asm.RAX))
    a.emit(asm.xor32(asm.RCX, asm.RCX))
    a.emit(asm.xor32(asm.RDX, asm.RDX))
    a.emit(asm.mov_imm32(asm.RAX, pk.KERNEL_PKRU))
    a.label("entry_wrpkru")
    a.emit(asm.WRPKRU)
    if "gate-entry-check" in rules:
        a.emit(asm.RDPKRU)
        a.emit(asm.cmp_eax_imm32(pk.KERNEL_PKRU))
        checks[a.jne("abort")] = "gate-entry-check"
    a.emit(_percpu_store(layout.PERCPU_USER_RSP, asm.RSP, use_gs))
    a.emit(_percpu_load(asm.RSP, layout.PERCPU_KERNEL_STACK, use_gs))
    a.label("entry_dispatch")
    a.jmp(layout.KERNEL_DISPATCH)

    a.label("exit")
    a.emit(_percpu_load(asm.RSP, layout.PERCPU_USER_RSP, use_gs))
    a.emit(_percpu_load(asm.RAX, layout.PERCPU_USER_PKRU, use_gs, wide=False))
    a.emit(asm.xor32(asm.RCX, asm.RCX))
    a.emit(asm.xor32(asm.RDX, asm.RDX))
    a.label("exit_wrpkru")
    a.emit(asm.WRPKRU)
    if "exit-pkru-check" in rules:
        a.emit(asm.RDPKRU)
        a.emit(asm.test_eax_imm32(pk.ad_bit(pk.KERNEL_PKEY)))
        # ZF set means the kernel key's AD bit is clear: abort.
        checks[a.je("abort")] = "exit-pkru-check"
    a.emit(asm.mov_rr(asm.RAX, asm.R11))
    a.label("exit_ret")
    a.emit(asm.RET)

    a.label("xrstor")
    a.emit(asm.xrstor(asm.RDI))
    if "xrstor-gate-check" in rules:
        a.emit(asm.xor32(asm.RCX, asm.RCX))
        a.emit(asm.RDPKRU)
        a.emit(asm.cmp_eax_imm32(pk.KERNEL_PKRU))
        checks[a.jne("abort")] = "xrstor-gate-check"
    a.label("xrstor_dispatch")
    a.jmp(layout.KERNEL_XRSTOR_CONTINUE)

    a.label("abort")
    a.emit(asm.UD2)
    code = a.finish()
    code += asm.INT3 * (PAGE_SIZE - len(code))
    labels = a.labels
    return GateImage(
        code=code,
        entry=labels["entry"],
        entry_wrpkru=labels["entry_wrpkru"],
        entry_dispatch=labels["entry_dispatch"],
        exit=labels["exit"],
        exit_wrpkru=labels["exit_wrpkru"],
        exit_ret=labels["exit_ret"],
        xrstor=labels["xrstor"],
        xrstor_dispatch=labels["xrstor_dispatch"],
        abort=labels["abort"],
        check_branches=checks,
    )


def build_kernel_text() -> bytes:
    """Return the kernel text page: the hypercall stub, the rest ``int3``.

    The dispatcher and the XRSTOR continuation are container-kernel code that
    the model runs in Python; their bytes here are never executed.
    """
    text = bytearray(asm.INT3 * PAGE_SIZE)
    stub = layout.KERNEL_HYPERCALL_STUB - layout.KERNEL_TEXT
    code = asm.VMCALL + asm.RET
    text[stub : stub + len(code)] = code
    return bytes(text)


def _percpu_load(dst: int, address: int, use_gs: bool, wide: bool = True) -> bytes:
    if use_gs:
        return asm.load_abs(dst, address - layout.PERCPU, wide=wide, gs=True)
    return asm.load_abs(dst, address, wide=wide)


def _percpu_store(address: int, src: int, use_gs: bool) -> bytes:
    if use_gs:
        return asm.store_abs(address - layout.PERCPU, src, gs=True)
    return asm.store_abs(address, src)
