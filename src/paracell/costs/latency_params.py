"""Cost parameters of the runtime latency models.

Times are stored in ns. Sourced values come from PVM23 (2 x Xeon Platinum
8269CY at 2.5 GHz, Linux 4.19; bare metal is a bare-metal instance, nested a
VM instance of the same type), so the defaults of one deployment describe one
machine. A value derived from two PVM23 figures names both in its
description. Where PVM23 gives no native figure, its EPT guest on bare metal
(kvm-ept, the hardware-VM configuration that RunV uses) stands in for native,
because such a guest handles its own system calls and page faults without
exits.

Names start with the runtime whose path uses them (``runv.``, ``pvm.``,
``paracell.``) or with what they describe for every runtime (``cpu.``,
``host.``, ``io.``, ``guest.``). ParaCell's container kernel runs
deprivileged in ring 3 like PVM's guest, so ParaCell's paths reuse
``pvm.host_trap``, ``pvm.hypercall`` and ``pvm.notify_device``.
"""

from __future__ import annotations

from paracell.costs.table import Param

BM = "bare-metal"
NST = "nested"


def _us(value: float) -> float:
    return value * 1e3


LATENCY_PARAMS: list[Param] = [
    # -- machine and host ---------------------------------------------------
    Param(
        name="cpu.clock_ghz",
        value=2.5,
        unit="GHz",
        source="PVM23",
        description="clock frequency that converts cycle counts (the XGate steps) "
        "to time; PVM23's Xeon Platinum 8269CY runs at 2.5 GHz",
    ),
    Param(
        name="host.anon_fault",
        value=_us(1.0),
        unit="ns",
        source="estimate",
        low=_us(0.7),
        high=_us(1.9),
        description="host kernel allocates and zeroes a 4 KiB page to back a "
        "guest-physical page on its first touch",
        reasoning="public measurements of an anonymous first-touch fault with "
        "zeroing on Linux 6.6 give about 1.0 us median; HERE measured 1.9 us for "
        "the same fault inside a PVM guest, which adds PVM's own fault path, so "
        "1.9 us bounds it from above",
    ),
    # -- RunV: hardware VM with EPT ------------------------------------------
    Param(
        name="runv.exit",
        value=_us(0.46),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="round trip of the cheapest VM exit (a hypercall), PVM23 "
        "Table 1; used for HLT exits and as the exit part of other paths",
    ),
    Param(
        name="runv.exit",
        value=_us(7.43),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="round trip of a hypercall exit of a nested EPT guest, "
        "reflected through the outer hypervisor, PVM23 Table 1",
    ),
    Param(
        name="runv.msr_exit",
        value=_us(0.87),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="round trip of an MSR-write exit (TSC-deadline timer, "
        "x2APIC ICR for an IPI), PVM23 Table 1",
    ),
    Param(
        name="runv.msr_exit",
        value=_us(8.18),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="round trip of an MSR-write exit of a nested EPT guest, "
        "PVM23 Table 1",
    ),
    Param(
        name="runv.notify_device",
        value=_us(3.79 - 0.46),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="host-side work of a virtio notification beyond the bare "
        "exit: PVM23 Table 1 port-I/O exit (3.79 us) minus hypercall exit (0.46 us)",
    ),
    Param(
        name="runv.notify_device",
        value=_us(29.34 - 7.43),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="host-side work of a virtio notification of a nested guest "
        "beyond the bare exit: PVM23 Table 1 port-I/O exit (29.34 us) minus "
        "hypercall exit (7.43 us)",
    ),
    Param(
        name="runv.ept_violation",
        value=_us(0.46),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="exit and re-entry for an EPT violation on the first touch "
        "of a guest-physical page, taken equal to the hypercall exit of PVM23 "
        "Table 1; the host's fault itself is host.anon_fault",
    ),
    Param(
        name="runv.ept_violation",
        value=_us(13.0),
        unit="ns",
        source="estimate",
        deployment=NST,
        low=_us(9.0),
        high=_us(18.0),
        description="world switches for an EPT violation of a nested guest on "
        "the first touch of a guest-physical page (EPT on EPT); the host's fault "
        "itself is host.anon_fault",
        reasoning="PVM23 counts 2n+6 = 14 world switches for one L2 fault with "
        "n = 4 page-table levels, n+3 = 7 of them through L0, and measures about "
        "1.3 us per L2-to-L1 switch; 7 to 14 switches at 1.3 us give 9 to 18 us",
    ),
    Param(
        name="runv.guest_fault_extra",
        value=0.0,
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="extra time of a user page fault handled inside an EPT "
        "guest; PVM23 Table 4 measures 0.15 us for kvm-ept on bare metal, which "
        "stands in for native",
    ),
    Param(
        name="runv.guest_fault_extra",
        value=_us(0.19 - 0.15),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="extra time of a user page fault inside a nested EPT guest: "
        "PVM23 Table 4 kvm-ept nested (0.19 us) minus bare metal (0.15 us)",
    ),
    Param(
        name="runv.fork_extra",
        value=0.0,
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="extra time of a fork that copies an address space, inside "
        "an EPT guest on bare metal; kvm-ept on bare metal stands in for native",
    ),
    Param(
        name="runv.fork_extra",
        value=_us((113 - 82) / 2),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="half of PVM23 Table 3's nested-minus-bare-metal kvm-ept "
        "fork (113 - 82 us); lmbench's fork includes the child's exit, which "
        "gets the other half",
    ),
    Param(
        name="runv.exit_group_extra",
        value=0.0,
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="extra time of an address-space teardown at exit_group "
        "inside an EPT guest on bare metal; kvm-ept stands in for native",
    ),
    Param(
        name="runv.exit_group_extra",
        value=_us((113 - 82) / 2),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="the other half of PVM23 Table 3's nested-minus-bare-metal "
        "kvm-ept fork (113 - 82 us), charged to exit_group",
    ),
    Param(
        name="runv.exec_extra",
        value=0.0,
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="extra time of a successful execve inside an EPT guest on "
        "bare metal; kvm-ept stands in for native",
    ),
    Param(
        name="runv.exec_extra",
        value=_us((726 - 422) - (113 - 82)),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="nested-minus-bare-metal kvm-ept exec of PVM23 Table 3 "
        "(726 - 422 us) less the same difference for fork (113 - 82 us), since "
        "lmbench's exec includes a fork",
    ),
    # -- PVM: shadow paging, switcher, direct switch ---------------------------
    Param(
        name="pvm.switcher_roundtrip",
        value=_us(0.29 - 0.06),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="extra time of a user-kernel round trip through the host's "
        "switcher with address-space switches: PVM23 Table 2 getpid under PVM "
        "with direct switch (0.29 us) minus getpid in an EPT guest with KPTI off "
        "(0.06 us)",
    ),
    Param(
        name="pvm.switcher_roundtrip",
        value=_us(0.30 - 0.06),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="nested: PVM23 Table 2 getpid under PVM with direct switch "
        "(0.30 us) minus getpid in an EPT guest with KPTI off (0.06 us)",
    ),
    Param(
        name="pvm.hypercall",
        value=_us(0.54),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="round trip of a hypercall from a ring-3 guest kernel to the "
        "host, PVM23 Table 1; also used for ParaCell",
    ),
    Param(
        name="pvm.hypercall",
        value=_us(0.48),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="round trip of a PVM hypercall inside a cloud VM, PVM23 "
        "Table 1 (no VT-x, so no outer hypervisor on the path); also used for "
        "ParaCell",
    ),
    Param(
        name="pvm.host_trap",
        value=_us(0.54),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="user fault trapping to the host's fault handler and back, "
        "taken equal to PVM's hypercall round trip (PVM23 Table 1); also used "
        "for ParaCell",
    ),
    Param(
        name="pvm.host_trap",
        value=_us(0.48),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="nested: a user fault trapping to the host and back, taken "
        "equal to PVM's nested hypercall round trip (PVM23 Table 1); also used "
        "for ParaCell",
    ),
    Param(
        name="pvm.guest_pte_write",
        value=_us(0.15),
        unit="ns",
        source="estimate",
        low=0.0,
        high=_us(0.6),
        description="extra time of the container kernel's write of a page-table "
        "entry that the host shadows, averaged over writes",
        reasoning="a write to a leaf page table the host has left unsynced costs "
        "nothing extra; a write to a write-protected one traps and is emulated, "
        "about a host trap (0.5 us, PVM23) plus decoding; the average lies "
        "between 0 and 0.6 us",
    ),
    Param(
        name="pvm.shadow_fill",
        value=_us(0.15),
        unit="ns",
        source="estimate",
        low=_us(0.05),
        high=_us(0.4),
        description="host walks the guest's 4-level page table and installs one "
        "shadow page-table entry",
        reasoning="four reads of guest page-table entries through the host's "
        "mapping, a lookup of the shadow page and one entry write; PVM23 gives "
        "no separate figure, and its lmbench page fault (0.88 us under PVM "
        "against 0.15 us for kvm-ept) bounds a fill plus a host trap",
    ),
    Param(
        name="pvm.notify_device",
        value=_us(4.91 - 0.54),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="host-side work of a device notification from a PVM guest "
        "beyond the hypercall: PVM23 Table 1 PVM port I/O (4.91 us) minus PVM "
        "hypercall (0.54 us); also used for ParaCell",
    ),
    Param(
        name="pvm.notify_device",
        value=_us(12.94 - 0.48),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="nested: PVM23 Table 1 PVM port I/O (12.94 us) minus PVM "
        "hypercall (0.48 us); also used for ParaCell",
    ),
    Param(
        name="pvm.fork_shadow",
        value=_us((437 - 82) / 2),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="shadow page-table work of a fork: half of PVM23 Table 3 "
        "PVM fork minus kvm-ept fork (437 - 82 us); lmbench's fork includes the "
        "child's exit, which gets the other half",
    ),
    Param(
        name="pvm.fork_shadow",
        value=_us((466 - 82) / 2),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="nested: half of PVM23 Table 3 nested PVM fork minus "
        "bare-metal kvm-ept fork (466 - 82 us)",
    ),
    Param(
        name="pvm.exit_group_shadow",
        value=_us((437 - 82) / 2),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="shadow page-table teardown at exit_group: the other half "
        "of PVM23 Table 3 PVM fork minus kvm-ept fork (437 - 82 us)",
    ),
    Param(
        name="pvm.exit_group_shadow",
        value=_us((466 - 82) / 2),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="nested: the other half of PVM23 Table 3 nested PVM fork "
        "minus bare-metal kvm-ept fork (466 - 82 us)",
    ),
    Param(
        name="pvm.exec_shadow",
        value=_us((1290 - 422) - (437 - 82)),
        unit="ns",
        source="PVM23",
        deployment=BM,
        description="shadow page-table work of a successful execve: PVM23 Table "
        "3 PVM exec minus kvm-ept exec (1290 - 422 us) less the fork it contains "
        "(437 - 82 us)",
    ),
    Param(
        name="pvm.exec_shadow",
        value=_us((1330 - 422) - (466 - 82)),
        unit="ns",
        source="PVM23",
        deployment=NST,
        description="nested: PVM23 Table 3 nested PVM exec minus bare-metal "
        "kvm-ept exec (1330 - 422 us) less the fork it contains (466 - 82 us)",
    ),
    Param(
        name="pvm.pt_update_shadow",
        value=_us(0.5),
        unit="ns",
        source="estimate",
        low=_us(0.1),
        high=_us(2.0),
        description="shadow page-table work of one mmap, munmap, mprotect, "
        "mremap, madvise or brk call",
        reasoning="calls that drop or change entries end in a TLB-flush "
        "hypercall (about 0.5 us, PVM23 Table 1) after which the host zaps the "
        "shadow entries; mmap and brk growth only change VMAs; averaged over the "
        "group, 0.1 to 2 us",
    ),
    Param(
        name="pvm.shadow_root_switch",
        value=_us(0.2),
        unit="ns",
        source="estimate",
        low=_us(0.05),
        high=_us(1.0),
        description="host looks up (or builds) the shadow root of the next "
        "address space when the container kernel loads a new CR3 by hypercall",
        reasoning="a hash lookup of cached shadow roots plus a CR3 load with a "
        "PCID; rebuilding an evicted root costs up to about 1 us; PVM23 gives no "
        "separate figure",
    ),
    # -- ParaCell: XGates in one address space, Pager-bound memory -------------
    Param(
        name="paracell.gate_entry_cycles",
        value=55.0,
        unit="cycles",
        source="estimate",
        low=30.0,
        high=70.0,
        description="entry gate: WRPKRU to grant container-kernel keys, re-check "
        "of the value written, switch to the kernel stack and dispatch",
        reasoning="UB20 measures a 109-cycle MPK domain-switch round trip and "
        "ISO20 a 45-cycle MPK-based system call, so an entry plus exit costs "
        "about 50 to 110 cycles; the entry holds the check and the stack "
        "switch, so it takes about two thirds",
    ),
    Param(
        name="paracell.gate_exit_cycles",
        value=25.0,
        unit="cycles",
        source="estimate",
        low=20.0,
        high=40.0,
        description="exit gate: switch back to the user stack and WRPKRU to "
        "restore the user's PKRU",
        reasoning="one WRPKRU and a stack switch, about one third of the 50 to "
        "110-cycle round trip of UB20 and ISO20",
    ),
    Param(
        name="paracell.syscall_redirect",
        value=0.0,
        unit="ns",
        source="estimate",
        low=0.0,
        high=230.0,
        description="extra time to route a system call to the entry gate",
        reasoning="how ParaCell routes system calls is not public; a C library "
        "that calls the gate directly adds nothing, while a host that catches "
        "the SYSCALL instruction and reflects it to the gate adds about PVM's "
        "switcher round trip (0.23 us, PVM23 Table 2)",
    ),
    Param(
        name="paracell.shadow_share",
        value=1.0,
        unit="ratio",
        source="estimate",
        low=0.25,
        high=1.0,
        description="share of PVM's shadow page-table work (fills, entry writes, "
        "fork/exec/exit, CR3 loads) that ParaCell still pays",
        reasoning="how ParaCell handles the container kernel's page tables is "
        "not public; its two stated mechanisms (XGates and the Pager) leave the "
        "host's view of guest page tables as in PVM, so the default keeps all of "
        "PVM's work; a design with paravirtual page-table updates validated in "
        "batches might pay a quarter",
    ),
    Param(
        name="paracell.pager_batch_pages",
        value=64.0,
        unit="pages",
        source="estimate",
        low=16.0,
        high=512.0,
        description="pages the Pager binds per hypercall",
        reasoning="the natural batch is one per-CPU list refill of the buddy "
        "allocator, which Linux sizes at about 63 pages on large zones; a Pager "
        "that binds ahead can take 2 MiB (512 pages) at once",
    ),
    Param(
        name="paracell.pager_bind_on_path",
        value=1.0,
        unit="ratio",
        source="estimate",
        low=0.0,
        high=1.0,
        description="share of the Pager's bind time that delays the workload",
        reasoning="binding at the allocator hook in the allocating task puts all "
        "of it on the task's path; a reserve bound ahead by a background thread "
        "on an idle vCPU takes it off the path entirely",
    ),
    # -- guest behaviour shared by every VM-based runtime ----------------------
    Param(
        name="io.notify_per_output_call",
        value=0.5,
        unit="count",
        source="estimate",
        low=0.0,
        high=1.0,
        description="device notifications per successful write, send, sendfile, "
        "fsync or I/O-submit call",
        reasoning="a write to a virtio device kicks the queue once unless event "
        "suppression skips the kick while the device is still busy, and writes "
        "to pipes, loopback sockets or the guest page cache reach no device",
    ),
    Param(
        name="io.notify_per_input_call",
        value=0.25,
        unit="count",
        source="estimate",
        low=0.0,
        high=1.0,
        description="device notifications per successful read or receive call",
        reasoning="reads served from the guest page cache or a socket buffer "
        "reach no device; receive paths kick only to refill receive buffers, "
        "and cache misses send one request",
    ),
    Param(
        name="guest.timer_programs_per_call",
        value=1.0,
        unit="count",
        source="estimate",
        low=0.5,
        high=2.0,
        description="timer programmings (TSC-deadline writes) per call of "
        "nanosleep, clock_nanosleep, alarm, setitimer, timer_settime or "
        "timerfd_settime",
        reasoning="the kernel reprograms the timer only when the new expiry is "
        "the earliest, which a sleep usually is; a wake-up before the expiry "
        "cancels it, a second programming",
    ),
    Param(
        name="guest.idle_wake_ipi_share",
        value=0.5,
        unit="ratio",
        source="estimate",
        low=0.0,
        high=1.0,
        description="share of idle periods that end with an IPI from another vCPU "
        "(the rest end with a timer or device interrupt)",
        reasoning="a task woken by a task on another vCPU needs a reschedule IPI; "
        "timer and device wake-ups need none; traces do not record which",
    ),
    Param(
        name="guest.vcpu_wakeup",
        value=_us(2.0),
        unit="ns",
        source="estimate",
        low=_us(0.5),
        high=_us(5.0),
        description="extra delay before a halted vCPU runs again, through the "
        "host scheduler",
        reasoning="KVM's halt polling resumes a vCPU within about 0.5 us when "
        "the wake-up comes soon; otherwise the vCPU thread sleeps and the host "
        "scheduler wakes it, a few microseconds",
    ),
]
