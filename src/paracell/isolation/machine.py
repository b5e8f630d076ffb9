"""The modelled vCPU, its threads, and the oracle that judges every step.

``Machine`` owns the address space, the one vCPU, the container kernel and
the host. It runs the current thread instruction by instruction and hands
control to the kernel's Python code when execution reaches kernel text.
It records a ``Violation`` whenever the ground truth disagrees with what the
mechanisms allowed. The ground truth is who owns a page and whether control
entered the kernel through a gate. The kinds are:

``user-accessed-kernel-page``
    A data access in user mode succeeded on a kernel-owned page.
``user-mode-with-kernel-rights``
    Code outside the gates ran in user mode with a PKRU that opens the kernel key.
``thread-pkru-mismatch``
    The kernel returned a thread to user mode with a PKRU other than the one
    it recorded for that thread.
``kernel-ran-with-foreign-pkru``
    Kernel code was entered with kernel rights but a PKRU other than the kernel value.
``kernel-stack-not-kernel-owned``
    Kernel code was entered on a stack that user code can write.
``kernel-page-changed-for-user``
    A user request made the kernel or host read, write, remap or unbind a
    kernel-owned page.
``pkru-writer-outside-gates``
    WRPKRU or XRSTOR changed PKRU at an address other than the gates' own.

User mode and kernel mode are the model's ground truth, not a CPU state. A
thread enters kernel mode when the entry gate (or the XRSTOR gate) executes
its jump into kernel text with a PKRU that opens the kernel key, or when the
host forwards an event. It returns to user mode when the exit gate returns or the host
performs an event return.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from paracell.isolation import asm, layout
from paracell.isolation import pkru as pk
from paracell.isolation.cpu import Cpu, CpuFault, Registers, Trap
from paracell.isolation.gates import build_gates
from paracell.isolation.memory import Access, AddressSpace, Owner, PageFault
from paracell.isolation.rules import ALL_RULES, validate_rules

log = logging.getLogger("paracell.isolation")

#: Steps after which ``run`` gives up; payloads and gate calls need far fewer.
DEFAULT_MAX_STEPS = 2000
#: Instructions the host lets a thread finish when it sits inside a gate at
#: preemption time; every gate is straight-line code shorter than this.
GATE_SETTLE_STEPS = 64

VIOLATION_KINDS = (
    "user-accessed-kernel-page",
    "user-mode-with-kernel-rights",
    "thread-pkru-mismatch",
    "kernel-ran-with-foreign-pkru",
    "kernel-stack-not-kernel-owned",
    "kernel-page-changed-for-user",
    "pkru-writer-outside-gates",
)

SIGNAL_FOR_VECTOR = {"#PF": 11, "#GP": 11, "#UD": 4, "#BP": 5}


class Mode(enum.Enum):
    USER = "user"
    KERNEL = "kernel"


@dataclass(frozen=True)
class Violation:
    """One breach of isolation that the oracle saw."""

    kind: str
    tid: int
    rip: int
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} (thread {self.tid}, rip {self.rip:#x}): {self.detail}"


@dataclass
class Thread:
    """A container thread: saved user context and the kernel's records about it."""

    tid: int
    regs: Registers
    #: The user PKRU the container kernel recorded for this thread.
    user_pkru: int
    mode: Mode = Mode.USER
    alive: bool = True
    pending_signals: list[int] = field(default_factory=list)
    #: Context waiting for the XRSTOR gate during rt_sigreturn.
    sigreturn_context: Registers | None = None


