"""paracell trace on the real kernel, checked against known ground truth.

These tests need root: they mount tracefs and create instances. The capture
runs as a subprocess through the CLI, as a user would run it.

Other captures may run at the same time, for example another test run on
this machine. So the checks of what a capture leaves behind look at the
global tracefs settings and at what carries the capture's process id. The
whole list of instances or mounts can change in the meantime.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tracefs_fixture import tracefs_top  # noqa: F401  (pytest fixture)

from paracell.capture.owner import RUN_DIR
from paracell.capture.syscall_table import SYSCALL_NR
from paracell.trace import load_trace

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


def tracefs_state(top) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Global tracefs settings, which no capture may change."""
    state = {}
    for rel in _STATE_FILES:
        state[rel] = top.read(rel)
    for event in _STATE_EVENTS:
        state[event] = top.read(f"events/{event}/enable")
    return state


def leftovers(top, pid: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Everything named after the capture run by process ``pid`` that still exists."""
    token = f"{pid}-"
    found = [n for n in top.listdir("instances") if n.startswith(f"paracell-{token}")]
    if RUN_DIR.is_dir():
        found += [str(p) for p in RUN_DIR.iterdir() if p.name.startswith(token)]
    spool_dir = Path(tempfile.gettempdir())
    found += [str(p) for p in spool_dir.glob(f"paracell-spool-{token}*")]
    with open("/proc/self/mounts") as f:
        found += [ln for ln in f if f" {RUN_DIR}/{token}" in ln]
    return found


@dataclass
class TraceRun:
    returncode: int
    stdout: str
    stderr: str
    # Process id of the capture: the first part of its token.
    pid: int


def run_trace(
    out: Path,
    *command: str,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> TraceRun:
    proc = subprocess.Popen(
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
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return TraceRun(proc.returncode, stdout, stderr, proc.pid)


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
    assert leftovers(tracefs_top, result.pid) == []
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
        [(t, 0, p) for t, p in zip(free_ts.tolist(), free_pfn.tolist(), strict=True)]
        + [
            (t, 1, p)
            for t, p in zip(batched_ts.tolist(), batched_pfn.tolist(), strict=True)
        ]
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


# Upper bound for the command's first execve. Forked from the capture's
# Python process, it took 3-28 ms on Linux 6.18 (2-core PVM guest) because
# it tore down that large address space. From the trampoline it takes about
# 0.2 ms, so the bound leaves room for a loaded machine.
_FIRST_EXECVE_MAX_NS = 1_500_000


@pytest.mark.parametrize("command", [["true"], ["ls", "/"]])
def test_first_row_is_small_execve(tmp_path: Path, command: list[str]) -> None:
    """The command starts with its execve, as from a shell: no capture artefacts."""
    result = run_trace(
        tmp_path / "trace", *command, extra=("--events", "syscalls,faults")
    )
    assert result.returncode == 0, result.stderr
    trace = load_trace(tmp_path / "trace")
    sc = trace.table("syscalls")
    nr = sc.column("nr").to_numpy()
    assert nr.size > 0
    # The root pid is the first row's pid; the tree has no other process.
    root = int(sc.column("pid")[0].as_py())
    assert set(sc.column("pid").to_numpy().tolist()) == {root}
    assert nr[0] == SYSCALL_NR["execve"]
    assert sc.column("ret")[0].as_py() == 0
    assert sc.column("complete")[0].as_py()
    first_ts = int(sc.column("ts_ns")[0].as_py())
    duration = int(sc.column("duration_ns")[0].as_py())
    assert duration < _FIRST_EXECVE_MAX_NS, f"first execve took {duration} ns"
    # Copy-on-write faults of a forked Python process would come first.
    faults = trace.table("page_fault_user")
    fault_ts = faults.column("ts_ns").to_numpy()
    fault_pid = faults.column("pid").to_numpy()
    early = int(((fault_pid == root) & (fault_ts < first_ts)).sum())
    assert early == 0, f"{early} page faults precede the first execve"


def test_argv_and_environment_unchanged(tmp_path: Path) -> None:
    """The command gets the user's argv[0] and every environment entry."""
    env = dict(os.environ)
    # Not a valid shell variable name: a shell in between would drop it.
    env["PARACELL.TEST-VAR"] = "kept"
    # A shell in between would add PWD.
    env.pop("PWD", None)
    result = run_trace(
        tmp_path / "trace",
        "cat",
        "/proc/self/cmdline",
        "/proc/self/environ",
        extra=("--events", "syscalls"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    fields = result.stdout.split("\0")
    assert fields[:2] == ["cat", "/proc/self/cmdline"]
    assert "PARACELL.TEST-VAR=kept" in fields
    assert not any(f.startswith("PWD=") for f in fields)


def test_unexecutable_command_rejected(tmp_path: Path) -> None:
    """A file execve cannot run is an error before anything is traced."""
    script = tmp_path / "no-interpreter"
    script.write_bytes(b"\x00\x01 neither ELF nor #!\n")
    script.chmod(0o755)
    result = run_trace(tmp_path / "trace", str(script), extra=("--events", "syscalls"))
    assert result.returncode == 2, result.stderr
    assert "neither an ELF binary nor a #! script" in result.stderr
    assert not (tmp_path / "trace").exists()


def start_trace(out: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "paracell", "trace", "-o", str(out), "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str]) -> None:
    """Wait until the traced command created ``path``: it runs under tracing."""
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"the traced command never wrote {path}"
        time.sleep(0.05)


def test_sigterm_restores_tracefs(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    before = tracefs_state(tracefs_top)
    started = tmp_path / "started"
    proc = start_trace(
        tmp_path / "trace", "sh", "-c", f"touch {started}; exec sleep 60"
    )
    try:
        wait_for_file(started, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The command was killed by the forwarded SIGTERM: 128 + 15.
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert tracefs_state(tracefs_top) == before
    assert leftovers(tracefs_top, proc.pid) == []
    assert load_trace(tmp_path / "trace").manifest.exit_status == 128 + signal.SIGTERM


def _process_gone(pid: int) -> bool:
    """Return whether ``pid`` has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_sigkill_leftovers_removed_later(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    """A capture killed by SIGKILL takes its command along; the next one cleans up."""
    started = tmp_path / "started"
    proc = start_trace(
        tmp_path / "killed",
        "sh",
        "-c",
        f"echo $$ > {started}.tmp; mv {started}.tmp {started}; exec sleep 60",
    )
    try:
        wait_for_file(started, proc)
        command_pid = int(started.read_text())
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while not _process_gone(command_pid):
            assert time.monotonic() < deadline, "the traced command outlived paracell"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = leftovers(tracefs_top, proc.pid)
    assert any("-tree" in n for n in left), left
    assert any("paracell-spool-" in n for n in left), left
    assert any(n.endswith(".lock") for n in left), left

    result = run_trace(tmp_path / "next", "true", extra=("--events", "syscalls"))
    assert result.returncode == 0, result.stderr
    assert f"left by capture {proc.pid}-" in result.stderr
    assert leftovers(tracefs_top, proc.pid) == []
    assert not (tmp_path / "killed").exists()


def _remove_run_dir_if_empty() -> None:
    try:
        RUN_DIR.rmdir()
    except OSError:
        pass  # another capture uses it, or it is gone


def test_stale_leftovers_removed(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    """Leftovers whose lock file nobody holds go; so do 0.1 instances of dead pids."""
    token = "4194305-5a1e0000"  # above pid_max, so no live capture has it
    RUN_DIR.mkdir(mode=0o700, exist_ok=True)
    lock = RUN_DIR / f"{token}.lock"
    lock.write_text("")
    spool = Path(tempfile.mkdtemp(prefix=f"paracell-spool-{token}-"))
    (spool / "tree-cpu0.raw").write_bytes(bytes(4096))
    instance = f"paracell-{token}-tree"
    # No process can have this id (pid_max is at most 2**22).
    legacy = "paracell-99999999-tree"
    tracefs_top.mkdir(f"instances/{instance}")
    tracefs_top.mkdir(f"instances/{legacy}")
    try:
        result = run_trace(tmp_path / "trace", "true", extra=("--events", "syscalls"))
        assert result.returncode == 0, result.stderr
        instances = tracefs_top.listdir("instances")
        assert instance not in instances
        assert legacy not in instances
        assert not spool.exists()
        assert not lock.exists()
    finally:
        for name in (instance, legacy):
            if name in tracefs_top.listdir("instances"):
                tracefs_top.rmdir(f"instances/{name}")
        shutil.rmtree(spool, ignore_errors=True)
        lock.unlink(missing_ok=True)
        _remove_run_dir_if_empty()


def test_unprovable_leftovers_kept(tmp_path: Path, tracefs_top) -> None:  # noqa: F811
    """An instance whose owner holds its lock, or has no lock file, is left alone."""
    import fcntl

    live, unknown = "4194306-1b0c0000", "4194307-0e0e0000"
    RUN_DIR.mkdir(mode=0o700, exist_ok=True)
    lock = RUN_DIR / f"{live}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    names = [f"paracell-{live}-tree", f"paracell-{unknown}-tree"]
    for name in names:
        tracefs_top.mkdir(f"instances/{name}")
    try:
        result = run_trace(tmp_path / "trace", "true", extra=("--events", "syscalls"))
        assert result.returncode == 0, result.stderr
        instances = tracefs_top.listdir("instances")
        assert names[0] in instances
        assert names[1] in instances
        assert f"leaving tracefs instance {names[1]}" in result.stderr
        assert names[0] not in result.stderr
        assert lock.exists()
    finally:
        for name in names:
            if name in tracefs_top.listdir("instances"):
                tracefs_top.rmdir(f"instances/{name}")
        os.close(fd)
        lock.unlink(missing_ok=True)
        _remove_run_dir_if_empty()


def test_missing_command_reports_error(tmp_path: Path) -> None:
    result = run_trace(tmp_path / "trace", "/nonexistent/command")
    assert result.returncode == 2
    assert "command not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "trace").exists()


@pytest.mark.parametrize("delay_s", [0.3, 0.8, 1.5, 2.5])
def test_sigterm_any_phase_restores(
    tmp_path: Path,
    tracefs_top,  # noqa: F811
    delay_s: float,
) -> None:
    """SIGTERM at any moment (imports, setup, run) leaves tracefs as it was."""
    before = tracefs_state(tracefs_top)
    tag = f"PARACELL_TEST_RUN={os.getpid()}-{delay_s}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paracell",
            "trace",
            "-o",
            str(tmp_path / "t"),
            "--",
            "sleep",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, tag.split("=")[0]: tag.split("=")[1]},
    )
    time.sleep(delay_s)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr
    # 143 (128 + SIGTERM) in every phase; -15 if it came before Python
    # installed any handler.
    assert proc.returncode in (143, -signal.SIGTERM), stderr
    assert tracefs_state(tracefs_top) == before
    assert leftovers(tracefs_top, proc.pid) == []
    # A child stopped before release (or the command) must not outlive it.
    assert processes_with_env(tag) == []


def processes_with_env(entry: str) -> list[int]:
    """Return the pids of live processes whose environment contains ``entry``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        if entry.encode() in environ:
            found.append(int(name))
    return found


def test_lost_events_reported(tmp_path: Path) -> None:
    """A tiny buffer under a burst of system calls loses events, and says so."""
    # One producer sometimes leaves the reader enough time to keep up with a
    # 64 KiB buffer; two, one per CPU of a 2-CPU machine, lose about half.
    burst = write_script(
        tmp_path, "burst.py", "import os\nfor _ in range(500000): os.getppid()\n"
    )
    both = f"{sys.executable} {burst} & {sys.executable} {burst}; wait"
    result = run_trace(
        tmp_path / "trace",
        "sh",
        "-c",
        both,
        extra=("--buffer-kb", "64", "--events", "syscalls"),
    )
    assert result.returncode == 0, result.stderr
    trace = load_trace(tmp_path / "trace", validate=True)
    lost = trace.manifest.lost_events
    assert lost["total"] > 0
    assert lost["total"] == sum(v for k, v in lost.items() if k.startswith("cpu"))
    assert f"{lost['total']} events were lost" in result.stderr
    getppid = trace.column("syscalls", "nr") == SYSCALL_NR["getppid"]
    assert getppid.sum() < 1_000_000


def test_foreign_syscall_numbers_dropped(tmp_path: Path) -> None:
    """Numbers no x86-64 call has (here 5000) are dropped and counted in notes."""
    result = run_trace(
        tmp_path / "trace",
        sys.executable,
        "-c",
        "import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(3): libc.syscall(5000)",
        extra=("--events", "syscalls"),
    )
    assert result.returncode == 0, result.stderr
    trace = load_trace(tmp_path / "trace", validate=True)
    assert any("dropped 3 with numbers outside" in n for n in trace.manifest.notes)
    assert trace.column("syscalls", "nr").max() <= 1023


def test_without_root_names_fallback() -> None:
    """As user nobody, the capture stops with exit 2 and names the fallback."""
    # The interpreter's files may be unreadable for nobody (a pyenv under
    # /root), so everything the CLI imports is imported before the fork.
    import paracell.capture.record  # noqa: F401
    from paracell.cli import build_parser, main

    build_parser()

    workdir = Path(tempfile.mkdtemp(prefix="paracell-nobody-"))
    workdir.chmod(0o777)
    out = workdir / "trace"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, run the CLI in-process, report its status
        try:
            os.close(read_fd)
            # pytest replaces sys.stderr; the CLI prints its error there.
            sys.stderr = os.fdopen(write_fd, "w")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            status = main(["trace", "-o", str(out), "--", "true"])
            sys.stderr.flush()
            os._exit(status)
        except BaseException as exc:  # reported through the pipe
            os.write(write_fd, f"child failed: {exc!r}".encode())
        finally:
            os._exit(99)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        stderr = pipe.read()
    _, status = os.waitpid(pid, 0)
    created = out.exists()
    shutil.rmtree(workdir)

    assert os.waitstatus_to_exitcode(status) == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "root" in lines[0]
    assert "strace -f -ttt -T -o LOG CMD" in lines[0]
    assert "paracell import-strace LOG -o DIR" in lines[0]
    assert not created


def test_stopped_command_is_reported(tmp_path: Path) -> None:
    """A command that stops itself gets a warning with the pid to continue."""
    proc = start_trace(tmp_path / "trace", "sh", "-c", "kill -STOP $$; echo resumed")
    assert proc.stderr is not None
    warning = ""
    for line in proc.stderr:
        if "was stopped by signal" in line:
            warning = line
            break
    assert warning, proc.communicate()[1]
    pid = int(re.search(r"kill -CONT (\d+)", warning).group(1))  # type: ignore[union-attr]
    os.kill(pid, signal.SIGCONT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "resumed" in out
