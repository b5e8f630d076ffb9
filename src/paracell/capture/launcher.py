"""Start the traced command stopped, so tracing can be armed on its pid first.

A process forked from the capture is a copy of a large Python process
(numba and pyarrow loaded, hundreds of MiB mapped). If it called execve of
the command itself, the traced execve would spend milliseconds tearing that
address space down, and copy-on-write faults of the Python child would
precede it. So the forked child only restores default signal dispositions,
requests SIGKILL when the capture dies, writes its marker to a
``trace_marker`` (from which the parent learns its global pid), and
executes a trampoline: a static x86-64 program of a few hundred bytes,
held in a memfd, that stops itself with SIGSTOP. The parent waits until
the child is stopped, arms tracing on its pid and sends SIGCONT. The first
traced system call of the command is then ``execve`` from a one-page
address space, as from a small shell, with the user's argv and environment
unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import platform
import shutil
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from paracell.errors import CaptureError

log = logging.getLogger("paracell.capture")

# Python ignores SIGPIPE and may ignore SIGXFSZ; exec keeps ignored signals
# ignored, so the child restores the defaults a shell would give it.
_RESET_SIGNALS = ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP")
# prctl option from linux/prctl.h: signal the caller when its parent thread exits.
PR_SET_PDEATHSIG = 1
# memfd_create flag from linux/memfd.h (Linux 6.3+): executable even when
# the vm.memfd_noexec sysctl is 1. Older kernels reject it with EINVAL.
MFD_EXEC = 0x0010
# argv[0] of the trampoline; the command gets the user's argv[0].
TRAMPOLINE_NAME = "paracell-launch"
# The kernel names the task "memfd:" + this name (comm, up to 15 bytes)
# while the trampoline runs, so it shows as "memfd:paracell" in sched_switch.
_MEMFD_NAME = "paracell"
# Exit status of the trampoline when execve of the command fails after the
# checks made before fork, as a shell exits for a command it cannot run.
EXEC_FAILED_STATUS = 127


def _trampoline_code() -> bytes:
    """Return x86-64 machine code: stop, then execve(argv[1], &argv[2], envp).

    At the entry point the stack contains argc, argv[0..argc-1], NULL, envp
    (System V x86-64 ABI, 3.4.1). The sys_exit of ``kill`` is recorded
    before the stop takes effect, so after SIGCONT the next event of the
    task is the sys_enter of ``execve``.
    """
    return b"".join(
        [
            b"\xb8\x27\x00\x00\x00",  # mov eax, 39 (getpid)
            b"\x0f\x05",  # syscall
            b"\x89\xc7",  # mov edi, eax (pid)
            b"\xbe\x13\x00\x00\x00",  # mov esi, 19 (SIGSTOP)
            b"\xb8\x3e\x00\x00\x00",  # mov eax, 62 (kill)
            b"\x0f\x05",  # syscall
            b"\x48\x8b\x7c\x24\x10",  # mov rdi, [rsp+16] (argv[1]: path)
            b"\x48\x8d\x74\x24\x18",  # lea rsi, [rsp+24] (&argv[2])
            b"\x48\x8b\x0c\x24",  # mov rcx, [rsp] (argc)
            b"\x48\x8d\x54\xcc\x10",  # lea rdx, [rsp+8*rcx+16] (envp)
            b"\xb8\x3b\x00\x00\x00",  # mov eax, 59 (execve)
            b"\x0f\x05",  # syscall
            b"\xbf" + struct.pack("<I", EXEC_FAILED_STATUS),  # mov edi, 127
            b"\xb8\xe7\x00\x00\x00",  # mov eax, 231 (exit_group)
            b"\x0f\x05",  # syscall
        ]
    )


def trampoline_elf() -> bytes:
    """Return a static x86-64 ELF executable that runs :func:`_trampoline_code`.

    One PT_LOAD segment maps the whole file read-only and executable at
    0x400000; a PT_GNU_STACK header keeps the stack non-executable.
    """
    base = 0x400000
    ehdr_size, phdr_size, nr_phdrs = 64, 56, 2
    code = _trampoline_code()
    entry_off = ehdr_size + phdr_size * nr_phdrs
    size = entry_off + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, LE, SysV
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # e_type: ET_EXEC
        62,  # e_machine: EM_X86_64
        1,  # e_version
        base + entry_off,  # e_entry
        ehdr_size,  # e_phoff
        0,  # e_shoff: no section headers
        0,  # e_flags
        ehdr_size,
        phdr_size,
        nr_phdrs,
        0,  # e_shentsize
        0,  # e_shnum
        0,  # e_shstrndx
    )
    pf_x, pf_w, pf_r = 1, 2, 4
    load = struct.pack("<IIQQQQQQ", 1, pf_r | pf_x, 0, base, base, size, size, 4096)
    gnu_stack = struct.pack("<IIQQQQQQ", 0x6474E551, pf_r | pf_w, 0, 0, 0, 0, 0, 16)
    return ehdr + load + gnu_stack + code


def _trampoline_fd() -> int:
    """Return a close-on-exec memfd holding :func:`trampoline_elf`."""
    if platform.machine() != "x86_64":
        raise CaptureError(
            f"paracell trace starts commands through an x86-64 trampoline; "
            f"this machine is {platform.machine()}"
        )
    try:
        fd = os.memfd_create(_MEMFD_NAME, os.MFD_CLOEXEC | MFD_EXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise CaptureError(f"memfd_create failed: {exc.strerror}") from None
        fd = os.memfd_create(_MEMFD_NAME, os.MFD_CLOEXEC)
    os.write(fd, trampoline_elf())
    return fd


def _prctl() -> Callable[..., int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


@dataclass
class StoppedChild:
    """A forked child, stopped in the trampoline until :meth:`release`."""

    argv: list[str]
    # pid in this process's pid namespace (for kill and wait).
    pid: int = -1
    _released: bool = False
    _reaped: bool = False

    def spawn(self, marker_fd: int = -1, marker: bytes = b"") -> int:
        """Fork the child and wait until it is stopped; return its pid.

        When ``marker_fd`` is given, the child writes ``marker`` to it (and
        closes it) before this returns. Raises :class:`CaptureError` when
        the command is not found or the trampoline cannot start.
        """
        if not self.argv:
            raise CaptureError("no command given after --")
        path = resolve_command(self.argv[0])
        env = startup_environment()
        trampoline_argv = [TRAMPOLINE_NAME, path, *self.argv]
        # Resolved before fork: the child should not load libraries.
        prctl = _prctl()
        parent = os.getpid()
        trampoline = _trampoline_fd()
        err_r, err_w = os.pipe()
        try:
            pid = os.fork()
            if pid > 0:
                # Stored at once so that cancel() finds the child after an
                # interrupt at any later point.
                self.pid = pid
            else:  # pragma: no cover - runs in the child only
                try:
                    os.close(err_r)
                    for name in _RESET_SIGNALS:
                        if hasattr(signal, name):
                            signal.signal(getattr(signal, name), signal.SIG_DFL)
                    # Without this, a capture killed with SIGKILL leaves the
                    # command running. The setting survives execve, except of
                    # set-user-ID, set-group-ID or file-capability programs,
                    # and SIGKILL also ends a stopped task.
                    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                        raise OSError(ctypes.get_errno(), "prctl")
                    if os.getppid() != parent:
                        os._exit(127)  # the capture died before prctl took effect
                    if marker_fd >= 0:
                        os.write(marker_fd, marker)
                        # An open trace_marker would keep its instance busy.
                        os.close(marker_fd)
                    # err_w is close-on-exec: it reads as EOF once this succeeds.
                    os.execve(trampoline, trampoline_argv, env)
                except OSError as exc:
                    os.write(err_w, str(exc.errno).encode())
                except ValueError as exc:
                    os.write(err_w, str(exc).encode()[:200])
                finally:
                    os._exit(127)
        finally:
            os.close(trampoline)
            os.close(err_w)
        try:
            data = os.read(err_r, 64)
        finally:
            os.close(err_r)
        if data:
            self.cancel()
            text = data.decode(errors="replace")
            reason = os.strerror(int(text)) if text.isdigit() else text
            raise CaptureError(
                f"cannot prepare {self.argv[0]} for tracing: "
                f"starting the trampoline failed: {reason}"
            )
        self._wait_stopped()
        return pid

    def _wait_stopped(self) -> None:
        """Wait until the trampoline has stopped itself with SIGSTOP."""
        while True:
            _, status = os.waitpid(self.pid, os.WUNTRACED)
            if os.WIFSTOPPED(status):
                if os.WSTOPSIG(status) == signal.SIGSTOP:
                    return
                # A terminal stop (Ctrl-Z) before the trampoline's own
                # SIGSTOP: continue it so that it reaches that point.
                os.kill(self.pid, signal.SIGCONT)
                continue
            self._reaped = True
            raise CaptureError(
                f"cannot prepare {self.argv[0]} for tracing: the trampoline "
                f"exited with status {exit_status(status)} before it stopped"
            )

    def release(self) -> int:
        """Continue the stopped child; return CLOCK_MONOTONIC at release, in ns.

        The trampoline then calls execve of the command. That execve can
        still fail after the checks made before fork (a file that is neither
        an ELF binary nor a ``#!`` script, say); the command then exits with
        status 127 and the trace contains the failed execve.
        """
        start_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        os.kill(self.pid, signal.SIGCONT)
        self._released = True
        return start_ns

    def cancel(self) -> None:
        """Kill a child that was never released, and reap it."""
        if self.pid <= 0 or self._released or self._reaped:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self._reaped = True

    def wait(self) -> tuple[int, int]:
        """Wait for the child; return (wait status, CLOCK_MONOTONIC at exit in ns).

        A stopped command would make the capture wait with no sign of why,
        so each stop is logged with how to continue it.
        """
        while True:
            _, status = os.waitpid(self.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):
                break
            log.warning(
                "the traced command (pid %d) was stopped by signal %d; the capture "
                "waits until it ends (continue it with kill -CONT %d)",
                self.pid,
                os.WSTOPSIG(status),
                self.pid,
            )
        self._reaped = True
        return status, time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def resolve_command(name: str) -> str:
    """Return the path execve will run for ``name``; raise CaptureError if it cannot.

    Checked before anything is traced, with the messages a shell would give.
    A file that is neither an ELF binary nor a ``#!`` script is rejected too:
    a shell would run it with /bin/sh, but execve fails on it.
    """
    if "/" in name:
        if os.path.isdir(name):
            raise CaptureError(f"{name}: is a directory")
        if not os.path.exists(name):
            raise CaptureError(f"command not found: {name}")
        if not os.access(name, os.X_OK):
            raise CaptureError(
                f"{name}: permission denied (not executable)",
                hint=f"make it executable with chmod +x {name}",
            )
        path = name
    else:
        found = shutil.which(name)
        if found is None:
            raise CaptureError(f"command not found: {name}")
        path = found
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        # Execute-only files cannot be read; execve itself will judge them.
        return path
    if magic != b"\x7fELF" and not magic.startswith(b"#!"):
        raise CaptureError(
            f"{name}: neither an ELF binary nor a #! script, so execve cannot run it",
            hint=f"add a #! line, or trace it through a shell: -- sh {name}",
        )
    return path


def startup_environment() -> dict[bytes, bytes]:
    """Return the environment this process started with, for the command.

    Python changes os.environ at start-up (PEP 538 sets LC_CTYPE=C.UTF-8
    under the C locale) and paracell may set variables of its own, so the
    command gets /proc/self/environ, which setenv does not change. Entries
    that execve through Python cannot pass (no name) are dropped, with a
    warning.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env: dict[bytes, bytes] = {}
    for entry in raw.split(b"\0"):
        if not entry:
            continue
        name, sep, value = entry.partition(b"=")
        if not name or not sep:
            log.warning("not passing environment entry %r to the command", entry)
            continue
        env.setdefault(name, value)
    return env


def exit_status(wait_status: int) -> int:
    """Map a wait status to a shell-style exit status (128 + signal when killed)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)