class Machine:
    """One container: address space, vCPU, threads, container kernel and host."""

    def __init__(self, rules: frozenset[str] = ALL_RULES) -> None:
        # Imported here because kernel and host import this module's types.
        from paracell.isolation.host import Host
        from paracell.isolation.kernel import Kernel

        self.rules = validate_rules(rules)
        self.memory = AddressSpace()
        self.gates = build_gates(self.rules)
        self.regs = Registers()
        self.cpu = Cpu(self, self.regs)
        self.threads: dict[int, Thread] = {}
        self.current: int | None = None
        self.violations: list[Violation] = []
        #: Enforcement and notable events, as (name, detail); a rule's name
        #: appears when that rule stopped something.
        self.events: list[tuple[str, str]] = []
        self.container_alive = True
        self.stop_addresses: set[int] = set()
        self._seen_violations: set[tuple[str, int, int]] = set()
        self._exec_rip = 0
        self._prev_rip = 0
        self._came_from = 0
        self.host = Host(self)
        self.kernel = Kernel(self)
        self.kernel.boot()

    # -- state -------------------------------------------------------------

    @property
    def thread(self) -> Thread:
        """The thread on the vCPU; raises ``LookupError`` when none runs."""
        if self.current is None:
            raise LookupError("no thread is running")
        return self.threads[self.current]

    def enabled(self, rule: str) -> bool:
        return rule in self.rules

    def note(self, name: str, detail: str) -> None:
        self.events.append((name, detail))
        log.debug("%s: %s", name, detail)

    def violate(self, kind: str, detail: str) -> None:
        tid = self.current if self.current is not None else 0
        key = (kind, tid, self._exec_rip)
        if key in self._seen_violations:
            return
        self._seen_violations.add(key)
        violation = Violation(kind, tid, self._exec_rip, detail)
        self.violations.append(violation)
        log.debug("violation: %s", violation)

    def on_gate_page(self, address: int) -> bool:
        page = self.memory.page(address)
        return page is not None and page.owner is Owner.GATE

    # -- the memory port the CPU and the kernel use -------------------------

    def fetch(self, address: int) -> int:
        self.memory.check(address, 1, Access.FETCH, self.regs.pkru)
        return self.memory.read_raw(address, 1)[0]

    def load(self, address: int, size: int) -> bytes:
        data = self.memory.read(address, size, self.regs.pkru)
        self._observe(address, size, Access.READ)
        return data

    def store(self, address: int, data: bytes) -> None:
        self.memory.write(address, data, self.regs.pkru)
        self._observe(address, len(data), Access.WRITE)

    def _observe(self, address: int, size: int, access: Access) -> None:
        # Accesses by gate instructions are the gates' own business; everything
        # else that runs in user mode must never reach a kernel-owned page.
        if self.current is None or self.thread.mode is not Mode.USER:
            return
        if self.on_gate_page(self._exec_rip):
            return
        owners = self.memory.owners(address, size)
        kernel_owners = sorted(o.value for o in owners if o.kernel_owned)
        if kernel_owners:
            self.violate(
                "user-accessed-kernel-page",
                f"user-mode {access.value} of {address:#x} "
                f"({', '.join(kernel_owners)} page) "
                f"succeeded with PKRU {pk.describe(self.regs.pkru)}",
            )

    # -- running -------------------------------------------------------------

    def run(self, max_steps: int = DEFAULT_MAX_STEPS) -> str:
        """Run the current thread; return why the run ended.

        The result is ``stop`` (RIP reached a stop address in user mode),
        ``switched`` (another thread is now current), ``no-thread`` (none is
        runnable) or ``steps`` (``max_steps`` instructions ran).
        """
        start_tid = self.current
        for _ in range(max_steps):
            if self.current is None or not self.container_alive:
                return "no-thread"
            if self.current != start_tid:
                return "switched"
            if self.regs.rip in self.stop_addresses and self.thread.mode is Mode.USER:
                return "stop"
            self.step()
        return "steps"

    def step(self) -> None:
        """Execute one instruction, or one piece of kernel code, of the thread."""
        rip = self.regs.rip
        if rip == layout.KERNEL_DISPATCH:
            self._enter_kernel_text(self.kernel.syscall_entry)
            return
        if rip == layout.KERNEL_XRSTOR_CONTINUE:
            self._enter_kernel_text(self.kernel.xrstor_continue)
            return

        thread = self.thread
        if thread.mode is Mode.USER and not self.on_gate_page(rip):
            self._check_user_rights(thread)
        self._exec_rip = rip
        self._came_from = self._prev_rip
        pkru_before = self.regs.pkru
        try:
            trap = self.cpu.step()
        except CpuFault as fault:
            self._prev_rip = rip
            self.handle_fault(fault)
            return
        except PageFault as fault:
            self._prev_rip = rip
            self.handle_fault(CpuFault("#PF", rip, str(fault), fault.address, fault))
            return
        self._prev_rip = rip
        if self.regs.pkru != pkru_before and rip not in self.gates.sanctioned_writers:
            self.violate(
                "pkru-writer-outside-gates",
                f"PKRU changed from {pkru_before:#010x} to {self.regs.pkru:#010x} "
                f"by an instruction at {rip:#x}",
            )
        if trap is not None:
            self._trap(trap)
        elif rip == self.gates.exit_ret and thread.mode is Mode.KERNEL:
            thread.mode = Mode.USER
            self.check_returned_pkru(thread, self.regs.pkru)
        elif rip in (self.gates.entry_dispatch, self.gates.xrstor_dispatch):
            self._through_gate(thread, rip)

    def user_access(self, address: int, size: int, data: bytes | None) -> bytes | None:
        """Read ``size`` bytes or write ``data`` as user code at the current RIP.

        Returns the bytes read (``b""`` for a write), or None after a fault,
        which is handled as the instruction's fault would be.
        """
        if self.current is None:
            return None
        rip = self.regs.rip
        if not self.on_gate_page(rip):
            self._check_user_rights(self.thread)
        self._exec_rip = rip
        try:
            if data is None:
                return self.load(address, size)
            self.store(address, data)
            return b""
        except PageFault as fault:
            self.handle_fault(CpuFault("#PF", rip, str(fault), fault.address, fault))
            return None

    def settle(self) -> None:
        """Let the thread leave the gate page, as the host does before preempting."""
        for _ in range(GATE_SETTLE_STEPS):
            if self.current is None:
                return
            thread = self.thread
            if thread.mode is Mode.USER and not self.on_gate_page(self.regs.rip):
                return
            self.step()
        if self.current is not None:
            self.kill_thread(
                self.current, "did not leave a gate within the settle budget"
            )

    def _check_user_rights(self, thread: Thread) -> None:
        pkru = self.regs.pkru
        if pk.allows_kernel(pkru):
            self.violate(
                "user-mode-with-kernel-rights",
                f"user code at {self.regs.rip:#x} runs with PKRU {pk.describe(pkru)}",
            )

    def check_returned_pkru(self, thread: Thread, pkru: int) -> None:
        """Record a violation if a kernel return gives ``thread`` a PKRU not its own.

        User code can itself install any PKRU that keeps the kernel key closed,
        by jumping to the exit gate's WRPKRU, so only the kernel's own returns
        are held to the thread's recorded value.
        """
        if pkru != thread.user_pkru and not pk.allows_kernel(pkru):
            self.violate(
                "thread-pkru-mismatch",
                f"thread {thread.tid} returned to user mode with PKRU {pkru:#010x}, "
                f"its recorded PKRU is {thread.user_pkru:#010x}",
            )

    def _through_gate(self, thread: Thread, jump: int) -> None:
        # The gate's final jump into kernel text enters kernel mode only with a
        # PKRU that opens the kernel key. Otherwise the kernel code that follows
        # runs with user rights.
        if thread.mode is not Mode.USER or not pk.allows_kernel(self.regs.pkru):
            return
        thread.mode = Mode.KERNEL
        if self.regs.pkru != pk.KERNEL_PKRU:
            self.violate(
                "kernel-ran-with-foreign-pkru",
                f"gate jump at {jump:#x} entered the kernel with PKRU "
                f"{self.regs.pkru:#010x}, not the kernel value {pk.KERNEL_PKRU:#010x}",
            )
        if jump == self.gates.entry_dispatch:
            self._check_kernel_stack()

    def _enter_kernel_text(self, handler: Callable[[], None]) -> None:
        thread = self.thread
        rip = self.regs.rip
        if thread.mode is Mode.USER:
            # Reached without passing a gate: the kernel code runs as user code.
            self._check_user_rights(thread)
        self._exec_rip = rip
        self._prev_rip = rip
        try:
            handler()
        except PageFault as fault:
            self.handle_fault(CpuFault("#PF", rip, str(fault), fault.address, fault))

    def _check_kernel_stack(self) -> None:
        rsp = self.regs[asm.RSP]
        page = self.memory.page(rsp - 8)
        if page is None or not page.owner.kernel_owned:
            self.violate(
                "kernel-stack-not-kernel-owned",
                f"kernel entered with RSP {rsp:#x}, which is not on a kernel page",
            )

    def _trap(self, trap: Trap) -> None:
        if trap.kind == "syscall":
            self.host.redirect_syscall(trap)
        else:
            self.host.vmcall(trap)

    # -- faults and thread lifetime -------------------------------------------

    def handle_fault(self, fault: CpuFault) -> None:
        """Route a fault: kill in a gate, oops in kernel mode, else signal."""
        if self.current is None:
            return
        thread = self.thread
        self._attribute_fault(fault)
        if self.on_gate_page(fault.rip):
            reason = (
                "gate check failed"
                if fault.rip == self.gates.abort
                else "fault in gate"
            )
            self.note("gate-abort", f"{reason}: {fault}")
            self.kill_thread(thread.tid, f"{reason} ({fault})")
        elif thread.mode is Mode.KERNEL:
            self.note("kernel-oops", str(fault))
            self.kill_container(f"container kernel faulted: {fault}")
        else:
            self.host.forward_fault(thread, SIGNAL_FOR_VECTOR[fault.vector], fault)

    def _attribute_fault(self, fault: CpuFault) -> None:
        # Log which rule caused the fault, so attack results can name it.
        if fault.rip == self.gates.abort:
            rule = self.gates.check_branches.get(self._came_from)
            if rule is not None:
                self.note(rule, f"gate check at {self._came_from:#x} aborted")
            return
        page_fault = fault.page_fault
        if isinstance(page_fault, PageFault) and page_fault.reason == "pkey":
            page = self.memory.page(page_fault.address)
            if page is not None and page.owner in (Owner.PAGER_RING, Owner.PAGER_DONE):
                self.note("pager-ring-kernel-key", str(page_fault))
            elif page is not None and page.owner.kernel_owned:
                self.note("kernel-pkey", str(page_fault))

    def kill_thread(self, tid: int, reason: str) -> None:
        """Terminate ``tid``; if it was running, schedule the next runnable thread."""
        thread = self.threads.get(tid)
        if thread is None or not thread.alive:
            return
        thread.alive = False
        self.note("thread-killed", f"thread {tid}: {reason}")
        if self.current == tid:
            self.current = None
            self.kernel.schedule_after_exit()

    def kill_container(self, reason: str) -> None:
        self.note("container-killed", reason)
        self.container_alive = False
        for thread in self.threads.values():
            thread.alive = False
        self.current = None

    def runnable(self) -> list[int]:
        return sorted(t.tid for t in self.threads.values() if t.alive)

    def load_context(self, thread: Thread, ctx: Registers) -> None:
        """Put ``thread`` on the vCPU with the registers of ``ctx`` (PKRU untouched)."""
        self.current = thread.tid
        self.regs.gpr[:] = ctx.gpr
        self.regs.rip = ctx.rip
        self.regs.zf = ctx.zf
        self.regs.gs_base = ctx.gs_base
