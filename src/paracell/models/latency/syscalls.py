"""Groups of x86-64 system calls that take a path other than the plain transition.

Every system call pays its runtime's transition path. The calls listed here
pay one more path on top: shadow page-table work, a device notification or a
timer programming. The table is indexed by system-call number so a whole
trace is classified with one ``numpy.take``.
"""

from __future__ import annotations

import numpy as np

from paracell.capture.syscall_table import SYSCALL_NR
from paracell.trace.schema import MAX_SYSCALL_NR

# Group ids stored in SYSCALL_GROUP. PLAIN calls pay only the transition.
PLAIN = 0
CLONE = 1  # clone, clone3: a fork when the child gets its own address space
FORK = 2  # fork always copies the caller's address space
EXEC = 3  # execve, execveat
EXIT_GROUP = 4  # the last thread leaving tears the address space down
PT_UPDATE = 5  # calls that map, unmap or change page-table entries
IO_OUTPUT = 6  # transfers towards a device: successful when ret > 0
IO_INPUT = 7  # transfers from a device: successful when ret > 0
IO_SYNC = 8  # flushes towards a device: successful when ret == 0
TIMER = 9  # calls that arm a timer

# Members of each group by name; numbers come from the project's x86-64
# system-call table.
GROUP_MEMBERS: dict[int, tuple[str, ...]] = {
    CLONE: ("clone", "clone3"),
    FORK: ("fork",),
    EXEC: ("execve", "execveat"),
    EXIT_GROUP: ("exit_group",),
    # madvise is here because MADV_DONTNEED and MADV_FREE zap entries like munmap.
    PT_UPDATE: ("mmap", "mprotect", "munmap", "brk", "mremap", "madvise"),
    IO_OUTPUT: (
        "write",
        "pwrite64",
        "writev",
        "sendfile",
        "sendto",
        "sendmsg",
        "io_submit",
        "splice",
        "pwritev",
        "sendmmsg",
        "pwritev2",
        "io_uring_enter",
    ),
    IO_INPUT: (
        "read",
        "pread64",
        "readv",
        "recvfrom",
        "recvmsg",
        "preadv",
        "recvmmsg",
        "preadv2",
    ),
    IO_SYNC: ("fsync", "fdatasync", "sync_file_range", "syncfs"),
    TIMER: (
        "nanosleep",
        "alarm",
        "setitimer",
        "timer_settime",
        "clock_nanosleep",
        "timerfd_settime",
    ),
}

# exit(2) ends one thread and leaves the address space to the others, and
# vfork(2) shares the parent's address space until the child calls execve, so
# neither does page-table work and both stay PLAIN.

SYSCALL_GROUP = np.zeros(MAX_SYSCALL_NR + 1, dtype=np.int8)
for _group, _names in GROUP_MEMBERS.items():
    for _name in _names:
        SYSCALL_GROUP[SYSCALL_NR[_name]] = _group

# CLONE_VM from include/uapi/linux/sched.h: the child shares the address space.
CLONE_VM = 0x100

# Linux returns -errno in [-4095, -1] for a failed call; mmap returns user
# addresses, which are positive on x86-64.
MAX_ERRNO = 4095


def failed(ret: np.ndarray) -> np.ndarray:
    """Return a mask of the calls whose return value is an error number."""
    return (ret < 0) & (ret >= -MAX_ERRNO)


def group_name(group: int) -> str:
    """Return a readable name of a group id for messages and docs."""
    names = {
        PLAIN: "plain",
        CLONE: "clone",
        FORK: "fork",
        EXEC: "exec",
        EXIT_GROUP: "exit_group",
        PT_UPDATE: "page-table update",
        IO_OUTPUT: "I/O output",
        IO_INPUT: "I/O input",
        IO_SYNC: "I/O sync",
        TIMER: "timer",
    }
    return names[group]
