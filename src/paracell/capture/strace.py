"""Convert an ``strace -f -ttt -T`` log into a trace with a syscalls table.

This is the fallback where tracefs is not available (no root, or a kernel
without tracing). Each line of such a log is one of::

    [PID ]SECONDS.USEC NAME(ARGS) = RET[ ERRNO (TEXT)] <DURATION>
    [PID ]SECONDS.USEC NAME(ARGS <unfinished ...>
    [PID ]SECONDS.USEC <... NAME resumed>ARGS) = RET <DURATION>
    [PID ]SECONDS.USEC --- SIGNAL {...} ---
    [PID ]SECONDS.USEC +++ exited with N +++      (or killed by SIG, ...)

The leading pid is present with ``-f`` once a second task exists. strace
shows error returns as ``-1 ENAME``; the table stores the kernel's own
``-errno``. ``= ?`` (``exit_group``, a task killed inside a call) gives an
incomplete row. Timestamps are wall-clock (``-ttt``), so the manifest's
clock is ``wall``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from paracell import __version__
from paracell.capture import sysinfo
from paracell.capture.syscall_table import SYSCALL_NR
from paracell.errors import TraceFormatError
from paracell.trace.manifest import Manifest, Workload
from paracell.trace.schema import MAX_SYSCALL_NR, arrow_schema
from paracell.trace.store import Trace, check_output, write_trace

_log = logging.getLogger("paracell.capture.strace")

_PREFIX = re.compile(
    r"^(?:(?P<pid>\d+)\s+)?(?P<sec>\d+)\.(?P<frac>\d+)\s+(?P<body>.*)$"
)
_TT_PREFIX = re.compile(r"^(?:\d+\s+)?\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\s")
_CALL = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)\((?P<args>.*)$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>[a-z_][a-z0-9_]*) resumed>(?P<args>.*)$")
# The end of a finished call: ") = RET[ rest] <DURATION>"; the greedy match
# of the arguments before it finds the last such tail on the line.
_RESULT = re.compile(
    r"^(?P<args>.*)\)\s+=\s+(?P<ret>0x[0-9a-fA-F]+|-?\d+|\?)(?P<rest>.*?)"
    r"(?:\s+<(?P<dur>-?\d+\.\d+|unavailable)>)?\s*$"
)
_UNFINISHED = re.compile(r"<unfinished \.\.\.>\)?\s*$")
_ERRNO_NAME = re.compile(r"^\s+(?P<name>E[A-Z0-9_]+)\b")
_UNKNOWN_SYSCALL = re.compile(r"^syscall_(0x[0-9a-f]+|\d+)$")
_CLONE_CALLS = ("clone", "clone3", "fork", "vfork")

# Limits of the syscalls table's columns, checked per line so that a bad
# value is reported with its line instead of failing the Arrow conversion.
_INT64_MAX = 2**63 - 1
# PID_MAX_LIMIT of 64-bit kernels, the maximum of the pid and tid columns.
_TID_MAX = 2**22

# Kernel-internal restart codes that strace may show (include/linux/errno.h).
_KERNEL_ERRNO = {
    "ERESTARTSYS": 512,
    "ERESTARTNOINTR": 513,
    "ERESTARTNOHAND": 514,
    "ENOIOCTLCMD": 515,
    "ERESTART_RESTARTBLOCK": 516,
}


@dataclass
class _Pending:
    name: str
    ts_ns: int
    line_no: int
    # Arguments printed before "<unfinished ...>": clone's flags are there.
    args: str = ""


@dataclass
class StraceLog:
    """Rows parsed from a log, in file order."""

    ts_ns: list[int] = field(default_factory=list)
    tid: list[int] = field(default_factory=list)
    nr: list[int] = field(default_factory=list)
    ret: list[int] = field(default_factory=list)
    duration_ns: list[int] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)
    # Thread-group id of each task seen; threads come from clone(CLONE_THREAD).
    tgid: dict[int, int] = field(default_factory=dict)
    # Smallest and largest time of any line or call, in ns: the trace's
    # start and end. A resumed call without its first line starts before
    # its own line.
    first_ts_ns: int | None = None
    last_ts_ns: int = 0
    unknown_names: set[str] = field(default_factory=set)
    # Calls whose number no x86-64 system call has (syscall_0x...), skipped.
    foreign_numbers: int = 0
    exit_status: int | None = None
    root_tid: int | None = None
    # Line number of a last line cut short without its newline, if ignored.
    incomplete_last_line: int | None = None


def parse_strace_log(path: Path) -> StraceLog:
    """Parse a log; raise :class:`TraceFormatError` naming file and line when bad."""
    log = StraceLog()
    pending: dict[int, _Pending] = {}
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise TraceFormatError(
            path, f"cannot read strace log: {exc.strerror}"
        ) from None
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            try:
                _parse_line(path, line_no, line, log, pending)
            except _IncompleteLine as exc:
                # Only the last line can lack its newline: strace was killed
                # while writing it. The calls before it are still good.
                if raw.endswith("\n"):
                    raise exc.error from None
                _log.warning(
                    "%s:%d: ignored the incomplete last line %r",
                    path,
                    line_no,
                    line[:80],
                )
                log.incomplete_last_line = line_no
    # Calls still unfinished at the end never returned (exit_group, a kill).
    for tid, p in pending.items():
        _add_row(log, p.ts_ns, tid, p.name, 0, 0, False, path, p.line_no)
    if not log.nr:
        if log.unknown_names or log.foreign_numbers:
            names = sorted(log.unknown_names)
            listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            parts = [f"unknown names: {listed}"] if names else []
            if log.foreign_numbers:
                parts.append(
                    f"calls numbered outside 0-{MAX_SYSCALL_NR}: {log.foreign_numbers}"
                )
            raise TraceFormatError(
                path,
                "no known x86-64 system calls found in the strace log "
                f"({'; '.join(parts)})",
                hint="record an x86-64 program with strace -f -ttt -T -o LOG CMD",
            )
        raise TraceFormatError(
            path,
            "no system calls found in the strace log",
            hint="record with strace -f -ttt -T -o LOG CMD",
        )
    return log


class _IncompleteLine(Exception):
    """A call line that stops before its result; carries the error to report."""

    def __init__(self, error: TraceFormatError) -> None:
        super().__init__(str(error))
        self.error = error


def _fail(path: Path, line_no: int, line: str, reason: str) -> TraceFormatError:
    text = line if len(line) <= 120 else line[:117] + "..."
    return TraceFormatError(f"{path}:{line_no}", f"{reason}: {text!r}")


def _parse_line(
    path: Path, line_no: int, line: str, log: StraceLog, pending: dict[int, _Pending]
) -> None:
    m = _PREFIX.match(line)
    if m is None:
        if _TT_PREFIX.match(line):
            raise _fail(
                path,
                line_no,
                line,
                "timestamps are not seconds since the epoch; record with -ttt",
            )
        raise _IncompleteLine(
            _fail(path, line_no, line, "not an strace -f -ttt -T line")
        )
    ts_ns = _seconds_to_ns(m.group("sec"), m.group("frac"))
    if ts_ns > _INT64_MAX:
        raise _fail(path, line_no, line, "timestamp is out of range")
    pid_text = m.group("pid")
    # A line without a pid (a log recorded without -f) belongs to the root
    # task. Its pid is taken from the first line that has one.
    tid = int(pid_text) if pid_text is not None else 0
    if tid > _TID_MAX:
        raise _fail(path, line_no, line, f"pid {tid} is larger than {_TID_MAX}")
    if log.root_tid is None and pid_text is not None:
        log.root_tid = tid
    body = m.group("body")
    _note_time(log, ts_ns)

    if body.startswith("---") and body.endswith("---"):
        return  # a signal delivery or stop
    if body.startswith("+++") and body.endswith("+++"):
        em = re.match(r"\+\+\+ exited with (\d+) \+\+\+", body)
        km = re.match(r"\+\+\+ killed by (SIG\w+)", body)
        if tid in (0, log.root_tid):
            if em:
                log.exit_status = int(em.group(1))
            elif km:
                import signal

                sig = getattr(signal, km.group(1), None)
                log.exit_status = 128 + int(sig) if sig is not None else None
        return

    resumed = _RESUMED.match(body)
    if resumed is not None:
        name = resumed.group("name")
        start = pending.pop(tid, None)
        if start is not None and start.name != name:
            raise _fail(
                path,
                line_no,
                line,
                f"resumes {name} but the unfinished call of task {tid} "
                f"was {start.name}",
            )
        rest = resumed.group("args")
        if _UNFINISHED.search(rest):
            # "<... x resumed> <unfinished ...>": unfinished again.
            pending[tid] = start or _Pending(name, ts_ns, line_no)
            return
        result = _RESULT.match(rest)
        if result is None:
            raise _IncompleteLine(
                _fail(path, line_no, line, "resumed call has no '= RESULT'")
            )
        ret, complete = _return_value(result, path, line_no, line)
        duration = _duration_ns(result.group("dur"), path, line_no, line)
        entry_ts = start.ts_ns if start is not None else ts_ns - duration
        if entry_ts < 0:
            raise _fail(path, line_no, line, "call starts before time 0")
        _add_row(log, entry_ts, tid, name, ret, duration, complete, path, line_no)
        # clone's flags were printed on the unfinished line, before the
        # resumed part: strace splits a clone whose new task runs first.
        args = (start.args if start is not None else "") + result.group("args")
        _note_clone(log, tid, name, args, ret, complete)
        return

    call = _CALL.match(body)
    if call is None:
        raise _IncompleteLine(
            _fail(path, line_no, line, "not an strace -f -ttt -T line")
        )
    name = call.group("name")
    rest = call.group("args")
    if _UNFINISHED.search(rest):
        pending[tid] = _Pending(name, ts_ns, line_no, rest)
        return
    result = _RESULT.match(rest)
    if result is None:
        raise _IncompleteLine(
            _fail(path, line_no, line, "system call has no '= RESULT'")
        )
    ret, complete = _return_value(result, path, line_no, line)
    duration = _duration_ns(result.group("dur"), path, line_no, line)
    if complete and result.group("dur") is None:
        raise _fail(path, line_no, line, "call has no <duration>; record with -T")
    _add_row(log, ts_ns, tid, name, ret, duration, complete, path, line_no)
    _note_clone(log, tid, name, rest, ret, complete)


def _return_value(
    result: re.Match[str], path: Path, line_no: int, line: str
) -> tuple[int, bool]:
    text = result.group("ret")
    if text == "?":
        return 0, False
    if text.startswith("0x"):
        value = int(text, 16)
        if value >= 1 << 64:
            raise _fail(path, line_no, line, "return value is wider than 64 bits")
        if value >= 1 << 63:
            value -= 1 << 64  # an address shown in hex; store the raw 64-bit value
    else:
        value = int(text)
        if not -(1 << 63) <= value <= _INT64_MAX:
            raise _fail(path, line_no, line, "return value is out of 64-bit range")
    em = _ERRNO_NAME.match(result.group("rest") or "")
    if value == -1 and em is not None:
        name = em.group("name")
        code = getattr(errno, name, None) or _KERNEL_ERRNO.get(name)
        if code is None:
            raise _fail(path, line_no, line, f"unknown errno name {name}")
        value = -int(code)
    return value, True


def _seconds_to_ns(sec: str, frac: str) -> int:
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def _duration_ns(text: str | None, path: Path, line_no: int, line: str) -> int:
    if text is None or text == "unavailable":
        return 0
    if text.startswith("-"):
        raise _fail(path, line_no, line, f"duration <{text}> is negative")
    sec, _, frac = text.partition(".")
    duration = _seconds_to_ns(sec, frac)
    if duration > _INT64_MAX:
        raise _fail(path, line_no, line, "duration is out of range")
    return duration


def _note_time(log: StraceLog, ts_ns: int) -> None:
    if log.first_ts_ns is None or ts_ns < log.first_ts_ns:
        log.first_ts_ns = ts_ns
    log.last_ts_ns = max(log.last_ts_ns, ts_ns)


def _syscall_nr(name: str) -> int | None:
    nr = SYSCALL_NR.get(name)
    if nr is not None:
        return nr
    m = _UNKNOWN_SYSCALL.match(name)
    if m:
        return int(m.group(1), 0)
    return None


def _add_row(
    log: StraceLog,
    ts_ns: int,
    tid: int,
    name: str,
    ret: int,
    duration_ns: int,
    complete: bool,
    path: Path,
    line_no: int,
) -> None:
    nr = _syscall_nr(name)
    if nr is None:
        log.unknown_names.add(name)
        return
    if not 0 <= nr <= MAX_SYSCALL_NR:
        # x32 or ia32 numbers, or garbage: the table contains x86-64 calls only.
        log.foreign_numbers += 1
        return
    if ts_ns + duration_ns > _INT64_MAX:
        raise TraceFormatError(
            f"{path}:{line_no}", "call ends after the largest 64-bit timestamp"
        )
    log.ts_ns.append(ts_ns)
    log.tid.append(tid)
    log.nr.append(nr)
    log.ret.append(ret)
    log.duration_ns.append(duration_ns)
    log.complete.append(complete)
    log.tgid.setdefault(tid, tid)
    _note_time(log, ts_ns)
    _note_time(log, ts_ns + duration_ns)


def _note_clone(
    log: StraceLog, tid: int, name: str, args: str, ret: int, complete: bool
) -> None:
    if name in _CLONE_CALLS and complete and ret > 0:
        parent_tgid = log.tgid.get(tid, tid)
        log.tgid[ret] = parent_tgid if "CLONE_THREAD" in args else ret


def import_strace(
    log_path: Path,
    output: Path,
    name: str | None = None,
    kind: str = "agent",
    overwrite: bool = False,
) -> Trace:
    """Convert ``log_path`` into a trace directory at ``output``."""
    check_output(output, overwrite)
    log = parse_strace_log(log_path)
    # Lines without a pid belong to the root task, whose pid is that of the
    # first line with one. A log recorded without -f has none, so it is 0.
    root = log.root_tid or 0
    tid = np.array(log.tid, dtype=np.int64)
    tid[tid == 0] = root
    tgid = np.array([log.tgid.get(int(t), int(t)) for t in log.tid], dtype=np.int64)
    tgid[tgid == 0] = root
    ts = np.array(log.ts_ns, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    columns = {
        "ts_ns": ts[order],
        "cpu": np.zeros(ts.size, np.int32),
        "pid": tgid[order],
        "tid": tid[order],
        "nr": np.array(log.nr, dtype=np.int32)[order],
        "ret": np.array(log.ret, dtype=np.int64)[order],
        "duration_ns": np.array(log.duration_ns, dtype=np.int64)[order],
        "complete": np.array(log.complete, dtype=bool)[order],
    }
    schema = arrow_schema("syscalls")
    table = pa.Table.from_arrays(
        [pa.array(columns[f.name], type=f.type) for f in schema], schema=schema
    )
    assert log.first_ts_ns is not None
    notes = [
        "imported from an strace -f -ttt -T log; cpu is unknown and stored as 0",
        "kernel_release, cpu_count and memory_bytes describe the importing machine",
    ]
    if log.root_tid is None:
        notes.append("the log has no pids (recorded without -f); pid and tid are 0")
    if log.unknown_names:
        notes.append(
            "calls with unknown names were skipped: "
            + ", ".join(sorted(log.unknown_names))
        )
    if log.foreign_numbers:
        notes.append(
            f"syscalls: dropped {log.foreign_numbers} with numbers outside "
            f"0-{MAX_SYSCALL_NR} (x32, ia32 or invalid calls)"
        )
    manifest = Manifest(
        workload=Workload(
            name=name or log_path.stem,
            kind=kind,
            command=[f"(strace log {log_path.name})"],
        ),
        kernel_release=sysinfo.kernel_release(),
        cpu_count=sysinfo.cpu_count(),
        page_size=sysinfo.page_size(),
        memory_bytes=sysinfo.memory_bytes(),
        start_time=_dt.datetime.fromtimestamp(log.first_ts_ns / 1e9, _dt.UTC).isoformat(
            timespec="seconds"
        ),
        start_ts_ns=log.first_ts_ns,
        end_ts_ns=max(log.last_ts_ns, log.first_ts_ns),
        clock="wall",
        source="strace",
        event_kinds=[],
        event_counts={},
        lost_events={"total": 0},
        tool_version=__version__,
        exit_status=log.exit_status,
        notes=notes,
    )
    return write_trace(output, manifest, {"syscalls": table}, overwrite=overwrite)
