"""Start the traced command blocked, so tracing can be armed on its pid first.

The child is forked, restores default signal dispositions, and waits on a
pipe. The parent writes the child's pid into ``set_event_pid``, enables the
events and then writes one byte: the child's first traced system call is
the return of that ``read`` and its next is ``execve`` of the command.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass

from paracell.errors import CaptureError

log = logging.getLogger("paracell.capture")

# Python ignores SIGPIPE and may ignore SIGXFSZ; exec keeps ignored signals
# ignored, so the child restores the defaults a shell would give it.
_RESET_SIGNALS = ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP")


@dataclass
class BlockedChild:
    """A forked child waiting on a pipe before it execs ``argv``."""

    argv: list[str]
    pid: int = -1
    _go_w: int = -1
    _err_r: int = -1

    def spawn(self) -> int:
        """Fork the child; return its pid. It execs only after :meth:`release`."""
        if not self.argv:
            raise CaptureError("no command given after --")
        path = shutil.which(self.argv[0])
        if path is None:
            raise CaptureError(f"command not found: {self.argv[0]}")
        env = dict(os.environ)
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child only
            try:
                os.close(go_w)
                os.close(err_r)
                for name in _RESET_SIGNALS:
                    if hasattr(signal, name):
                        signal.signal(getattr(signal, name), signal.SIG_DFL)
                if os.read(go_r, 1) != b"x":
                    os._exit(127)
                os.execve(path, self.argv, env)
            except OSError as exc:
                os.write(err_w, str(exc.errno).encode())
            finally:
                os._exit(127)
        os.close(go_r)
        os.close(err_w)
        self.pid, self._go_w, self._err_r = pid, go_w, err_r
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
