"""Copy the binary per-CPU ring buffers to files while the command runs.

One thread polls every ``per_cpu/cpuN/trace_pipe_raw`` of our instances.
``poll`` on these files wakes when a buffer reaches the instance's
``buffer_percent`` fill level. A timer wakes it in any case, so a quiet
buffer is still drained. Each wake-up copies whole pages with non-blocking
reads until the buffer is empty, so the reader runs a few times a second
instead of once per event. Pages are decoded only after the command exits.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paracell.capture.session import Session
from paracell.errors import CaptureError

log = logging.getLogger("paracell.capture")

# Wake at least this often even when no buffer reached its fill level.
POLL_INTERVAL_MS = 250


@dataclass
class BufferFile:
    role: str
    cpu: int
    fd: int
    out_path: Path
    out_fd: int
    pages: int = 0


@dataclass
class RawReader:
    """Reads every per-CPU buffer of a session into files under ``spool_dir``."""

    session: Session
    spool_dir: Path
    files: list[BufferFile] = field(default_factory=list)
    error: BaseException | None = None
    wakeups: int = 0
    # CPU time the reader thread used, in seconds (set when it ends).
    cpu_s: float = 0.0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    native_id: int | None = None
    # A pipe that wakes the poll loop at once when stopping.
    _wake_r: int = -1
    _wake_w: int = -1
    _on_thread_start: Callable[[], None] | None = None

    def open(self) -> None:
        for role, inst in self.session.instances.items():
            for cpu in self.session.cpus:
                fd = inst.fs.open_read(f"per_cpu/cpu{cpu}/trace_pipe_raw")
                out_path = self.spool_dir / f"{role}-cpu{cpu}.raw"
                out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                self.files.append(BufferFile(role, cpu, fd, out_path, out_fd))
        self._wake_r, self._wake_w = os.pipe()

    def start(self, on_thread_start: Callable[[], None] | None = None) -> int:
        """Start the reader thread; return its thread id in this pid namespace.

        ``on_thread_start`` runs in the new thread before it reads anything
        (the capture writes the thread's pid marker there).
        """
        self._on_thread_start = on_thread_start
        self._thread = threading.Thread(
            target=self._run, name="paracell-reader", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            self._join()
            error, self.error = self.error, None
            if isinstance(error, CaptureError):
                raise error
            raise CaptureError(f"starting the trace reader failed: {error}")
        assert self.native_id is not None
        return self.native_id

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        try:
            if self._on_thread_start is not None:
                self._on_thread_start()
        except BaseException as exc:  # re-raised by start() in the caller
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = select.poll()
        by_fd = {f.fd: f for f in self.files}
        for f in self.files:
            poller.register(f.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stop.is_set():
                ready = poller.poll(POLL_INTERVAL_MS)
                self.wakeups += 1
                if not ready:
                    # Timer: drain everything, partial pages included.
                    for f in self.files:
                        self._drain(f)
                    continue
                for fd, _ in ready:
                    if fd in by_fd:
                        self._drain(by_fd[fd])
        except BaseException as exc:  # reported by stop() in the main thread
            self.error = exc
        finally:
            self.cpu_s = time.thread_time()

    def _drain(self, f: BufferFile) -> None:
        page_size = self.session.page_size
        while True:
            try:
                data = os.read(f.fd, page_size)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return
            if len(data) != page_size:
                # A short read would split a page; the kernel returns whole
                # pages when the request is one page long.
                data = data + bytes(page_size - len(data))
            os.write(f.out_fd, data)
            f.pages += 1

    def stop(self) -> None:
        """Stop the thread, copy what is left in the buffers, close the files."""
        self._join()
        error = self.error
        try:
            if error is None:
                for f in self.files:
                    self._drain(f)
        finally:
            self.close()
        log.info(
            "reader: %d wake-ups, %d pages, %.3f s CPU while the command ran",
            self.wakeups,
            sum(f.pages for f in self.files),
            self.cpu_s,
        )
        if error is not None:
            raise CaptureError(f"reading the trace buffers failed: {error}") from None

    def _join(self) -> None:
        """Stop the thread, if it runs, and wait for it."""
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop the thread and close every descriptor once; safe to call again."""
        # The thread polls these descriptors: it must end before they close.
        self._join()
        for f in self.files:
            _close(f.fd)
            _close(f.out_fd)
            f.fd = f.out_fd = -1
        _close(self._wake_r)
        _close(self._wake_w)
        self._wake_r = self._wake_w = -1


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError as exc:
            log.debug("closing descriptor %d: %s", fd, exc)
