"""paracell trace on the real kernel, checked against known ground truth.

These tests need root: they mount tracefs and create instances. The capture
runs as a subprocess through the CLI, as a user would run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from paracell.capture.syscall_table import SYSCALL_NR
from paracell.trace import load_trace
from tracefs_fixture import tracefs_top  # noqa: F401  (pytest fixture)

pytestmark = [
    pytest.mark.tracefs,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to use tracefs"),
]

# Files and events whose state a capture must leave as it found it.
_STATE_FILES = [
    "tracing_on",
    "set_event",
    "current_tracer",
    "trace_clock",
    "buffer_size_kb",
    "buffer_percent",
    "set_event_pid",
    "set_event_notrace_pid",
    "options/event-fork",
    "options/overwrite",
]
_STATE_EVENTS = [
    "raw_syscalls/sys_enter",
    "raw_syscalls/sys_exit",
    "exceptions/page_fault_user",
    "sched/sched_switch",
    "task/task_newtask",
    "kmem/mm_page_alloc",
    "kmem/mm_page_free",
    "kmem/mm_page_free_batched",
    "kmem/mm_page_alloc_zone_locked",
    "kmem/mm_page_pcpu_drain",
]


def _standard_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return sorted(
            line
            for line in f
            if line.split()[1]
            in ("/sys/kernel/tracing", "/sys/kernel/debug", "/sys/kernel/debug/tracing")
        )


def tracefs_state(top) -> dict[str, str]:  # type: ignore[no-untyped-def]
    state = {
        "mounts": "".join(_standard_mounts()),
        "instances": " ".join(top.listdir("instances")),
    }
    for rel in _STATE_FILES:
        state[rel] = top.read(rel)
    for event in _STATE_EVENTS:
        state[event] = top.read(f"events/{event}/enable")
    return state


def run_trace(
    out: Path, *command: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "paracell",
            "trace",
            "-o",
            str(out),
            *extra,
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_rare_syscalls_counted_exactly(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    """A forked child and a thread make known numbers of two rare calls."""
    n_child, n_thread = 37, 23
    script = write_script(
        tmp_path,
        "rare.py",
        f"""
        import os, sys, threading
        pid = os.fork()
        if pid == 0:
            for _ in range({n_child}):
                os.getpriority(os.PRIO_PROCESS, 0)
            os._exit(0)
        os.waitpid(pid, 0)
        def work():
            for _ in range({n_thread}):
                os.getsid(0)
        t = threading.Thread(target=work)
        t.start()
        t.join()
        with open(sys.argv[1], "w") as f:
            f.write(f"{{os.getpid()}} {{pid}} {{t.native_id}}")
        """,
    )
    ids = tmp_path / "ids"
    before = tracefs_state(tracefs_top)
    result = run_trace(tmp_path / "trace", sys.executable, str(script), str(ids))
    assert result.returncode == 0, result.stderr
    assert tracefs_state(tracefs_top) == before
    root, child, thread = (int(x) for x in ids.read_text().split())
    trace = load_trace(tmp_path / "trace", validate=True)
    assert trace.manifest.lost_total == 0
    sc = trace.table("syscalls").to_pydict()
    nr = np.array(sc["nr"])
    prio = np.flatnonzero(nr == SYSCALL_NR["getpriority"])
    sid = np.flatnonzero(nr == SYSCALL_NR["getsid"])
    assert prio.size == n_child
    assert sid.size == n_thread
    assert {sc["pid"][i] for i in prio} == {child}
    assert {sc["tid"][i] for i in prio} == {child}
    assert {sc["pid"][i] for i in sid} == {root}
    assert {sc["tid"][i] for i in sid} == {thread}
    assert {sc["ret"][i] for i in sid} == {os.getsid(0)}
    assert all(sc["complete"][i] for i in [*prio, *sid])
    # exit_group never returns: its rows are incomplete.
    exits = np.flatnonzero(nr == SYSCALL_NR["exit_group"])
    assert exits.size >= 2
    assert not any(sc["complete"][i] for i in exits)
    newtask = trace.table("task_newtask").to_pydict()
    assert child in newtask["child_tid"]
    assert thread in newtask["child_tid"]
    assert newtask["child_pid"][newtask["child_tid"].index(thread)] == root


def test_fresh_pages_fault_and_allocate(tmp_path: Path) -> None:
    n_pages = 3000
    script = write_script(
        tmp_path,
        "touch.py",
        f"""
        import ctypes, mmap, os, sys
        n = {n_pages}
        m = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_NOHUGEPAGE)
        ref = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(ref)
        del ref
        for i in range(n):
            m[i * 4096] = 1
        m.close()
        with open(sys.argv[1], "w") as f:
            f.write(f"{{os.getpid()}} {{addr}}")
        """,
    )
    ids = tmp_path / "ids"
    result = run_trace(tmp_path / "trace", sys.executable, str(script), str(ids))
    assert result.returncode == 0, result.stderr
    pid, addr = (int(x) for x in ids.read_text().split())
    trace = load_trace(tmp_path / "trace", validate=True)
    assert trace.manifest.lost_total == 0
    fault_addr = trace.column("page_fault_user", "address")
    fault_pid = trace.column("page_fault_user", "pid")
    inside = (
        (fault_pid == pid) & (fault_addr >= addr) & (fault_addr < addr + n_pages * 4096)
    )
    assert np.unique(fault_addr[inside] // 4096).size == n_pages
    alloc_pid = trace.column("mm_page_alloc", "pid")
    alloc_order = trace.column("mm_page_alloc", "order").astype(np.int64)
    alloc_pfn = trace.column("mm_page_alloc", "pfn")
    mine = alloc_pid == pid
    assert int((1 << alloc_order[mine]).sum()) >= n_pages
    # munmap frees them again; every free must be of a page the tree allocated.
    freed = np.isin(trace.column("mm_page_free", "pfn"), alloc_pfn)
    assert freed.all()
    assert freed.sum() >= n_pages


def test_batched_free_follows_page_free(tmp_path: Path) -> None:
    """On this kernel a batched free repeats an mm_page_free of the same page."""
    result = run_trace(
        tmp_path / "trace",
        sys.executable,
        "-c",
        "b = bytearray(64 << 20); b[::4096] = b'x' * (16 << 10); del b",
    )
    assert result.returncode == 0, result.stderr
    trace = load_trace(tmp_path / "trace")
    free_ts = trace.column("mm_page_free", "ts_ns")
    free_pfn = trace.column("mm_page_free", "pfn")
    batched_ts = trace.column("mm_page_free_batched", "ts_ns")
    batched_pfn = trace.column("mm_page_free_batched", "pfn")
    assert batched_pfn.size > 1000
    last_free: dict[int, int] = {}
    events = sorted(
        [(t, 0, p) for t, p in zip(free_ts.tolist(), free_pfn.tolist())]
        + [(t, 1, p) for t, p in zip(batched_ts.tolist(), batched_pfn.tolist())]
    )
    unmatched = 0
    for _, is_batched, pfn in events:
        if not is_batched:
            last_free[pfn] = 1
        elif last_free.pop(pfn, None) is None:
            unmatched += 1
    assert unmatched == 0


def test_exit_status_passed_through(tmp_path: Path) -> None:
    result = run_trace(
        tmp_path / "trace", "sh", "-c", "exit 7", extra=("--events", "syscalls")
    )
    assert result.returncode == 7, result.stderr
    trace = load_trace(tmp_path / "trace")
    assert trace.manifest.exit_status == 7
    assert trace.kinds == ["syscalls", "task_newtask"]
    assert trace.manifest.workload.name == "sh"


def test_sigterm_restores_tracefs(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    before = tracefs_state(tracefs_top)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paracell",
            "trace",
            "-o",
            str(tmp_path / "trace"),
            "--",
            "sleep",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        prefix = f"paracell-{proc.pid}-"
        while not any(n.startswith(prefix) for n in tracefs_top.listdir("instances")):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "capture never created its instances"
            time.sleep(0.05)
        time.sleep(0.5)  # let the child get to exec
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The command was killed by the forwarded SIGTERM: 128 + 15.
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert tracefs_state(tracefs_top) == before
    assert load_trace(tmp_path / "trace").manifest.exit_status == 128 + signal.SIGTERM


def test_stale_instance_removed(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    # No process can have this id (pid_max is at most 2**22).
    stale = "paracell-99999999-tree"
    tracefs_top.mkdir(f"instances/{stale}")
    try:
        result = run_trace(tmp_path / "trace", "true", extra=("--events", "syscalls"))
        assert result.returncode == 0, result.stderr
        assert stale not in tracefs_top.listdir("instances")
    finally:
        if stale in tracefs_top.listdir("instances"):
            tracefs_top.rmdir(f"instances/{stale}")


def test_missing_command_reports_error(tmp_path: Path) -> None:
    result = run_trace(tmp_path / "trace", "/nonexistent/command")
    assert result.returncode == 2
    assert "command not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "trace").exists()
