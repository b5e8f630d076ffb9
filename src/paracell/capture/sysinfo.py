"""Facts about the machine that a trace's manifest records.

Only what a kernel trace normally holds: kernel release, CPU count, page
size and memory size. No host name, address or user name.
"""

from __future__ import annotations

import os

from paracell.errors import CaptureError


def kernel_release() -> str:
    return os.uname().release


def cpu_count() -> int:
    return os.cpu_count() or 1


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    """Return MemTotal in bytes."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError as exc:
        raise CaptureError(f"cannot read {meminfo}: {exc.strerror}") from None
    raise CaptureError(f"{meminfo} has no MemTotal line")
