"""paracell trace inside a pid namespace (unshare --pid --fork --mount-proc).

Inside a pid namespace getpid() differs from the global id that tracefs
filters and records use. These tests run the capture as pid 1 of a new
namespace, with the namespace's own /proc, and check that it records the
command under its global ids and that a capture on the host leaves the
namespaced capture's instances alone.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_capture_real import leftovers, tracefs_state
from tracefs_fixture import tracefs_top  # noqa: F401  (pytest fixture)

from paracell.capture.syscall_table import SYSCALL_NR
from paracell.trace import load_trace

pytestmark = [
    pytest.mark.tracefs,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to use tracefs"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare"),
]

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]

# Forks a child and starts a thread that make known numbers of two rare
# calls, once the file argv[1] exists. Writes its pid first (ready file).
SCRIPT = """
import os, sys, threading, time
go, ready, ids = sys.argv[1:4]
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.02)
pid = os.fork()
if pid == 0:
    for _ in range(37):
        os.getpriority(os.PRIO_PROCESS, 0)
    os._exit(0)
os.waitpid(pid, 0)
t = threading.Thread(target=lambda: [os.getsid(0) for _ in range(23)])
t.start()
t.join()
with open(ids, "w") as f:
    f.write(f"{os.getpid()} {pid} {t.native_id}")
"""


@pytest.fixture(autouse=True)
def _unshare_works() -> None:
    done = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot create a pid namespace here: {done.stderr.strip()}")


def start_namespaced_trace(tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "work.py"
    script.write_text(textwrap.dedent(SCRIPT))
    inner = [
        sys.executable,
        "-m",
        "paracell",
        "trace",
        "-o",
        str(tmp_path / "trace"),
        "--events",
        "syscalls",
        "--",
        sys.executable,
        str(script),
        str(tmp_path / "go"),
        str(tmp_path / "ready"),
        str(tmp_path / "ids"),
    ]
    # exec: paracell runs as pid 1 of the new namespace.
    return subprocess.Popen(
        [*UNSHARE, "sh", "-c", "exec " + shlex.join(inner)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def global_pid_of(local_pid: int, script: Path) -> int:
    """Find the global pid of the script that has ``local_pid`` in its namespace."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        nspid = next(
            (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")),
            [],
        )
        if (
            len(nspid) == 2
            and int(nspid[-1]) == local_pid
            and str(script).encode() in cmdline
        ):
            return int(nspid[0])
    raise AssertionError(f"no process has pid {local_pid} in a child namespace")


def finish(proc: subprocess.Popen[str]) -> str:
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return stderr


def test_capture_in_pid_namespace(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    before = tracefs_state(tracefs_top)
    proc = start_namespaced_trace(tmp_path)
    try:
        wait_for_file(tmp_path / "ready", proc)
        local_root = int((tmp_path / "ready").read_text())
        root = global_pid_of(local_root, tmp_path / "work.py")
        (tmp_path / "go").touch()
    finally:
        stderr = finish(proc)
    assert proc.returncode == 0, stderr
    assert "no events" not in stderr

    _, local_child, local_thread = (
        int(x) for x in (tmp_path / "ids").read_text().split()
    )
    # The namespace numbers its tasks from 1; the host had used far more ids.
    assert root != local_root
    trace = load_trace(tmp_path / "trace", validate=True)
    assert trace.manifest.lost_total == 0
    sc = trace.table("syscalls").to_pydict()
    nr = np.array(sc["nr"])
    prio = np.flatnonzero(nr == SYSCALL_NR["getpriority"])
    sid = np.flatnonzero(nr == SYSCALL_NR["getsid"])
    assert prio.size == 37
    assert sid.size == 23
    assert {sc["pid"][i] for i in sid} == {root}
    thread = {sc["tid"][i] for i in sid}
    child = {sc["pid"][i] for i in prio}
    assert len(thread) == 1
    assert len(child) == 1
    assert thread != {local_thread}
    assert child != {local_child}
    newtask = trace.table("task_newtask").to_pydict()
    by_tid = dict(zip(newtask["child_tid"], newtask["child_pid"], strict=True))
    assert by_tid[thread.pop()] == root
    assert by_tid[next(iter(child))] == next(iter(child))
    # /proc is the namespace's, so it cannot name other tasks' processes.
    assert any("another pid namespace" in n for n in trace.manifest.notes)

    assert tracefs_state(tracefs_top) == before
    assert leftovers(tracefs_top, 1) == []


def test_host_capture_spares_namespaced(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    """A capture on the host neither removes nor warns about a live namespaced one."""
    (tmp_path / "ns").mkdir()
    proc = start_namespaced_trace(tmp_path / "ns")
    try:
        wait_for_file(tmp_path / "ns" / "ready", proc)
        # paracell is pid 1 in the namespace, so its token starts with "1-".
        namespaced = [
            n for n in tracefs_top.listdir("instances") if n.startswith("paracell-1-")
        ]
        assert len(namespaced) == 2, namespaced
        host = subprocess.run(
            [
                sys.executable,
                "-m",
                "paracell",
                "trace",
                "-o",
                str(tmp_path / "host"),
                "--events",
                "syscalls",
                "--",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert host.returncode == 0, host.stderr
        assert "paracell-1-" not in host.stderr
        instances = tracefs_top.listdir("instances")
        assert all(n in instances for n in namespaced)
        (tmp_path / "ns" / "go").touch()
    finally:
        stderr = finish(proc)
    assert proc.returncode == 0, stderr
    trace = load_trace(tmp_path / "ns" / "trace")
    assert trace.manifest.event_counts["syscalls"] > 0
    assert leftovers(tracefs_top, 1) == []
