"""The host side: event forwarding, hypercalls and the Pager.

The host owns the vCPU state. It forwards user faults and timer events into
the container kernel by setting the vCPU state directly (kernel PKRU, kernel
mode) and performs the event return (``eretu``) that the kernel uses for
every slow-path return to user mode. It serves hypercalls, and it processes
the Pager's request ring, validating each request because it cannot tell
kernel pages from user pages.
"""

from __future__ import annotations

import struct

from paracell.isolation import asm, layout
from paracell.isolation import pkru as pk
from paracell.isolation.cpu import CpuFault, Registers, Trap
from paracell.isolation.machine import Machine, Mode, Thread
from paracell.isolation.memory import PAGE_SIZE, Owner, PageFault

HC_PAGER_KICK = 1
HC_PAGER_UNBIND = 2

#: Pager ring layout: head (host's consumer index) at 0, tail (kernel's
#: producer index) at 4, then 16-byte entries of (op u32, nr_pages u32, address u64).
RING_HEAD = 0
RING_TAIL = 4
RING_ENTRIES = 64
RING_ENTRY_BYTES = 16
RING_SLOTS = (PAGE_SIZE - RING_ENTRIES) // RING_ENTRY_BYTES
PAGER_BIND = 1
PAGER_UNBIND = 2
#: Largest request the host accepts, in pages.
PAGER_MAX_PAGES = 64

ENOSYS = 38
EINVAL = 22


