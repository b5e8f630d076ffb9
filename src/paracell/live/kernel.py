"""The kernel interfaces the live replay uses, through libc and procfs.

Every system call of the live replay and of the calibration goes through the
ctypes functions of this module. Their arguments are declared as plain
integers (addresses as ``c_size_t``) so that compiled numba loops can call
them directly, without Python in between.

Linux values: the ``MADV_*`` numbers come from
``include/uapi/asm-generic/mman-common.h``; ``MADV_POPULATE_WRITE`` exists
since Linux 5.14. Python 3.11's ``mmap`` module lacks it, hence the table here.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import resource
import struct
from dataclasses import dataclass
from pathlib import Path

from paracell.errors import LiveError

log = logging.getLogger("paracell.live")

PAGE_SIZE = 4096
HUGE_PAGE_SIZE = 2 << 20

PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value

MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_POPULATE_WRITE = 23

CLOCK_MONOTONIC = 1
# CPU time of the calling thread, which leaves out time spent preempted.
# Reading it is a system call (no vDSO).
CLOCK_THREAD_CPUTIME_ID = 3

# System call numbers differ between architectures (arch/*/entry/syscalls).
_SYSCALL_NUMBERS = {
    "x86_64": {"getppid": 110, "perf_event_open": 298},
    "aarch64": {"getppid": 173, "perf_event_open": 241},
}

# perf_event_open(2): PERF_TYPE_SOFTWARE and its counters.
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_PAGE_FAULTS_MIN = 5
PERF_COUNT_SW_PAGE_FAULTS_MAJ = 6
_PERF_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER8; the kernel accepts any known size
_PERF_FLAG_EXCLUDE_HV = 1 << 6

_libc = ctypes.CDLL(None, use_errno=True)


def _bind(name: str, restype: type, *argtypes: type) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    function = getattr(_libc, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


libc_mmap = _bind(
    "mmap",
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
libc_munmap = _bind("munmap", ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t)
libc_madvise = _bind(
    "madvise", ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int
)
libc_mincore = _bind(
    "mincore", ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t
)
# clock_gettime(clockid, struct timespec *): the pointer is passed as an address.
libc_clock_gettime = _bind("clock_gettime", ctypes.c_int, ctypes.c_int, ctypes.c_size_t)
# syscall(number) with no further argument, for the round-trip measurement.
libc_syscall0 = _bind("syscall", ctypes.c_long, ctypes.c_long)


def syscall_number(name: str) -> int:
    """Return the number of system call ``name`` here; raise LiveError if unknown."""
    machine = platform.machine()
    table = _SYSCALL_NUMBERS.get(machine)
    if table is None:
        raise LiveError(
            f"the live replay has system call numbers for "
            f"{', '.join(_SYSCALL_NUMBERS)} only, not for {machine}"
        )
    return table[name]


def _os_error(call: str) -> LiveError:
    code = ctypes.get_errno()
    return LiveError(
        f"{call} failed: {os.strerror(code)} (errno {errno.errorcode.get(code, code)})"
    )


def mmap_anonymous(sz_bytes: int) -> int:
    """Map ``sz_bytes`` of private anonymous memory (no swap reserved); return it."""
    addr = libc_mmap(
        0,
        sz_bytes,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
        -1,
        0,
    )
    if addr == MAP_FAILED or addr is None:
        raise _os_error(f"mmap of {sz_bytes} bytes")
    return int(addr)


def munmap(addr: int, sz_bytes: int) -> None:
    if libc_munmap(addr, sz_bytes) != 0:
        raise _os_error(f"munmap of {sz_bytes} bytes at {addr:#x}")


def madvise(addr: int, sz_bytes: int, advice: int) -> None:
    if libc_madvise(addr, sz_bytes, advice) != 0:
        raise _os_error(f"madvise({addr:#x}, {sz_bytes}, {advice})")


def madvise_errno(addr: int, sz_bytes: int, advice: int) -> int:
    """Run madvise and return 0 or the errno it failed with."""
    if libc_madvise(addr, sz_bytes, advice) != 0:
        return ctypes.get_errno()
    return 0


def check_populate_write() -> None:
    """Raise LiveError unless MADV_POPULATE_WRITE works on this kernel (Linux 5.14+)."""
    addr = mmap_anonymous(PAGE_SIZE)
    try:
        code = madvise_errno(addr, PAGE_SIZE, MADV_POPULATE_WRITE)
    finally:
        munmap(addr, PAGE_SIZE)
    if code != 0:
        raise LiveError(
            f"MADV_POPULATE_WRITE is not available ({os.strerror(code)}); the live "
            f"replay binds pages with it and needs Linux 5.14 or later "
            f"(this kernel is {platform.release()})"
        )


def thread_minor_faults() -> int:
    """Return the calling thread's minor-fault count (getrusage RUSAGE_THREAD).

    The kernel counts here both hardware page faults and the faults that
    get_user_pages takes on the task's behalf, one per page, for example
    inside MADV_POPULATE_WRITE (mm_account_fault in mm/memory.c).
    """
    return int(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt)


class TrapFaultCounter:
    """Minor page faults taken by the calling thread as hardware traps.

    A perf software counter (PERF_COUNT_SW_PAGE_FAULTS_MIN) counts a fault
    only when it comes with the trapping registers, so faults taken by
    get_user_pages (MADV_POPULATE_WRITE) are left out, unlike in getrusage.
    """

    def __init__(self, config: int = PERF_COUNT_SW_PAGE_FAULTS_MIN) -> None:
        attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
        struct.pack_into("IIQ", attr, 0, PERF_TYPE_SOFTWARE, _PERF_ATTR_SIZE, config)
        struct.pack_into("Q", attr, 40, _PERF_FLAG_EXCLUDE_HV)
        number = syscall_number("perf_event_open")
        perf_event_open = _libc.syscall
        perf_event_open.restype = ctypes.c_long
        # pid 0 and cpu -1: this thread on any CPU; no group, no flags.
        fd = perf_event_open(
            ctypes.c_long(number),
            attr,
            ctypes.c_int(0),
            ctypes.c_int(-1),
            ctypes.c_int(-1),
            ctypes.c_ulong(0),
        )
        if fd < 0:
            code = ctypes.get_errno()
            paranoid = _read_text(Path("/proc/sys/kernel/perf_event_paranoid"))
            raise LiveError(
                f"perf_event_open for page-fault counting failed: {os.strerror(code)} "
                f"(kernel.perf_event_paranoid is {paranoid.strip() or 'unknown'})",
                hint="run as root or lower kernel.perf_event_paranoid to 2 or less",
            )
        self._fd = int(fd)

    def read(self) -> int:
        return int(struct.unpack("Q", os.read(self._fd, 8))[0])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TrapFaultCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read_meminfo() -> dict[str, int]:
    """Return /proc/meminfo as bytes per field (fields given in kB are converted)."""
    out: dict[str, int] = {}
    for line in _read_text(Path("/proc/meminfo")).splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        value = int(parts[0])
        out[name] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return out


def mem_available_bytes() -> int:
    """Return MemAvailable; raise LiveError where the kernel does not report it."""
    info = read_meminfo()
    if "MemAvailable" not in info:
        raise LiveError(
            "/proc/meminfo has no MemAvailable field; cannot size the live region"
        )
    return info["MemAvailable"]


def process_rss_bytes() -> int:
    """Return this process's resident memory (VmRSS), or 0 where it is not reported."""
    for line in _read_text(Path("/proc/self/status")).splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def thp_enabled_mode() -> str:
    """Return the selected mode of transparent huge pages (always, madvise or never)."""
    text = _read_text(Path("/sys/kernel/mm/transparent_hugepage/enabled"))
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "unavailable"


