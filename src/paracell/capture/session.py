"""Set up and tear down the tracefs instances of one capture.

Everything this module changes lives inside instances it creates, so
removing them restores the global tracing state. Instance names carry the
capture's token (see :mod:`paracell.capture.owner`), so that a later capture
can remove them when this one is killed with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from paracell.capture.events import SYSTEM, TREE, Tracepoint
from paracell.capture.formats import (
    EventFormat,
    PageLayout,
    parse_event_format,
    parse_page_layout,
)
from paracell.capture.owner import instance_name
from paracell.capture.tracefs import TraceFS
from paracell.errors import CaptureError

log = logging.getLogger("paracell.capture")

# CLOCK_MONOTONIC, so ts_ns can be compared with time.monotonic_ns().
TRACE_CLOCK = "mono"


@dataclass
class Instance:
    """One tracefs instance of ours: its accessor and the tracepoints it records."""

    role: str
    name: str
    fs: TraceFS
    tracepoints: list[Tracepoint] = field(default_factory=list)


@dataclass
class Session:
    """The instances of one capture and the layouts needed to decode them."""

    top: TraceFS
    instances: dict[str, Instance]
    formats: dict[Tracepoint, EventFormat]
    layout: PageLayout
    page_size: int
    cpus: list[int]

    def instance(self, role: str) -> Instance:
        return self.instances[role]


def check_tracepoints(
    top: TraceFS, tracepoints: list[Tracepoint]
) -> dict[Tracepoint, EventFormat]:
    """Read each tracepoint's format; raise :class:`CaptureError` for a missing one."""
    formats = {}
    for tp in tracepoints:
        if not top.exists(f"{tp.path}/format"):
            raise CaptureError(
                f"event {tp} does not exist on this kernel "
                f"({top.path(tp.path)} is missing)",
                hint="drop its kind with --events, or use a kernel that has it",
            )
        formats[tp] = parse_event_format(top.read(f"{tp.path}/format"), str(tp))
    return formats


def online_cpus(top: TraceFS) -> list[int]:
    """Return the CPU numbers that have a per-CPU buffer directory."""
    cpus = []
    for name in top.listdir("per_cpu"):
        m = re.fullmatch(r"cpu(\d+)", name)
        if m:
            cpus.append(int(m.group(1)))
    if not cpus:
        raise CaptureError(f"{top.path('per_cpu')} lists no CPUs")
    return sorted(cpus)


def subbuffer_size(fs: TraceFS) -> int:
    """Return the ring-buffer page size in bytes (``buffer_subbuf_size_kb``)."""
    if fs.exists("buffer_subbuf_size_kb"):
        text = fs.read("buffer_subbuf_size_kb").strip()
        if text.isdigit() and int(text) > 0:
            return int(text) * 1024
    return os.sysconf("SC_PAGE_SIZE")


def open_session(
    top: TraceFS,
    tracepoints: list[Tracepoint],
    buffer_kb: int,
    buffer_percent: int,
    token: str,
) -> Session:
    """Create our instances, set clock and buffer sizes; events stay disabled.

    The instances are named after the capture's ``token``. On any failure
    the instances created so far are removed again.
    """
    formats = check_tracepoints(top, tracepoints)
    layout = parse_page_layout(
        top.read("events/header_page"), top.read("events/header_event")
    )
    roles = [TREE, SYSTEM]
    session = Session(top, {}, formats, layout, 0, online_cpus(top))
    try:
        for role in roles:
            name = instance_name(token, role)
            inst = Instance(
                role,
                name,
                top.instance(name),
                [tp for tp in tracepoints if tp.instance == role],
            )
            # Registered before it exists: a signal arriving just after the
            # mkdir must still find it in the session and remove it.
            session.instances[role] = inst
            top.mkdir(f"instances/{name}")
            fs = inst.fs
            fs.write("tracing_on", "0")
            fs.write("trace_clock", TRACE_CLOCK)
            fs.write("buffer_size_kb", str(buffer_kb))
            fs.write("buffer_percent", str(buffer_percent))
            # Keep the oldest events when a buffer fills: losses then show
            # up in the "dropped events" counter of per_cpu/cpuN/stats.
            fs.write("options/overwrite", "0")
        session.page_size = subbuffer_size(session.instances[TREE].fs)
    except BaseException:
        close_session(session)
        raise
    return session


def arm_session(session: Session, child_pid: int, notrace_tids: list[int]) -> None:
    """Point the tree instance at ``child_pid``, enable events and start tracing.

    Both ids are global: tracefs compares them with the ids of the initial
    pid namespace.
    """
    tree = session.instances[TREE].fs
    tree.write("options/event-fork", "1")
    tree.write("set_event_pid", str(child_pid))
    system = session.instances[SYSTEM].fs
    if system.exists("set_event_notrace_pid"):
        system.write("set_event_notrace_pid", " ".join(str(t) for t in notrace_tids))
    else:
        log.warning(
            "set_event_notrace_pid is missing; the capture's own "
            "allocations are recorded and filtered out afterwards"
        )
    for role in (SYSTEM, TREE):
        inst = session.instances[role]
        for tp in inst.tracepoints:
            inst.fs.write(f"{tp.path}/enable", "1")
        inst.fs.write("tracing_on", "1")


def stop_session(session: Session) -> None:
    """Stop recording in every instance (events already written stay readable)."""
    for inst in session.instances.values():
        try:
            inst.fs.write("tracing_on", "0")
        except CaptureError as exc:
            log.warning("%s", exc)


def read_lost_events(session: Session) -> dict[str, dict[int, int]]:
    """Return events lost per instance role and CPU from ``per_cpu/cpuN/stats``."""
    lost: dict[str, dict[int, int]] = {}
    for role, inst in session.instances.items():
        lost[role] = {}
        for cpu in session.cpus:
            stats = parse_stats(inst.fs.read(f"per_cpu/cpu{cpu}/stats"))
            lost[role][cpu] = (
                stats.get("overrun", 0)
                + stats.get("commit overrun", 0)
                + stats.get("dropped events", 0)
            )
    return lost


def parse_stats(text: str) -> dict[str, int]:
    """Parse a per-CPU ``stats`` file into its integer counters."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if value.isdigit():
            out[key.strip()] = int(value)
    return out


def close_session(session: Session) -> None:
    """Disable events and remove our instances; log (not raise) what fails."""
    for role in list(session.instances)[::-1]:
        inst = session.instances.pop(role)
        try:
            inst.fs.write("tracing_on", "0")
        except CaptureError as exc:
            # Absent when a signal came between registration and mkdir.
            if session.top.dry_run or session.top.exists(f"instances/{inst.name}"):
                log.warning("cleanup: %s", exc)
        try:
            session.top.rmdir(f"instances/{inst.name}", missing_ok=True)
        except CaptureError as exc:
            log.warning("cleanup: %s", exc)
