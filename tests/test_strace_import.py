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
    # The unfinished read starts at its first line and lasts as -T says.
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
    done = subprocess.run(
        [
            "strace",
            "-f",
            "-ttt",
            "-T",
            "-o",
            str(log),
            sys.executable,
            str(script),
            str(ids),
        ],
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