class Host:
    """Event forwarding, event return, hypercalls and the Pager backend."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.pages_bound = 0
        self.pages_unbound = 0
        self.requests_rejected = 0

    # -- events into the container kernel ------------------------------------

    def enter_kernel(self, thread: Thread) -> None:
        """Switch the vCPU to the container kernel, as for any forwarded event."""
        m = self.machine
        thread.mode = Mode.KERNEL
        m.regs.pkru = pk.KERNEL_PKRU
        m.regs[asm.RSP] = layout.kernel_stack_top(thread.tid)
        m._exec_rip = layout.KERNEL_DISPATCH

    def forward_fault(self, thread: Thread, signo: int, fault: CpuFault) -> None:
        """Deliver a user-mode fault to the container kernel as signal ``signo``."""
        m = self.machine
        interrupted = m.regs.copy()
        interrupted.rip = fault.rip
        self.enter_kernel(thread)
        m.note("fault-forwarded", f"thread {thread.tid}: {fault} -> signal {signo}")
        m.kernel.deliver_fault(thread, signo, interrupted)

    def preempt(self, next_tid: int) -> None:
        """Interrupt the running thread with a timer event that runs ``next_tid``."""
        m = self.machine
        m.settle()
        if m.current is None:
            return
        thread = m.thread
        interrupted = m.regs.copy()
        self.enter_kernel(thread)
        m.kernel.timer_switch(thread, interrupted, next_tid)

    def redirect_syscall(self, trap: Trap) -> None:
        """Send a SYSCALL instruction to the entry gate, as if the user called it."""
        m = self.machine
        rsp = (m.regs[asm.RSP] - 8) & ((1 << 64) - 1)
        try:
            m.store(rsp, trap.next_rip.to_bytes(8, "little"))
        except PageFault as fault:
            m.handle_fault(CpuFault("#PF", trap.rip, str(fault), fault.address, fault))
            return
        m.regs[asm.RSP] = rsp
        m.regs.rip = m.gates.entry

    # -- hypercalls -------------------------------------------------------------

    def caller_is_kernel(self) -> bool:
        """Return whether the vCPU may make a hypercall now.

        With host-hypercall-pkru the host identifies the container kernel by
        its PKRU, since both share ring 3 and one address space.
        """
        if not self.machine.enabled("host-hypercall-pkru"):
            return True
        return self.machine.regs.pkru == pk.KERNEL_PKRU

    def vmcall(self, trap: Trap) -> None:
        """Serve a VMCALL executed by the CPU."""
        m = self.machine
        if not self.caller_is_kernel():
            m.note(
                "host-hypercall-pkru",
                f"hypercall at {trap.rip:#x} without the kernel PKRU",
            )
            m.handle_fault(CpuFault("#UD", trap.rip, "hypercall from user rights"))
            return
        nr = m.regs[asm.RAX]
        if nr == HC_PAGER_KICK:
            result = self.process_ring()
        elif nr == HC_PAGER_UNBIND:
            result = self.unbind(m.regs[asm.RDI], m.regs[asm.RSI])
        else:
            result = -ENOSYS
        m.regs[asm.RAX] = result

    def eretu(self, thread: Thread, ctx: Registers, user_pkru: int) -> bool:
        """Return ``thread`` to user mode at ``ctx`` with ``user_pkru``.

        Returns false when the host refused, in which case the thread is dead.
        """
        m = self.machine
        if not self.caller_is_kernel():
            m.note(
                "host-hypercall-pkru", "event return requested without the kernel PKRU"
            )
            m.kill_thread(thread.tid, "event return requested from user rights")
            return False
        if m.enabled("exit-pkru-check") and pk.allows_kernel(user_pkru):
            m.note(
                "exit-pkru-check", f"event return with PKRU {user_pkru:#010x} refused"
            )
            m.kill_thread(thread.tid, "event return would open the kernel key")
            return False
        m.check_returned_pkru(thread, user_pkru)
        m.load_context(thread, ctx)
        m.regs.pkru = user_pkru
        thread.mode = Mode.USER
        return True

    # -- Pager ------------------------------------------------------------------

    def process_ring(self) -> int:
        """Serve every request between head and tail; return how many were served."""
        m = self.machine
        head, tail = struct.unpack("<II", m.memory.read_raw(layout.PAGER_RING, 8))
        served = 0
        while head != tail:
            slot = (
                layout.PAGER_RING
                + RING_ENTRIES
                + (head % RING_SLOTS) * RING_ENTRY_BYTES
            )
            op, nr_pages, address = struct.unpack("<IIQ", m.memory.read_raw(slot, 16))
            if op == PAGER_BIND:
                served += self.bind(address, nr_pages) >= 0
            elif op == PAGER_UNBIND:
                served += self.unbind(address, nr_pages) >= 0
            else:
                self.requests_rejected += 1
            head = (head + 1) & 0xFFFF_FFFF
        m.memory.write_raw(layout.PAGER_RING + RING_HEAD, struct.pack("<I", head))
        done = struct.unpack("<Q", m.memory.read_raw(layout.PAGER_DONE, 8))[0] + served
        m.memory.write_raw(layout.PAGER_DONE, struct.pack("<Q", done))
        return served

    def _valid_request(self, address: int, nr_pages: int) -> bool:
        if address % PAGE_SIZE or not 0 < nr_pages <= PAGER_MAX_PAGES:
            return False
        memory = self.machine.memory
        return all(
            memory.page(address + i * PAGE_SIZE) is not None for i in range(nr_pages)
        )

    def bind(self, address: int, nr_pages: int) -> int:
        if not self._valid_request(address, nr_pages):
            self.requests_rejected += 1
            return -EINVAL
        for i in range(nr_pages):
            page = self.machine.memory.page(address + i * PAGE_SIZE)
            assert page is not None
            page.bound = True
        self.pages_bound += nr_pages
        return 0

    def unbind(self, address: int, nr_pages: int) -> int:
        """Drop the backing of guest pages; their contents read as zero afterwards."""
        m = self.machine
        if not self._valid_request(address, nr_pages):
            self.requests_rejected += 1
            return -EINVAL
        for i in range(nr_pages):
            page = m.memory.page(address + i * PAGE_SIZE)
            assert page is not None
            if page.owner is not Owner.USER:
                # The legitimate kernel never unbinds its own pages.
                m.violate(
                    "kernel-page-changed-for-user",
                    f"host unbound {page.owner.value} page "
                    f"{address + i * PAGE_SIZE:#x}",
                )
            page.data[:] = bytes(PAGE_SIZE)
            page.bound = False
        self.pages_unbound += nr_pages
        return 0
