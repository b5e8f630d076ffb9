"""Groups of x86-64 system calls that take a path other than the plain transition.

Every system call pays its runtime's transition path. The calls listed here
pay one more path on top: shadow page-table work, a device notification or a
timer programming. The table is indexed by system-call number so a whole
trace is classified with one ``numpy.take``.
"""

from __future__ import annotations

import numpy as np

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

# x86-64 numbers from arch/x86/entry/syscalls/syscall_64.tbl (LNX).
GROUP_MEMBERS: dict[int, dict[str, int]] = {
    CLONE: {"clone": 56, "clone3": 435},
    FORK: {"fork": 57},
    EXEC: {"execve": 59, "execveat": 322},
    EXIT_GROUP: {"exit_group": 231},
    # madvise is here because MADV_DONTNEED and MADV_FREE zap entries like munmap.
    PT_UPDATE: {
        "mmap": 9,
        "mprotect": 10,
        "munmap": 11,
        "brk": 12,
        "mremap": 25,
        "madvise": 28,
    },
    IO_OUTPUT: {
        "write": 1,
        "pwrite64": 18,
        "writev": 20,
        "sendfile": 40,
        "sendto": 44,
        "sendmsg": 46,
        "io_submit": 209,
        "splice": 275,
        "pwritev": 296,
        "sendmmsg": 307,
        "pwritev2": 328,
        "io_uring_enter": 426,
    },
    IO_INPUT: {
        "read": 0,
        "pread64": 17,
        "readv": 19,
        "recvfrom": 45,
        "recvmsg": 47,
        "preadv": 295,
        "recvmmsg": 299,
        "preadv2": 327,
    },
    IO_SYNC: {
        "fsync": 74,
        "fdatasync": 75,
        "sync_file_range": 277,
        "syncfs": 306,
    },
    TIMER: {
        "nanosleep": 35,
        "alarm": 37,
        "setitimer": 38,
        "timer_settime": 223,
        "clock_nanosleep": 230,
        "timerfd_settime": 286,
    },
}

# exit(2) ends one thread and leaves the address space to the others, and
# vfork(2) shares the parent's address space until the child calls execve, so
# neither does page-table work and both stay PLAIN.

SYSCALL_GROUP = np.zeros(MAX_SYSCALL_NR + 1, dtype=np.int8)
for _group, _members in GROUP_MEMBERS.items():
    for _nr in _members.values():
        SYSCALL_GROUP[_nr] = _group

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
