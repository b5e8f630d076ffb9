"""The stopped-child launcher on real processes (no tracefs needed)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from paracell.capture.launcher import StoppedChild, exit_status, trampoline_elf
from paracell.errors import CaptureError

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the trampoline is x86-64 code"
)


def task_state(pid: int) -> str:
    """Return the state letter of ``pid`` from /proc (R, S, T, Z, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def wait_gone(pid: int, timeout_s: float = 30) -> bool:
    """Return whether ``pid`` exited (or became a zombie) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if task_state(pid) in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_elf_header_fields() -> None:
    elf = trampoline_elf()
    assert elf[:4] == b"\x7fELF"
    assert elf[4] == 2  # ELFCLASS64
    assert int.from_bytes(elf[18:20], "little") == 62  # EM_X86_64
    assert len(elf) < 512


def test_spawn_stops_before_exec(tmp_path: Path) -> None:
    out = tmp_path / "ran"
    child = StoppedChild(["sh", "-c", f"echo ran > {out}"])
    pid = child.spawn()
    try:
        assert task_state(pid) == "T"
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"paracell-launch"
        assert not out.exists()
    finally:
        child.cancel()
    assert wait_gone(pid)
    assert not out.exists()


def test_release_runs_command(tmp_path: Path) -> None:
    out = tmp_path / "args"
    script = 'printf "%s" "$0" > "$1"; exit 5'
    child = StoppedChild(["sh", "-c", script, "name0", str(out)])
    child.spawn()
    child.release()
    status, _ = child.wait()
    assert exit_status(status) == 5
    assert out.read_text() == "name0"


def test_command_not_found() -> None:
    with pytest.raises(CaptureError, match="command not found"):
        StoppedChild(["/nonexistent/paracell-test"]).spawn()


def test_exec_failure_exits_127(tmp_path: Path) -> None:
    # The command passes the checks made before fork, then goes away
    # before release: execve in the trampoline fails with ENOENT.
    command = tmp_path / "vanishing"
    shutil.copy("/bin/true", command)
    child = StoppedChild([str(command)])
    child.spawn()
    command.unlink()
    child.release()
    status, _ = child.wait()
    assert exit_status(status) == 127


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (b"\x00\x01 neither ELF nor #!\n", 0o755, "neither an ELF binary nor a #!"),
        (b"#!/bin/sh\ntrue\n", 0o644, "permission denied (not executable)"),
        (None, 0o755, "is a directory"),
    ],
)
def test_unrunnable_command_rejected_before_fork(
    tmp_path: Path, content: bytes | None, mode: int, message: str
) -> None:
    target = tmp_path / "command"
    if content is None:
        target.mkdir()
    else:
        target.write_bytes(content)
    target.chmod(mode)
    with pytest.raises(CaptureError, match=re.escape(message)):
        StoppedChild([str(target)]).spawn()


def test_cancel_after_release_is_noop() -> None:
    child = StoppedChild(["true"])
    child.spawn()
    child.release()
    child.wait()
    child.cancel()  # must not raise or wait for a reaped pid


def test_stopped_child_dies_with_capture(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG ends a trampoline still stopped when its parent exits."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from paracell.capture.launcher import StoppedChild
            child = StoppedChild(["sleep", "60"])
            print(child.spawn(), flush=True)
            os._exit(0)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.strip())
    try:
        assert wait_gone(pid), f"stopped trampoline {pid} outlived its parent"
    finally:
        if not wait_gone(pid, 0):
            os.kill(pid, signal.SIGKILL)


def test_environment_is_the_startup_one() -> None:
    """Variables Python adds at start-up (PEP 538) do not reach the command."""
    code = (
        "from paracell.capture.launcher import StoppedChild\n"
        "c = StoppedChild(['/usr/bin/env'])\n"
        "c.spawn(); c.release(); c.wait()\n"
    )
    env = {"PATH": os.environ["PATH"], "LANG": "C", "A.B": "1"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PYTHON")})
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True
    )
    lines = set(done.stdout.decode().splitlines())
    assert "LANG=C" in lines
    assert "A.B=1" in lines
    assert not any(line.startswith("LC_CTYPE=") for line in lines)
