"""Start the traced command blocked, so tracing can be armed on its pid first.

The child is forked, restores default signal dispositions, asks for SIGKILL
when the capture dies, writes its marker to a ``trace_marker`` (from which
the parent learns its global pid), and waits on a pipe. The parent writes
that pid into ``set_event_pid``, enables the events and then writes one
byte: the child's first traced system call is the return of that ``read``
and its next is ``execve`` of the command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
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


def _prctl() -> Callable[..., int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


@dataclass
class BlockedChild:
    """A forked child waiting on a pipe before it execs ``argv``."""

    argv: list[str]
    # pid in this process's pid namespace (for kill and wait).
    pid: int = -1
    _go_w: int = -1
    _err_r: int = -1

    def spawn(self, marker_fd: int = -1, marker: bytes = b"") -> int:
        """Fork the child; return its pid. It execs only after :meth:`release`.

        When ``marker_fd`` is given, the child writes ``marker`` to it (and
        closes it) before this returns.
        """
        if not self.argv:
            raise CaptureError("no command given after --")
        path = shutil.which(self.argv[0])
        if path is None:
            raise CaptureError(f"command not found: {self.argv[0]}")
        env = dict(os.environ)
        # Resolved before fork: the child should not load libraries.
        prctl = _prctl()
        parent = os.getpid()
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child only
            try:
                os.close(go_w)
                os.close(err_r)
                os.close(ready_r)
                for name in _RESET_SIGNALS:
                    if hasattr(signal, name):
                        signal.signal(getattr(signal, name), signal.SIG_DFL)
                # Without this, a capture killed with SIGKILL leaves the
                # command running. The setting survives execve, except of
                # set-user-ID, set-group-ID or file-capability programs.
                if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl")
                if os.getppid() != parent:
                    os._exit(127)  # the capture died before prctl took effect
                if marker_fd >= 0:
                    os.write(marker_fd, marker)
                    # An open trace_marker would keep its instance busy.
                    os.close(marker_fd)
                os.write(ready_w, b"r")
                os.close(ready_w)
                if os.read(go_r, 1) != b"x":
                    os._exit(127)
                os.execve(path, self.argv, env)
            except OSError as exc:
                os.write(err_w, str(exc.errno).encode())
            finally:
                os._exit(127)
        os.close(go_r)
        os.close(err_w)
        os.close(ready_w)
        self.pid, self._go_w, self._err_r = pid, go_w, err_r
        try:
            ready = os.read(ready_r, 1)
        finally:
            os.close(ready_r)
        if ready != b"r":
            data = os.read(self._err_r, 64)
            self.cancel()
            reason = os.strerror(int(data)) if data.isdigit() else "it exited"
            raise CaptureError(f"cannot prepare {self.argv[0]} for tracing: {reason}")
        return pid

    def release(self) -> int:
        """Let the child exec; return CLOCK_MONOTONIC at release, in ns.

        Raises :class:`CaptureError` when exec fails (the child then exits 127).
        """
        start_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        os.write(self._go_w, b"x")
        os.close(self._go_w)
        self._go_w = -1
        # The error pipe closes on a successful exec (O_CLOEXEC) or carries errno.
        data = os.read(self._err_r, 64)
        os.close(self._err_r)
        self._err_r = -1
        if data:
            os.waitpid(self.pid, 0)
            err = int(data)
            raise CaptureError(f"cannot execute {self.argv[0]}: {os.strerror(err)}")
        return start_ns

    def cancel(self) -> None:
        """Make a child that was never released exit, and reap it."""
        if self._go_w >= 0:
            os.close(self._go_w)  # the child reads EOF and exits 127
            self._go_w = -1
        if self._err_r >= 0:
            os.close(self._err_r)
            self._err_r = -1
        if self.pid > 0:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass

    def wait(self) -> tuple[int, int]:
        """Wait for the child; return (wait status, CLOCK_MONOTONIC at exit in ns)."""
        while True:
            try:
                _, status = os.waitpid(self.pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
        return status, time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def exit_status(wait_status: int) -> int:
    """Map a wait status to a shell-style exit status (128 + signal when killed)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)
