"""Fixed addresses of the modelled container.

Everything lies below 2 GiB so that gates and payloads can address memory
with 32-bit absolute displacements. The container kernel occupies one fixed
range; user mappings must stay inside the user range.
"""

from __future__ import annotations

from paracell.isolation.memory import PAGE_SIZE

USER_BASE = 0x0001_0000
USER_TOP = 0x6000_0000
#: First address the loader and anonymous mmap(2) hand out.
USER_CODE_BASE = 0x0040_0000
USER_MMAP_BASE = 0x1000_0000
#: Thread ``tid`` gets a stack of USER_STACK_PAGES pages ending at
#: ``USER_STACK_TOP - tid * USER_STACK_STRIDE``.
USER_STACK_TOP = 0x5F00_0000
USER_STACK_STRIDE = 0x10_0000
USER_STACK_PAGES = 4

KERNEL_BASE = 0x7000_0000
KERNEL_TOP = 0x7F00_0000

GATE_PAGE = KERNEL_BASE
KERNEL_TEXT = KERNEL_BASE + 0x1000
#: Container-kernel code reached by the entry gate's final jump.
KERNEL_DISPATCH = KERNEL_TEXT
#: Container-kernel code reached by the XRSTOR gate's final jump.
KERNEL_XRSTOR_CONTINUE = KERNEL_TEXT + 0x100
#: The kernel's hypercall stub: ``vmcall; ret``.
KERNEL_HYPERCALL_STUB = KERNEL_TEXT + 0x200

#: Per-CPU data read by the gates (one vCPU in the model).
PERCPU = KERNEL_BASE + 0x1_0000
PERCPU_KERNEL_STACK = PERCPU + 0  # top of the current thread's kernel stack
PERCPU_USER_RSP = PERCPU + 8  # user stack pointer saved by the entry gate
PERCPU_USER_PKRU = PERCPU + 16  # the current thread's user PKRU, read by every exit
PERCPU_CURRENT_TID = PERCPU + 24

#: Kernel data; its first 8 bytes hold a secret that attacks try to read.
KERNEL_DATA = KERNEL_BASE + 0x2_0000
KERNEL_SECRET = KERNEL_DATA
KERNEL_SECRET_VALUE = 0x5EC2E7_C0DE_0BAD

#: Pager shared pages: the request ring (written by the container kernel,
#: read by the host) and the completion page (written by the host only).
PAGER_RING = KERNEL_BASE + 0x3_0000
PAGER_DONE = PAGER_RING + PAGE_SIZE

#: Kernel copy of a signal frame during rt_sigreturn.
SIGRETURN_SCRATCH = KERNEL_BASE + 0x4_0000
SIGRETURN_SCRATCH_PAGES = 1

#: One kernel stack page per thread, with an unmapped page between stacks.
KERNEL_STACKS = KERNEL_BASE + 0x10_0000
KERNEL_STACK_STRIDE = 2 * PAGE_SIZE


def in_user_range(address: int, size: int) -> bool:
    """Return whether ``[address, address + size)`` lies inside the user range."""
    return USER_BASE <= address and size >= 0 and address + size <= USER_TOP


def kernel_stack_top(tid: int) -> int:
    return KERNEL_STACKS + tid * KERNEL_STACK_STRIDE + PAGE_SIZE


def user_stack_top(tid: int) -> int:
    return USER_STACK_TOP - tid * USER_STACK_STRIDE
