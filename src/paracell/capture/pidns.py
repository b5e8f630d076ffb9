"""Global task ids: the ids the kernel's tracing uses, whatever pid namespace we are in.

tracefs records ``common_pid`` and matches ``set_event_pid`` and
``set_event_notrace_pid`` against ids of the initial pid namespace. Inside
a pid namespace ``getpid()`` returns another number, and /proc may list
that namespace's ids. So each task whose global id the capture needs writes
a marker to the ``trace_marker`` file of a short-lived instance of our own,
and the capture reads the ``common_pid`` of the marker records back from
its ring buffer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from paracell.capture.formats import EventFormat, PageLayout, parse_event_format
from paracell.capture.ringbuf import decode_pages
from paracell.capture.tracefs import TraceFS
from paracell.errors import CaptureError

log = logging.getLogger("paracell.capture")

# Inode number of the initial pid namespace (PROC_PID_INIT_INO in
# include/linux/proc_ns.h, fixed since Linux 3.8).
INIT_PID_NS_INO = 0xEFFFFFFC
# The event type of trace_marker records.
PRINT_FORMAT = "events/ftrace/print/format"


def in_init_pid_ns() -> bool:
    """Return whether this process runs in the initial pid namespace.

    A true result also means /proc lists global ids: a proc mounted for a
    child namespace has no ``self`` entry for a process outside it. Inside a
    pid namespace this returns False even where /proc happens to be the
    initial namespace's.
    """
    try:
        return os.stat("/proc/self/ns/pid").st_ino == INIT_PID_NS_INO
    except OSError:
        return False


@dataclass
class PidProbe:
    """A tracefs instance whose ``trace_marker`` records reveal global task ids.

    :meth:`open` creates the instance and opens ``trace_marker``. Each task
    whose id is needed writes the :meth:`marker` of its tag to that
    descriptor: a forked child before exec, or a thread of ours. Then
    :meth:`collect` maps each tag to the ``common_pid`` the kernel recorded.
    """

    top: TraceFS
    name: str
    layout: PageLayout
    page_size: int
    cpus: list[int]
    token: str
    marker_fd: int = -1
    _created: bool = False
    _fs: TraceFS | None = field(default=None, repr=False)

    def open(self) -> None:
        if not self.top.exists(PRINT_FORMAT):
            raise CaptureError(
                f"{self.top.path(PRINT_FORMAT)} is missing, so the capture cannot "
                "learn the kernel's id of the traced command"
            )
        # Marked first so that a signal just after the mkdir still cleans up.
        self._created = True
        self.top.mkdir(f"instances/{self.name}")
        self._fs = self.top.instance(self.name)
        self._fs.write("tracing_on", "1")
        self.marker_fd = self._fs.open_write("trace_marker")

    def marker(self, tag: str) -> bytes:
        return f"paracell-id {self.token} {tag}".encode()

    def mark(self, tag: str) -> None:
        """Write the marker of ``tag`` from the calling thread."""
        try:
            os.write(self.marker_fd, self.marker(tag))
        except OSError as exc:
            path = self.top.path(f"instances/{self.name}/trace_marker")
            raise CaptureError(f"cannot write to {path}: {exc.strerror}") from None

    def collect(self, tags: list[str]) -> dict[str, int]:
        """Return the global id of the task that wrote each tag's marker."""
        assert self._fs is not None
        self._fs.write("tracing_on", "0")
        fmt = parse_event_format(self.top.read(PRINT_FORMAT), "ftrace:print")
        found: dict[str, int] = {}
        for cpu in self.cpus:
            data = self._read_cpu(cpu)
            if data:
                found.update(self._markers(data, fmt, cpu))
        missing = [t for t in tags if t not in found]
        if missing:
            raise CaptureError(
                f"no trace_marker record from {', '.join(missing)} reached "
                f"{self.top.path(f'instances/{self.name}')}, so the capture cannot "
                "learn the kernel's task ids; without them the pid filter would "
                "record nothing"
            )
        log.debug("global task ids: %s", found)
        return {t: found[t] for t in tags}

    def _read_cpu(self, cpu: int) -> bytes:
        assert self._fs is not None
        fd = self._fs.open_read(f"per_cpu/cpu{cpu}/trace_pipe_raw")
        chunks = []
        try:
            while True:
                try:
                    data = os.read(fd, self.page_size)
                except BlockingIOError:
                    break
                if not data:
                    break
                chunks.append(data.ljust(self.page_size, b"\0"))
        finally:
            os.close(fd)
        return b"".join(chunks)

    def _markers(self, data: bytes, fmt: EventFormat, cpu: int) -> dict[str, int]:
        buf = np.frombuffer(data, dtype=np.uint8).copy()
        source = self.top.path(f"instances/{self.name}/per_cpu/cpu{cpu}")
        pages = decode_pages(buf, self.page_size, self.layout, source=str(source))
        pid_field = fmt.field("common_pid")
        text_field = fmt.field("buf")
        prefix = self.marker("")
        out = {}
        for i in np.flatnonzero(pages.type_id == fmt.id).tolist():
            start = int(pages.offset[i])
            end = start + int(pages.length[i])
            record = bytes(buf[start:end])
            text = record[text_field.offset :].split(b"\0", 1)[0].rstrip(b"\n")
            if text.startswith(prefix):
                pid_bytes = record[pid_field.offset : pid_field.offset + 4]
                out[text[len(prefix) :].decode()] = int.from_bytes(
                    pid_bytes, "little", signed=True
                )
        return out

    def close(self) -> None:
        """Close the marker descriptor and remove the instance; safe to call again."""
        if self.marker_fd >= 0:
            os.close(self.marker_fd)
            self.marker_fd = -1
        if self._created:
            self._created = False
            try:
                self.top.rmdir(f"instances/{self.name}", missing_ok=True)
            except CaptureError as exc:
                log.warning("cleanup: %s", exc)