@dataclass(frozen=True)
class MappingUsage:
    """Fields of /proc/self/smaps for one mapping, in bytes."""

    size_bytes: int
    rss_bytes: int
    anon_huge_bytes: int
    thp_eligible: bool


class SmapsReader:
    """Reads /proc/self/smaps into one reused buffer.

    The buffer is written through when it is made, so reading smaps while
    the fault counters run takes no page fault unless the file outgrows it.
    """

    def __init__(self, sz_bytes: int = 1 << 20) -> None:
        self._buffer = bytearray(b"\0") * sz_bytes

    def _read(self) -> int:
        fd = os.open("/proc/self/smaps", os.O_RDONLY)
        try:
            used = 0
            while True:
                if used == len(self._buffer):
                    self._buffer += bytearray(b"\0") * len(self._buffer)
                got = os.readv(fd, [memoryview(self._buffer)[used:]])
                if got == 0:
                    return used
                used += got
        finally:
            os.close(fd)

    def usage(self, addr: int) -> MappingUsage | None:
        """Return the smaps fields of the mapping at ``addr`` (None: none there)."""
        used = self._read()
        data = self._buffer
        key = b"%x-" % addr
        if data.startswith(key):
            start = 0
        else:
            found = data.find(b"\n" + key, 0, used)
            if found < 0:
                return None
            start = found + 1
        # Every entry ends with its VmFlags line (Linux 3.8 and later).
        end = data.find(b"\nVmFlags:", start, used)
        block = bytes(data[start : end if end >= 0 else used])
        fields: dict[str, int] = {}
        for line in block.split(b"\n")[1:]:
            name, _, rest = line.partition(b":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                scale = 1024 if len(parts) > 1 and parts[1] == b"kB" else 1
                fields[name.strip().decode()] = int(parts[0]) * scale
        return MappingUsage(
            size_bytes=fields.get("Size", 0),
            rss_bytes=fields.get("Rss", 0),
            anon_huge_bytes=fields.get("AnonHugePages", 0),
            thp_eligible=fields.get("THPeligible", 0) == 1,
        )


def smaps_usage(addr: int) -> MappingUsage | None:
    """Return the smaps fields of the mapping at ``addr`` (None: no such mapping)."""
    return SmapsReader().usage(addr)


def mapped_ranges() -> list[tuple[int, int]]:
    """Return the (start, end) address of every mapping in /proc/self/maps."""
    ranges = []
    for line in _read_text(Path("/proc/self/maps")).splitlines():
        lo, _, hi = line.split(None, 1)[0].partition("-")
        ranges.append((int(lo, 16), int(hi, 16)))
    return ranges
