"""The container kernel: system-call dispatch, signals, threads and boot.

It runs as Python code reached from kernel text, but every access it makes to
the address space goes through the same PKU-checked path as CPU
instructions, with whatever PKRU the vCPU holds. Kernel code entered without
the kernel PKRU (a user jump into kernel text) therefore faults on its first
access, exactly as the real code would. Memory-management calls live in
``paracell.isolation.mm``.

The system-call ABI of the gate: number in RAX, arguments in RDI, RSI, R10,
R8; the result comes back in RAX, and RCX, RDX and R11 are clobbered. RDX
cannot carry an argument because WRPKRU needs EDX = 0.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from paracell.errors import ModelError
from paracell.isolation import asm, layout, sigframe
from paracell.isolation import pkru as pk
from paracell.isolation.cpu import XCR0, XFEATURE_PKRU, Registers
from paracell.isolation.gates import build_kernel_text
from paracell.isolation.host import (
    RING_ENTRIES,
    RING_ENTRY_BYTES,
    RING_SLOTS,
    RING_TAIL,
)
from paracell.isolation.loader import find_forbidden_writers
from paracell.isolation.machine import Machine, Mode, Thread
from paracell.isolation.memory import PAGE_SIZE, Owner, Page, PageFault, Prot
from paracell.isolation.mm import MemoryManager

# System-call numbers: Linux x86-64 numbers where Linux has the call.
NR_MMAP = 9
NR_MPROTECT = 10
NR_MUNMAP = 11
NR_RT_SIGACTION = 13
NR_RT_SIGRETURN = 15
NR_SCHED_YIELD = 24
NR_GETPID = 39
NR_EXIT = 60
NR_ARCH_PRCTL = 158
NR_GETTID = 186
NR_TKILL = 200
NR_GETRANDOM = 318
NR_PKEY_MPROTECT = 329
NR_PKEY_ALLOC = 330
NR_PKEY_FREE = 331
#: Linux has no pkey_set system call: glibc's pkey_set(3) runs WRPKRU in user
#: space, which the loader rejects. A ParaCell kernel has to offer this call.
NR_PKEY_SET = 1000

ARCH_SET_GS = 0x1001
ARCH_GET_GS = 0x1004

ESRCH = 3
EFAULT = 14
EINVAL = 22
ENOSYS = 38

SIGILL = 4
SIGTRAP = 5
SIGKILL = 9
SIGUSR1 = 10
SIGSEGV = 11
SIGSTOP = 19
NR_SIGNALS = 64

MAX_GETRANDOM_BYTES = PAGE_SIZE


class Kernel:
    """Container kernel state and entry points."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.mm = MemoryManager(self)
        #: Signal number -> (handler address, restorer address).
        self.sigactions: dict[int, tuple[int, int]] = {}
        self.next_tid = 1
        self._random_counter = 0
        self._user_rsp = 0
        self.syscalls: dict[int, Callable[..., int | None]] = {
            NR_MMAP: self.mm.mmap,
            NR_MPROTECT: self.mm.mprotect,
            NR_MUNMAP: self.mm.munmap,
            NR_PKEY_MPROTECT: self.mm.pkey_mprotect,
            NR_PKEY_ALLOC: self.mm.pkey_alloc,
            NR_PKEY_FREE: self.mm.pkey_free,
            NR_PKEY_SET: self.mm.pkey_set,
            NR_RT_SIGACTION: self.rt_sigaction,
            NR_RT_SIGRETURN: self.rt_sigreturn,
            NR_SCHED_YIELD: self.sched_yield,
            NR_GETPID: lambda *_: 1,
            NR_GETTID: lambda *_: self.machine.thread.tid,
            NR_EXIT: self.exit,
            NR_ARCH_PRCTL: self.arch_prctl,
            NR_TKILL: self.tkill,
            NR_GETRANDOM: self.getrandom,
        }

    # -- boot -----------------------------------------------------------------

    def boot(self) -> None:
        """Map the kernel's pages, check its text, and start thread 1."""
        m = self.machine
        kernel_key = pk.KERNEL_PKEY if m.enabled("kernel-pkey") else 0
        pager_key = pk.KERNEL_PKEY if m.enabled("pager-ring-kernel-key") else 0
        rx, rw = Prot.READ | Prot.EXEC, Prot.READ | Prot.WRITE
        self._map_kernel(layout.GATE_PAGE, rx, kernel_key, Owner.GATE, m.gates.code)
        self._map_kernel(
            layout.KERNEL_TEXT, rx, kernel_key, Owner.KERNEL, build_kernel_text()
        )
        self._map_kernel(layout.PERCPU, rw, kernel_key, Owner.KERNEL)
        secret = struct.pack("<Q", layout.KERNEL_SECRET_VALUE)
        self._map_kernel(layout.KERNEL_DATA, rw, kernel_key, Owner.KERNEL, secret)
        self._map_kernel(layout.SIGRETURN_SCRATCH, rw, kernel_key, Owner.KERNEL)
        self._map_kernel(layout.PAGER_RING, rw, pager_key, Owner.PAGER_RING)
        # The host writes completions through its own mapping; in the container
        # the page is read-only, so even the container kernel cannot forge them.
        done_prot = Prot.READ if m.enabled("pager-ring-kernel-key") else rw
        self._map_kernel(layout.PAGER_DONE, done_prot, pager_key, Owner.PAGER_DONE)
        self._check_kernel_text()
        thread = self.create_thread(rip=0, user_pkru=pk.PKRU_LINUX_DEFAULT)
        m.load_context(thread, thread.regs)
        thread.mode = Mode.KERNEL
        m.regs.pkru = pk.KERNEL_PKRU
        self._write_percpu(thread)
        # The first entry to user mode; the host performs it at container start.
        m.regs.pkru = thread.user_pkru
        thread.mode = Mode.USER

    def _map_kernel(
        self, address: int, prot: Prot, pkey: int, owner: Owner, data: bytes = b""
    ) -> None:
        page = Page(prot=prot, pkey=pkey, owner=owner)
        page.data[: len(data)] = data
        self.machine.memory.map_page(address, page)

    def _check_kernel_text(self) -> None:
        # The instruction-fetch rule rests on this: PKU does not check fetches, so
        # user code may jump anywhere in kernel text, and the only PKRU writers
        # it can reach there must be the gates' checked ones.
        m = self.machine
        full_scan = frozenset(
            {"loader-scan", "scan-every-offset", "scan-across-pages", "scan-xrstor"}
        )
        for base in (layout.GATE_PAGE, layout.KERNEL_TEXT):
            stray = find_forbidden_writers(
                m.memory, base, base + PAGE_SIZE, m.gates.sanctioned_writers, full_scan
            )
            if stray:
                raise ModelError(
                    f"kernel text at {base:#x} contains PKRU writers outside gates: "
                    + ", ".join(f"{a:#x}" for a in stray)
                )

    def create_thread(self, rip: int, user_pkru: int | None = None) -> Thread:
        """Create a thread with its own user and kernel stacks; it is not scheduled."""
        m = self.machine
        tid = self.next_tid
        self.next_tid += 1
        kernel_key = pk.KERNEL_PKEY if m.enabled("kernel-pkey") else 0
        self._map_kernel(
            layout.kernel_stack_top(tid) - PAGE_SIZE,
            Prot.READ | Prot.WRITE,
            kernel_key,
            Owner.KERNEL,
        )
        stack_top = layout.user_stack_top(tid)
        for i in range(1, layout.USER_STACK_PAGES + 1):
            m.memory.map_page(
                stack_top - i * PAGE_SIZE,
                Page(prot=Prot.READ | Prot.WRITE, pkey=0, owner=Owner.USER),
            )
        regs = Registers(rip=rip, gs_base=layout.PERCPU)
        regs[asm.RSP] = stack_top - 64
        if user_pkru is None:
            user_pkru = (
                m.thread.user_pkru if m.current is not None else pk.PKRU_LINUX_DEFAULT
            )
        thread = Thread(tid=tid, regs=regs, user_pkru=user_pkru)
        m.threads[tid] = thread
        return thread

    # -- kernel memory access ---------------------------------------------------

    def load(self, address: int, size: int) -> bytes:
        return self.machine.load(address, size)

    def store(self, address: int, data: bytes) -> None:
        self.machine.store(address, data)

    def load_u64(self, address: int) -> int:
        return int.from_bytes(self.load(address, 8), "little")

    def store_u64(self, address: int, value: int) -> None:
        self.store(address, (value & (2**64 - 1)).to_bytes(8, "little"))

    def _write_percpu(self, thread: Thread, *, include_pkru: bool = True) -> None:
        self.store_u64(layout.PERCPU_CURRENT_TID, thread.tid)
        self.store_u64(layout.PERCPU_KERNEL_STACK, layout.kernel_stack_top(thread.tid))
        if include_pkru:
            self.store(layout.PERCPU_USER_PKRU, struct.pack("<I", thread.user_pkru))

    def percpu_user_pkru(self) -> int:
        return int.from_bytes(self.load(layout.PERCPU_USER_PKRU, 4), "little")

    def set_user_pkru(self, thread: Thread, value: int) -> None:
        """Record ``value`` as the thread's user PKRU; the next exit installs it."""
        thread.user_pkru = value & pk.PKRU_MASK
        if self.machine.current == thread.tid:
            self.store(layout.PERCPU_USER_PKRU, struct.pack("<I", thread.user_pkru))

    def copy_to_user(self, address: int, data: bytes) -> int:
        """Copy ``data`` to user memory; return 0 or -EFAULT."""
        return self._user_copy(address, len(data), data)[0]

    def copy_from_user(self, address: int, size: int) -> tuple[int, bytes]:
        """Copy ``size`` bytes from user memory; return (0, data) or (-EFAULT, b"")."""
        return self._user_copy(address, size, None)

    def _user_copy(
        self, address: int, size: int, data: bytes | None
    ) -> tuple[int, bytes]:
        m = self.machine
        if m.enabled("access-ok") and not layout.in_user_range(address, size):
            m.note("access-ok", f"user pointer {address:#x}+{size} rejected")
            return -EFAULT, b""
        try:
            if data is None:
                result = self.load(address, size)
            else:
                self.store(address, data)
                result = b""
        except PageFault:
            return -EFAULT, b""
        kernel_owners = sorted(
            o.value for o in m.memory.owners(address, size) if o.kernel_owned
        )
        if kernel_owners:
            verb = "read" if data is None else "wrote"
            m.violate(
                "kernel-page-changed-for-user",
                f"kernel {verb} {', '.join(kernel_owners)} memory at {address:#x} "
                "through a user pointer",
            )
        return 0, result

    # -- entry points from kernel text and from the host ------------------------

    def syscall_entry(self) -> None:
        """Kernel code at the dispatcher: run the system call in R11."""
        m = self.machine
        regs = m.regs
        tid = self.load_u64(layout.PERCPU_CURRENT_TID)
        self._user_rsp = self.load_u64(layout.PERCPU_USER_RSP)
        thread = m.thread
        if tid != thread.tid:
            # Only a forged per-CPU page gets here (rules switched off).
            m.note(
                "kernel-oops",
                f"per-CPU data names thread {tid}, vCPU runs {thread.tid}",
            )
            m.kill_container("container kernel found corrupt per-CPU data")
            return
        nr = regs[asm.R11]
        args = (regs[asm.RDI], regs[asm.RSI], regs[asm.R10], regs[asm.R8])
        handler = self.syscalls.get(nr)
        result = handler(*args) if handler is not None else -ENOSYS
        if result is None or m.current != thread.tid or not thread.alive:
            # The call switched threads, killed the caller or set up its own return.
            return
        self.syscall_return(thread, result)

    def syscall_return(self, thread: Thread, result: int) -> None:
        """Return ``result`` through the exit gate, or the slow path for signals."""
        m = self.machine
        if not thread.pending_signals:
            m.regs[asm.R11] = result & (2**64 - 1)
            m.regs.rip = m.gates.exit
            return
        ctx = self._syscall_return_context(thread, result)
        if ctx is not None:
            self.return_to_user(thread, ctx)

    def _syscall_return_context(self, thread: Thread, result: int) -> Registers | None:
        # The context the exit gate would have produced: popped return address,
        # result in RAX, RCX/RDX/R11 clobbered.
        status, raw = self.copy_from_user(self._user_rsp, 8)
        if status:
            self.machine.kill_thread(
                thread.tid, "return address on the user stack unreadable"
            )
            return None
        ctx = self.machine.regs.copy()
        ctx.rip = int.from_bytes(raw, "little")
        ctx[asm.RSP] = self._user_rsp + 8
        ctx[asm.RAX] = result
        for reg in (asm.RCX, asm.RDX, asm.R11):
            ctx[reg] = 0
        return ctx

    def return_to_user(self, thread: Thread, ctx: Registers) -> None:
        """Deliver pending signals, then resume ``thread`` at ``ctx`` in user mode."""
        m = self.machine
        while thread.pending_signals:
            signo = thread.pending_signals.pop(0)
            handled = self._setup_signal(thread, signo, ctx)
            if handled is None:
                return
            ctx = handled
        user_pkru = self.percpu_user_pkru()
        if m.enabled("return-via-checked-exit"):
            m.host.eretu(thread, ctx, user_pkru)
        else:
            # A plain jump: user code continues with whatever PKRU the kernel had.
            m.load_context(thread, ctx)
            thread.mode = Mode.USER

    def deliver_fault(self, thread: Thread, signo: int, ctx: Registers) -> None:
        """Host-forwarded user fault: deliver ``signo`` at the faulting instruction."""
        self.load_u64(
            layout.PERCPU_CURRENT_TID
        )  # the kernel's first access, as on entry
        thread.pending_signals.insert(0, signo)
        self.return_to_user(thread, ctx)

    def timer_switch(
        self, thread: Thread, interrupted: Registers, next_tid: int
    ) -> None:
        """Host-forwarded timer event: save the interrupted context and switch."""
        target = self.machine.threads.get(next_tid)
        if target is None or not target.alive:
            self.return_to_user(thread, interrupted)
            return
        self.switch_to(thread, interrupted, target)

    # -- signals ----------------------------------------------------------------

    def _setup_signal(
        self, thread: Thread, signo: int, ctx: Registers
    ) -> Registers | None:
        handler, restorer = self.sigactions.get(signo, (0, 0))
        if handler == 0 or signo == SIGKILL:
            self.machine.kill_thread(thread.tid, f"signal {signo} (default action)")
            return None
        frame = sigframe.frame_address(ctx[asm.RSP])
        data = sigframe.encode_frame(restorer, signo, ctx, thread.user_pkru)
        if self.copy_to_user(frame, data):
            self.machine.kill_thread(thread.tid, f"signal {signo}: frame not writable")
            return None
        handler_ctx = ctx.copy()
        handler_ctx.rip = handler
        handler_ctx[asm.RSP] = frame
        handler_ctx[asm.RDI] = signo
        handler_ctx[asm.RSI] = frame
        return handler_ctx

    def rt_sigaction(self, signo: int, handler: int, restorer: int, *_: int) -> int:
        if not 1 <= signo <= NR_SIGNALS or signo in (SIGKILL, SIGSTOP):
            return -EINVAL
        self.sigactions[signo] = (handler, restorer)
        return 0

    def tkill(self, tid: int, signo: int, *_: int) -> int:
        target = self.machine.threads.get(tid)
        if target is None or not target.alive:
            return -ESRCH
        if not 0 <= signo <= NR_SIGNALS:
            return -EINVAL
        if signo == SIGKILL:
            self.machine.kill_thread(tid, "SIGKILL")
        elif signo:
            target.pending_signals.append(signo)
        return 0

    def rt_sigreturn(self, *_: int) -> int | None:
        """Restore the context in the frame at the user stack pointer.

        The frame is copied into kernel memory once, so the checks and the
        restore see the same bytes. The XRSTOR gate restores the FPU state with
        PKRU left out of the requested features. The thread keeps the user PKRU
        the kernel recorded (rule sigreturn-pkru). Without that rule the kernel
        behaves as Linux does and takes PKRU from the frame.
        """
        m = self.machine
        thread = m.thread
        status, frame = self.copy_from_user(self._user_rsp, sigframe.FRAME_BYTES)
        if status:
            m.kill_thread(thread.tid, "rt_sigreturn: frame unreadable")
            return None
        header = sigframe.decode_xsave_header(frame)
        if not header.valid:
            m.kill_thread(thread.tid, "rt_sigreturn: invalid XSAVE header")
            return None
        self.store(layout.SIGRETURN_SCRATCH, frame)
        ctx = sigframe.decode_registers(frame)
        ctx.gs_base = m.regs.gs_base
        frame_pkru = sigframe.decode_pkru(frame)
        if not m.enabled("sigreturn-pkru"):
            self.set_user_pkru(thread, frame_pkru)
        elif frame_pkru != thread.user_pkru:
            m.note("sigreturn-pkru", f"frame PKRU {frame_pkru:#010x} ignored")
        thread.sigreturn_context = ctx
        m.regs[asm.RDI] = layout.SIGRETURN_SCRATCH + sigframe.XSAVE_OFFSET
        m.regs[asm.RAX] = XCR0 & ~XFEATURE_PKRU
        m.regs[asm.RDX] = 0
        m.regs.rip = m.gates.xrstor
        return None

    def xrstor_continue(self) -> None:
        """Kernel code after the XRSTOR gate: finish rt_sigreturn."""
        m = self.machine
        self.load_u64(layout.PERCPU_CURRENT_TID)
        thread = m.thread
        ctx = thread.sigreturn_context
        thread.sigreturn_context = None
        if ctx is None:
            m.kill_thread(
                thread.tid, "XRSTOR gate reached without a pending rt_sigreturn"
            )
            return
        self.return_to_user(thread, ctx)

    # -- threads ----------------------------------------------------------------

    def switch_to(self, current: Thread, saved: Registers, target: Thread) -> None:
        """Save ``current`` at ``saved`` and resume ``target`` in user mode."""
        m = self.machine
        current.regs = saved
        m.current = target.tid
        # The incoming thread resumes from inside the kernel until the event return.
        target.mode = Mode.KERNEL
        self._write_percpu(target, include_pkru=m.enabled("pkru-context-switch"))
        self.return_to_user(target, target.regs)

    def sched_yield(self, *_: int) -> int | None:
        m = self.machine
        thread = m.thread
        others = [tid for tid in m.runnable() if tid != thread.tid]
        if not others:
            return 0
        after = [tid for tid in others if tid > thread.tid]
        target = m.threads[(after or others)[0]]
        saved = self._syscall_return_context(thread, 0)
        if saved is None:
            return None
        self.switch_to(thread, saved, target)
        return None

    def exit(self, *_: int) -> None:
        self.machine.kill_thread(self.machine.thread.tid, "exit")

    def schedule_after_exit(self) -> None:
        """Put the next runnable thread on the vCPU after the running one died."""
        m = self.machine
        runnable = m.runnable()
        if not runnable or not m.container_alive:
            return
        target = m.threads[runnable[0]]
        m.current = target.tid
        m.host.enter_kernel(target)
        self._write_percpu(target, include_pkru=m.enabled("pkru-context-switch"))
        self.return_to_user(target, target.regs)

    # -- other calls ------------------------------------------------------------

    def arch_prctl(self, code: int, address: int, *_: int) -> int:
        m = self.machine
        if code == ARCH_SET_GS:
            m.regs.gs_base = address
            return 0
        if code == ARCH_GET_GS:
            return self.copy_to_user(address, struct.pack("<Q", m.regs.gs_base))
        return -EINVAL

    def getrandom(self, address: int, size: int, *_: int) -> int:
        if size > MAX_GETRANDOM_BYTES:
            return -EINVAL
        data = bytearray()
        while len(data) < size:
            self._random_counter += 1
            data += (
                self._random_counter * 0x9E37_79B9_7F4A_7C15 & (2**64 - 1)
            ).to_bytes(8, "little")
        status = self.copy_to_user(address, bytes(data[:size]))
        return status or size

    def pager_request(self, op: int, address: int, nr_pages: int) -> None:
        """Append a request to the Pager ring and kick the host."""
        tail = int.from_bytes(self.load(layout.PAGER_RING + RING_TAIL, 4), "little")
        slot = layout.PAGER_RING + RING_ENTRIES + (tail % RING_SLOTS) * RING_ENTRY_BYTES
        self.store(slot, struct.pack("<IIQ", op, nr_pages, address))
        self.store(
            layout.PAGER_RING + RING_TAIL, struct.pack("<I", (tail + 1) & 0xFFFF_FFFF)
        )
        if self.machine.host.caller_is_kernel():
            self.machine.host.process_ring()
        else:
            self.machine.note(
                "host-hypercall-pkru", "pager kick without the kernel PKRU ignored"
            )
