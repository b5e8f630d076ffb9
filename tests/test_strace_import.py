"""strace -f -ttt -T logs: hand-written edge cases and a real log."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from paracell.capture.strace import import_strace, parse_strace_log
from paracell.capture.syscall_table import SYSCALL_NR
from paracell.errors import TraceFormatError
from paracell.trace import load_trace

EDGE_LOG = """\
100  1700000000.000100 execve("/bin/x", ["x"], 0x7ffd /* 3 vars */) = 0 <0.000200>
100  1700000000.000400 openat(AT_FDCWD, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory) <0.000010>
100  1700000000.000500 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000 <0.000005>
100  1700000000.000600 clone3({flags=CLONE_VM|CLONE_THREAD|CLONE_SIGHAND, exit_signal=0}, 88) = 101 <0.000030>
100  1700000000.000700 clone(child_stack=NULL, flags=CLONE_CHILD_SETTID|SIGCHLD) = 102 <0.000040>
101  1700000000.000800 read(3,  <unfinished ...>
100  1700000000.000900 write(1, "a) = 5 <1.0>", 12) = 12 <0.000003>
101  1700000000.001000 <... read resumed>"abc", 4096) = 3 <0.000200>
102  1700000000.001100 --- SIGUSR1 {si_signo=SIGUSR1, si_code=SI_USER} ---
102  1700000000.001200 futex(0x1, FUTEX_WAIT, 0, NULL <unfinished ...>
102  1700000000.001300 +++ killed by SIGKILL +++
100  1700000000.001400 wait4(-1, 0x7ffd, 0, NULL) = ? ERESTARTSYS (To be restarted if SA_RESTART is set) <0.000100>
100  1700000000.001500 syscall_0x1c7(0x1, 0x2) = -1 ENOSYS (Function not implemented) <0.000002>
100  1700000000.001600 exit_group(0)                 = ?
100  1700000000.001700 +++ exited with 0 +++
"""


def write(tmp_path: Path, text: str, name: str = "run.log") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_edge_cases(tmp_path: Path) -> None:
    trace = import_strace(write(tmp_path, EDGE_LOG), tmp_path / "t", name="edge")
    sc = trace.table("syscalls").to_pydict()
    names = {v: k for k, v in SYSCALL_NR.items()}
    rows = {names.get(n, str(n)): i for i, n in enumerate(sc["nr"])}
    assert sc["ret"][rows["openat"]] == -errno.ENOENT
    assert sc["ret"][rows["mmap"]] == 0x7F0000000000
    # The unfinished read starts at its first line and lasts as long as its -T value.
    read = rows["read"]
    assert sc["ts_ns"][read] == 1_700_000_000_000_800_000
    assert sc["duration_ns"][read] == 200_000
    assert sc["ret"][read] == 3
    # A quoted ") = 5 <1.0>" inside the arguments does not fool the parser.
    assert sc["ret"][rows["write"]] == 12
    assert sc["duration_ns"][rows["write"]] == 3_000
    # The thread (CLONE_THREAD) shares the caller's pid; the fork does not.
    assert sc["pid"][read] == 100
    assert sc["tid"][read] == 101
    futex = rows["futex"]
    assert sc["pid"][futex] == 102
    assert not sc["complete"][futex]
    assert not sc["complete"][rows["wait4"]]  # "= ?" with a restart code
    assert not sc["complete"][rows["exit_group"]]
    assert 0x1C7 in sc["nr"]
    assert trace.manifest.exit_status == 0
    assert trace.manifest.clock == "wall"
    assert trace.manifest.source == "strace"
    assert len(sc["nr"]) == 11
    assert sc["ts_ns"] == sorted(sc["ts_ns"])


def test_log_without_pids(tmp_path: Path) -> None:
    log = (
        "1700000000.000100 getpid() = 5 <0.000001>\n"
        "1700000000.000200 exit_group(0) = ?\n"
        "1700000000.000300 +++ exited with 3 +++\n"
    )
    trace = import_strace(write(tmp_path, log), tmp_path / "t")
    assert trace.table("syscalls").column("tid").to_pylist() == [0, 0]
    assert trace.manifest.exit_status == 3
    assert any("without -f" in n for n in trace.manifest.notes)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("100 12:00:00.000001 getpid() = 5 <0.000001>", "record with -ttt"),
        ("100 1700000000.000100 getpid() <0.000001>", "has no '= RESULT'"),
        ("100 1700000000.000100 getpid() = 5", "record with -T"),
        ("hello world", "not an strace -f -ttt -T line"),
        (
            "100 1700000000.000100 <... read resumed>) = 1 <0.1>\n"
            "100 1700000000.000200 <... open resumed>) = 1 <0.1>",
            "not an strace",
        ),
    ],
)
def test_garbled_line_named(tmp_path: Path, line: str, message: str) -> None:
    path = write(
        tmp_path, "100 1700000000.000000 getpid() = 100 <0.000001>\n" + line + "\n"
    )
    if message == "not an strace" and "resumed" in line:
        # Resuming a different call than the one left unfinished is garbage too.
        path.write_text(
            "100 1700000000.000000 read(3, <unfinished ...>\n"
            "100 1700000000.000200 <... open resumed>) = 1 <0.1>\n"
        )
        message = "resumes open but the unfinished call of task 100 was read"
    with pytest.raises(TraceFormatError, match=message) as info:
        parse_strace_log(path)
    assert f"{path}:2" in str(info.value)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_real_strace_log(tmp_path: Path) -> None:
    n_child, n_thread = 19, 11
    script = tmp_path / "work.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys, threading
        pid = os.fork()
        if pid == 0:
            for _ in range({n_child}):
                os.getpriority(os.PRIO_PROCESS, 0)
            os._exit(4)
        os.waitpid(pid, 0)
        t = threading.Thread(target=lambda: [os.getsid(0) for _ in range({n_thread})])
        t.start()
        t.join()
        with open(sys.argv[1], "w") as f:
            f.write(f"{{os.getpid()}} {{pid}} {{t.native_id}}")
        sys.exit(5)
        """)
    )
    log = tmp_path / "strace.log"
    ids = tmp_path / "ids"
    command = ["strace", "-f", "-ttt", "-T", "-o", str(log)]
    done = subprocess.run(
        [*command, sys.executable, str(script), str(ids)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 5 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 5, done.stderr

    root, child, thread = (int(x) for x in ids.read_text().split())
    trace = import_strace(log, tmp_path / "t")
    sc = trace.table("syscalls").to_pydict()
    nr = np.array(sc["nr"])
    prio = np.flatnonzero(nr == SYSCALL_NR["getpriority"])
    sid = np.flatnonzero(nr == SYSCALL_NR["getsid"])

    assert prio.size == n_child
    assert sid.size == n_thread
    assert {sc["pid"][i] for i in prio} == {child}
    assert {sc["pid"][i] for i in sid} == {root}
    assert {sc["tid"][i] for i in sid} == {thread}
    assert {sc["ret"][i] for i in sid} == {os.getsid(0)}

    # Every call line of the log became one row.
    lines = log.read_text().splitlines()
    calls = [
        ln
        for ln in lines
        if "+++" not in ln and " --- " not in ln and "resumed>" not in ln
    ]
    assert len(sc["nr"]) == len(calls)
    assert trace.manifest.exit_status == 5


def test_split_clone_keeps_thread_pid(tmp_path: Path) -> None:
    """clone3 flags on the unfinished line still make the new task a thread."""
    log = (
        "100 1700000000.000100 clone3({flags=CLONE_VM|CLONE_THREAD|CLONE_SIGHAND, "
        "exit_signal=0}, 88 <unfinished ...>\n"
        "101 1700000000.000150 getsid(0) = 7 <0.000001>\n"
        "100 1700000000.000200 <... clone3 resumed> => {parent_tid=[101]}, 88) = 101 "
        "<0.000100>\n"
        "101 1700000000.000300 getsid(0) = 7 <0.000001>\n"
    )
    trace = import_strace(write(tmp_path, log), tmp_path / "t")
    sc = trace.table("syscalls").to_pydict()
    sid = [i for i, n in enumerate(sc["nr"]) if n == SYSCALL_NR["getsid"]]
    assert [sc["tid"][i] for i in sid] == [101, 101]
    assert [sc["pid"][i] for i in sid] == [100, 100]


def test_start_is_earliest_time(tmp_path: Path) -> None:
    """A resumed call without its first line starts before the first line."""
    log = (
        '100 1700000000.000500 <... read resumed>"x", 1) = 1 <0.000400>\n'
        "101 1700000000.000300 getpid() = 101 <0.000001>\n"
    )
    trace = import_strace(write(tmp_path, log), tmp_path / "t")
    ts = trace.column("syscalls", "ts_ns")
    assert trace.manifest.start_ts_ns == 1_700_000_000_000_100_000
    assert ts.min() == trace.manifest.start_ts_ns
    assert trace.manifest.end_ts_ns == 1_700_000_000_000_500_000
    load_trace(tmp_path / "t", validate=True)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1 99999999999999999999.000001 getpid() = 1 <0.000001>", "timestamp is out"),
        ("1 1700000000.000001 getpid() = 99999999999999999999 <0.000001>", "64-bit"),
        ("1 1700000000.000001 mmap() = 0x1ffffffffffffffff <0.000001>", "64 bits"),
        ("1 1700000000.000001 getpid() = 1 <99999999999.000001>", "duration is out"),
        ("9999999999 1700000000.000001 getpid() = 1 <0.000001>", "larger than"),
        ("1 1700000000.000001 getpid() = 1 <-0.000001>", "<-0.000001> is negative"),
        ("1 0.000001 <... read resumed>) = 1 <0.5>", "before time 0"),
    ],
)
def test_bad_value_named_with_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "1 1700000000.000000 getpid() = 1 <0.000001>\n" + line)
    with pytest.raises(TraceFormatError, match=message) as info:
        import_strace(path, tmp_path / "t")
    assert f"{path}:2" in str(info.value)
    assert not (tmp_path / "t").exists()


