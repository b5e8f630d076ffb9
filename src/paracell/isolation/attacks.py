"""The attack suite: each attack, the rule that stops it, and how to run it.

An attack runs on a fresh ``Machine`` through the ``User`` interface only.
It succeeds when the oracle records any violation. ``rule`` names the rule
that stops it. A few attacks aim at a value (a PKRU) that a second, later
check also catches. Those attacks list that check in ``backstops``, and the
tests show that such an attack gets through only with both switched off.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from paracell.isolation import asm, layout, sigframe
from paracell.isolation import kernel as k
from paracell.isolation import pkru as pk
from paracell.isolation.cpu import XCR0, XSAVE_HEADER_OFFSET, XSAVE_PKRU_OFFSET
from paracell.isolation.host import (
    HC_PAGER_UNBIND,
    PAGER_UNBIND,
    RING_ENTRIES,
    RING_TAIL,
)
from paracell.isolation.machine import Machine, Violation
from paracell.isolation.memory import PAGE_SIZE
from paracell.isolation.mm import MAP_FIXED, LoadRejected
from paracell.isolation.rules import ALL_RULES, RULES
from paracell.isolation.userland import PROT_RW, PROT_RX, User

#: A PKRU that opens the kernel key but differs from the kernel value, so the
#: gates' equality checks can tell it apart.
CHOSEN_PKRU = pk.PKRU_LINUX_DEFAULT & ~pk.ad_bit(pk.KERNEL_PKEY)
#: XSTATE_BV with the PKRU bit clear: XRSTOR then loads PKRU's init value 0.
XSTATE_BV_WITHOUT_PKRU = 0x3
ALL_FEATURES = 0xFFFF_FFFF


@dataclass(frozen=True)
class Attack:
    name: str
    rule: str
    description: str
    run: Callable[[User], None] = field(repr=False)
    backstops: tuple[str, ...] = ()


@dataclass
class AttackResult:
    """Outcome of one attack on one machine."""

    name: str
    rule: str
    backstops: tuple[str, ...]
    description: str
    stopped: bool
    violations: list[Violation]
    #: Rules that logged an enforcement while the attack ran.
    enforced: list[str]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "stopped": self.stopped,
            "rule": self.rule,
            "rule_text": RULES[self.rule].text,
            "backstops": list(self.backstops),
            "description": self.description,
            "enforced": self.enforced,
            "violations": [
                {"kind": v.kind, "thread": v.tid, "rip": v.rip, "detail": v.detail}
                for v in self.violations
            ],
        }


# -- payload building ------------------------------------------------------------


def _read_secret(origin: int, stop: int, prefix: bytes = b"") -> bytes:
    """``prefix``, then load the kernel secret into RAX and jump to ``stop``."""
    a = asm.Assembler(origin)
    a.emit(prefix)
    a.emit(asm.load_abs(asm.RAX, layout.KERNEL_SECRET))
    a.jmp(stop)
    return a.finish()


def _open_all_keys() -> bytes:
    return (
        asm.xor32(asm.RCX, asm.RCX)
        + asm.xor32(asm.RDX, asm.RDX)
        + asm.xor32(asm.RAX, asm.RAX)
    )


def _xsave_area(xstate_bv: int, pkru_value: int) -> bytes:
    area = bytearray(XSAVE_PKRU_OFFSET + 8)
    struct.pack_into("<QQ", area, XSAVE_HEADER_OFFSET, xstate_bv, 0)
    struct.pack_into("<I", area, XSAVE_PKRU_OFFSET, pkru_value)
    return bytes(area)


# -- attacks -----------------------------------------------------------------------


def kernel_page_read(u: User) -> None:
    u.jump(u.load_code(_read_secret))


def kernel_page_write(u: User) -> None:
    def build(origin: int, stop: int) -> bytes:
        a = asm.Assembler(origin)
        a.emit(asm.xor32(asm.RAX, asm.RAX))
        a.emit(asm.store_abs(layout.PERCPU_USER_PKRU, asm.RAX, wide=False))
        a.jmp(stop)
        return a.finish()

    u.jump(u.load_code(build))


def kernel_text_jump(u: User) -> None:
    u.push(u.stop)
    u.jump(layout.KERNEL_DISPATCH, r11=k.NR_GETPID)


def entry_gate_wrpkru_jump(u: User) -> None:
    u.push(u.stop)
    u.jump(u.machine.gates.entry_wrpkru, rax=CHOSEN_PKRU, rcx=0, rdx=0, r11=k.NR_GETPID)


def exit_gate_wrpkru_jump(u: User) -> None:
    payload = u.load_code(_read_secret)
    u.push(payload)
    u.jump(u.machine.gates.exit_wrpkru, rax=pk.PKRU_INIT, rcx=0, rdx=0, r11=0)


def _load_or_give_up(
    u: User, build: Callable[[int, int], bytes], nr_pages: int = 1
) -> int | None:
    try:
        return u.load_code(build, nr_pages)
    except LoadRejected:
        return None


def wrpkru_in_user_code(u: User) -> None:
    address = _load_or_give_up(
        u,
        lambda origin, stop: _read_secret(origin, stop, _open_all_keys() + asm.WRPKRU),
    )
    if address is not None:
        u.jump(address)


def wrpkru_unaligned(u: User) -> None:
    # ``mov eax, 0xEF010F90`` is B8 90 0F 01 EF: WRPKRU hides in the immediate.
    hidden = asm.mov_imm32(asm.RAX, 0xEF010F90)
    address = _load_or_give_up(
        u, lambda origin, stop: _read_secret(origin, stop, hidden)
    )
    if address is not None:
        u.jump(address + 2, rax=pk.PKRU_INIT, rcx=0, rdx=0)


def wrpkru_across_instructions(u: User) -> None:
    # ``mov eax, 0x0F000000`` ends in 0F and ``add edi, ebp`` is 01 EF.
    split = asm.mov_imm32(asm.RAX, 0x0F00_0000) + b"\x01\xef"
    address = _load_or_give_up(
        u, lambda origin, stop: _read_secret(origin, stop, split)
    )
    if address is not None:
        u.jump(address + 4, rax=pk.PKRU_INIT, rcx=0, rdx=0)


def wrpkru_across_pages(u: User) -> None:
    def build(origin: int, stop: int) -> bytes:
        first = asm.INT3 * (PAGE_SIZE - 1) + b"\x0f"
        return first + _read_secret(origin + PAGE_SIZE, stop, b"\x01\xef")

    address = _load_or_give_up(u, build, nr_pages=2)
    if address is not None:
        u.jump(address + PAGE_SIZE - 1, rax=pk.PKRU_INIT, rcx=0, rdx=0)


def xrstor_in_user_code(u: User) -> None:
    area = u.mmap()
    u.write(area, _xsave_area(XSTATE_BV_WITHOUT_PKRU, 0))
    address = _load_or_give_up(
        u, lambda origin, stop: _read_secret(origin, stop, asm.xrstor(asm.RDI))
    )
    if address is not None:
        u.jump(address, rdi=area, rax=ALL_FEATURES, rdx=ALL_FEATURES)


def xrstor_gate_crafted_state(u: User) -> None:
    area = u.mmap()
    u.write(area, _xsave_area(XCR0, CHOSEN_PKRU))
    u.push(u.stop)
    u.jump(u.machine.gates.xrstor, rdi=area, rax=ALL_FEATURES, rdx=ALL_FEATURES, rcx=0)


def _jit_payload(origin: int, stop: int) -> bytes:
    return _read_secret(origin, stop, _open_all_keys() + asm.WRPKRU)


def jit_rwx_wrpkru(u: User) -> None:
    rwx = PROT_RW | PROT_RX
    address = u.syscall(k.NR_MMAP, 0, PAGE_SIZE, rwx, 0)
    if address is None or address < 0:
        return
    if u.write(address, _jit_payload(address, u.stop)):
        u.jump(address)


def jit_mprotect_wrpkru(u: User) -> None:
    address = u.mmap()
    u.write(address, _jit_payload(address, u.stop))
    if u.syscall(k.NR_MPROTECT, address, PAGE_SIZE, PROT_RX) == 0:
        u.jump(address)


def mprotect_kernel_page(u: User) -> None:
    u.syscall(k.NR_MPROTECT, layout.KERNEL_DATA, PAGE_SIZE, PROT_RW)


def pkey_mprotect_kernel_page(u: User) -> None:
    if u.syscall(k.NR_PKEY_MPROTECT, layout.KERNEL_DATA, PAGE_SIZE, PROT_RW, 0) == 0:
        u.read(layout.KERNEL_SECRET, 8)


def mmap_fixed_over_kernel(u: User) -> None:
    result = u.syscall(k.NR_MMAP, layout.PERCPU, PAGE_SIZE, PROT_RW, MAP_FIXED)
    if result == layout.PERCPU:
        u.write(layout.PERCPU_USER_PKRU, struct.pack("<I", pk.PKRU_INIT))
        u.syscall(k.NR_GETPID)


def kernel_pointer_argument(u: User) -> None:
    u.syscall(k.NR_GETRANDOM, layout.PERCPU_USER_PKRU, 4)


def signal_handler_kernel_rights(u: User) -> None:
    handler = u.load_code(_read_secret)
    u.syscall(k.NR_RT_SIGACTION, k.SIGUSR1, handler, u.stop)
    tid = u.syscall(k.NR_GETTID)
    if tid is not None:
        u.syscall(k.NR_TKILL, tid, k.SIGUSR1)
        u.machine.run()


def forged_sigframe(u: User) -> None:
    payload = u.load_code(_read_secret)
    frame = u.mmap()
    regs = u.machine.regs.copy()
    regs.rip = payload
    regs[asm.RSP] = frame + PAGE_SIZE - 64
    data = sigframe.encode_frame(0, 0, regs, 0, xstate_bv=XSTATE_BV_WITHOUT_PKRU)
    u.write(frame, data)
    # The gate's call pushes its return address at frame, where rt_sigreturn looks.
    u.jump(u.stub, rax=k.NR_RT_SIGRETURN, rsp=frame + 8)


def pkey_set_kernel_key(u: User) -> None:
    u.syscall(k.NR_PKEY_SET, pk.KERNEL_PKEY, 0)
    if u.machine.current is not None:
        u.jump(u.load_code(_read_secret))


def other_thread_pkru(u: User) -> None:
    m = u.machine
    pkey = u.syscall(k.NR_PKEY_ALLOC, 0, 0)
    if pkey is None or pkey < 0:
        return
    private = u.mmap()
    u.syscall(k.NR_PKEY_MPROTECT, private, PAGE_SIZE, PROT_RW, pkey)
    me = m.current
    other = m.kernel.create_thread(rip=u.stop)
    # This thread gives up the key. The other thread keeps it and sets its
    # rights last, so the per-CPU slot contains its PKRU.
    u.syscall(k.NR_PKEY_SET, pkey, pk.PKEY_DISABLE_ACCESS)
    assert me is not None
    m.host.preempt(other.tid)
    u.syscall(k.NR_PKEY_SET, pkey, 0)
    m.host.preempt(me)
    if m.current == me:
        u.read(private, 8)


def gs_base_redirect(u: User) -> None:
    fake = u.mmap()
    # Forged per-CPU data: a kernel stack inside this user page, and the values
    # a GS-relative exit gate would need to return normally from arch_prctl
    # (the user RSP inside the gate and the thread's own user PKRU).
    user_rsp_in_gate = u.machine.regs[asm.RSP] - 8
    forged = struct.pack(
        "<QQI", fake + PAGE_SIZE - 64, user_rsp_in_gate, u.machine.thread.user_pkru
    )
    u.write(fake, forged)
    u.syscall(k.NR_ARCH_PRCTL, k.ARCH_SET_GS, fake)
    u.syscall(k.NR_GETPID)


def user_hypercall(u: User) -> None:
    u.push(u.stop)
    u.jump(
        layout.KERNEL_HYPERCALL_STUB, rax=HC_PAGER_UNBIND, rdi=layout.KERNEL_DATA, rsi=1
    )


def pager_ring_forge(u: User) -> None:
    entry = struct.pack("<IIQ", PAGER_UNBIND, 1, layout.KERNEL_DATA)
    if u.write(layout.PAGER_RING + RING_ENTRIES, entry):
        u.write(layout.PAGER_RING + RING_TAIL, struct.pack("<I", 1))
        u.mmap()  # the kernel's next request makes the host process the ring


ATTACKS: tuple[Attack, ...] = (
    Attack(
        "kernel-page-read",
        "kernel-pkey",
        "user code loads the kernel's secret from a kernel data page",
        kernel_page_read,
    ),
    Attack(
        "kernel-page-write",
        "kernel-pkey",
        "user code stores 0 into the per-CPU user-PKRU slot that the exit gate reads",
        kernel_page_write,
    ),
    Attack(
        "kernel-text-jump",
        "kernel-pkey",
        "user code jumps straight to the kernel's dispatcher, skipping the gate "
        "(PKU does not check instruction fetches)",
        kernel_text_jump,
    ),
    Attack(
        "entry-gate-wrpkru-jump",
        "gate-entry-check",
        "jump to the entry gate's WRPKRU with EAX = a PKRU of the attacker's choice "
        "that opens the kernel key",
        entry_gate_wrpkru_jump,
    ),
    Attack(
        "exit-gate-wrpkru-jump",
        "exit-pkru-check",
        "jump to the exit gate's WRPKRU with EAX = 0 and the gate's return address "
        "pointing at attacker code",
        exit_gate_wrpkru_jump,
    ),
    Attack(
        "wrpkru-in-user-code",
        "loader-scan",
        "load user code containing an aligned WRPKRU with EAX = 0",
        wrpkru_in_user_code,
    ),
    Attack(
        "wrpkru-unaligned",
        "scan-every-offset",
        "hide WRPKRU inside a mov immediate and jump into the middle of the "
        "instruction",
        wrpkru_unaligned,
    ),
    Attack(
        "wrpkru-across-instructions",
        "scan-every-offset",
        "split WRPKRU over two instructions (mov eax, 0x0F000000; add edi, ebp)",
        wrpkru_across_instructions,
    ),
    Attack(
        "wrpkru-across-pages",
        "scan-across-pages",
        "end one page with 0F and start the next with 01 EF",
        wrpkru_across_pages,
    ),
    Attack(
        "xrstor-in-user-code",
        "scan-xrstor",
        "XRSTOR a crafted XSAVE area whose XSTATE_BV lacks PKRU, loading PKRU's "
        "init value 0",
        xrstor_in_user_code,
    ),
    Attack(
        "xrstor-gate-crafted-state",
        "xrstor-gate-check",
        "jump to the kernel's XRSTOR with a crafted XSAVE area that loads a PKRU "
        "opening the kernel key",
        xrstor_gate_crafted_state,
    ),
    Attack(
        "jit-rwx-wrpkru",
        "wx-exclusive",
        "map memory writable and executable, write WRPKRU code, run it",
        jit_rwx_wrpkru,
    ),
    Attack(
        "jit-mprotect-wrpkru",
        "exec-rescan",
        "write WRPKRU code into writable memory, mprotect it to read-execute, run it",
        jit_mprotect_wrpkru,
    ),
    Attack(
        "mprotect-kernel-page",
        "kernel-range-check",
        "mprotect a kernel data page",
        mprotect_kernel_page,
    ),
    Attack(
        "pkey-mprotect-kernel-page",
        "kernel-range-check",
        "pkey_mprotect a kernel data page to key 0, then read it",
        pkey_mprotect_kernel_page,
    ),
    Attack(
        "mmap-fixed-over-kernel",
        "kernel-range-check",
        "mmap(MAP_FIXED) over the per-CPU page and fill it with a forged user PKRU",
        mmap_fixed_over_kernel,
    ),
    Attack(
        "kernel-pointer-argument",
        "access-ok",
        "pass the per-CPU user-PKRU slot as getrandom's buffer",
        kernel_pointer_argument,
    ),
    Attack(
        "signal-handler-kernel-rights",
        "return-via-checked-exit",
        "have a signal delivered and let the handler read kernel memory",
        signal_handler_kernel_rights,
    ),
    Attack(
        "forged-sigframe",
        "sigreturn-pkru",
        "rt_sigreturn on a forged frame whose XSAVE area yields PKRU 0",
        forged_sigframe,
        ("exit-pkru-check",),
    ),
    Attack(
        "pkey-set-kernel-key",
        "pkey-ownership",
        "pkey_set the kernel's protection key to full access",
        pkey_set_kernel_key,
        ("exit-pkru-check",),
    ),
    Attack(
        "other-thread-pkru",
        "pkru-context-switch",
        "deny this thread a key, let another thread that keeps the key run, "
        "switch back and read a page with that key",
        other_thread_pkru,
    ),
    Attack(
        "gs-base-redirect",
        "gate-fixed-percpu",
        "point GS at forged per-CPU data (kernel stack in user memory), then call "
        "the gate",
        gs_base_redirect,
    ),
    Attack(
        "user-hypercall",
        "host-hypercall-pkru",
        "jump to the kernel's hypercall stub and ask the host to unbind a kernel page",
        user_hypercall,
    ),
    Attack(
        "pager-ring-forge",
        "pager-ring-kernel-key",
        "write an unbind request for a kernel page into the Pager's request ring",
        pager_ring_forge,
    ),
)

ATTACKS_BY_NAME = {attack.name: attack for attack in ATTACKS}


def run_attack(attack: Attack, rules: frozenset[str] = ALL_RULES) -> AttackResult:
    """Run ``attack`` on a fresh machine with ``rules`` enabled."""
    machine = Machine(rules)
    attack.run(User(machine))
    enforced = sorted({name for name, _ in machine.events if name in RULES})
    return AttackResult(
        name=attack.name,
        rule=attack.rule,
        backstops=attack.backstops,
        description=attack.description,
        stopped=not machine.violations,
        violations=list(machine.violations),
        enforced=enforced,
    )


def run_suite(rules: frozenset[str] = ALL_RULES) -> list[AttackResult]:
    """Run every attack with ``rules`` enabled."""
    return [run_attack(attack, rules) for attack in ATTACKS]
