"""The shipped x86-64 system-call table against the kernel headers of this machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from paracell.capture.syscall_table import SYSCALL_NAME, SYSCALL_NR, syscall_name

HEADERS = [
    Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    Path("/usr/include/asm/unistd_64.h"),
]


def test_table_matches_header() -> None:
    header = next((h for h in HEADERS if h.is_file()), None)
    if header is None:
        pytest.skip("no asm/unistd_64.h here (Debian: linux-libc-dev)")
    found = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)", header.read_text()))
    assert len(found) > 300
    wrong = {
        name: (int(nr), SYSCALL_NR.get(name))
        for name, nr in found.items()
        if SYSCALL_NR.get(name) != int(nr)
    }
    assert wrong == {}


def test_numbers_unique() -> None:
    assert len(SYSCALL_NAME) == len(SYSCALL_NR)


def test_known_numbers() -> None:
    assert SYSCALL_NR["read"] == 0
    assert SYSCALL_NR["exit_group"] == 231
    assert SYSCALL_NR["mseal"] == 462
    assert syscall_name(59) == "execve"
    assert syscall_name(1000) == "syscall_1000"