def test_only_unknown_calls_rejected(tmp_path: Path) -> None:
    log = (
        "1 1700000000.000001 frobnicate(1) = 0 <0.000001>\n"
        "1 1700000000.000002 twiddle() = 0 <0.000001>\n"
        "1 1700000000.000003 syscall_0x1388() = -1 ENOSYS (Function not "
        "implemented) <0.000001>\n"
    )
    with pytest.raises(TraceFormatError) as info:
        import_strace(write(tmp_path, log), tmp_path / "t")
    text = str(info.value)
    assert "no known x86-64 system calls" in text
    assert "frobnicate, twiddle" in text
    assert "calls numbered outside 0-1023: 1" in text
    assert not (tmp_path / "t").exists()


def test_log_without_calls_rejected(tmp_path: Path) -> None:
    for text in ("", "1 1700000000.000001 +++ exited with 0 +++\n"):
        path = write(tmp_path, text)
        with pytest.raises(TraceFormatError, match="no system calls found"):
            import_strace(path, tmp_path / "t")


def test_foreign_number_dropped(tmp_path: Path) -> None:
    log = (
        "1 1700000000.000001 getpid() = 1 <0.000001>\n"
        "1 1700000000.000002 syscall_0x1388() = -1 ENOSYS (Function not "
        "implemented) <0.000001>\n"
    )
    trace = import_strace(write(tmp_path, log), tmp_path / "t")
    assert trace.column("syscalls", "nr").tolist() == [SYSCALL_NR["getpid"]]
    assert any("dropped 1 with numbers outside" in n for n in trace.manifest.notes)


def test_cut_last_line_ignored(tmp_path: Path) -> None:
    # A log whose writer was killed mid-line: every call before it is kept.
    cut = EDGE_LOG.rstrip("\n").rsplit("\n", 1)[0] + "\n100  1700000000.001800 close(3"
    log = parse_strace_log(write(tmp_path, cut))
    full = parse_strace_log(write(tmp_path, EDGE_LOG, "full.log"))
    assert log.incomplete_last_line == len(cut.splitlines())
    assert log.nr == full.nr


def test_cut_line_with_newline_rejected(tmp_path: Path) -> None:
    # The same line with its newline is a garbled log, not a cut one.
    text = EDGE_LOG + "100  1700000000.001800 close(3\n"
    with pytest.raises(TraceFormatError, match="has no '= RESULT'"):
        parse_strace_log(write(tmp_path, text))
