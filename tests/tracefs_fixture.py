"""Fixture for tests that need a real tracefs (root on Linux).

Imported by the test modules that use it, so it stays out of a shared
conftest.py.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tracefs_top() -> Iterator[object]:
    """A TraceFS rooted at a private tracefs mount, unmounted afterwards.

    tracefs can be mounted more than once; a private mount point leaves
    the mount state of /sys/kernel/tracing untouched.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to mount tracefs and create instances")
    from paracell.capture.tracefs import TraceFS, _mount, _umount

    mount_point = Path(tempfile.mkdtemp(prefix="paracell-tracefs-"))
    try:
        _mount("nodev", mount_point, "tracefs")
    except OSError as exc:
        os.rmdir(mount_point)
        pytest.skip(f"cannot mount tracefs here: {exc.strerror}")
    try:
        yield TraceFS(mount_point)
    finally:
        _umount(mount_point)
        os.rmdir(mount_point)
