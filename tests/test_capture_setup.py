"""Capture setup logic in tracefs dry-run mode: runs without root."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ringbuf import HEADER_EVENT, HEADER_PAGE

from paracell.capture.events import (
    MM_PAGE_ALLOC,
    SYS_ENTER,
    SYS_EXIT,
    TASK_NEWTASK,
    parse_event_selection,
    tracepoints_for,
)
from paracell.capture.session import (
    arm_session,
    close_session,
    open_session,
    parse_stats,
    read_lost_events,
)
from paracell.capture.tracefs import TraceFS
from paracell.errors import CaptureError

TOKEN = "4242-0badcafe"
FORMAT = "name: {name}\nID: {id}\nformat:\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n"


def dry_tracefs(*missing: str) -> TraceFS:
    files = {
        "events/header_page": HEADER_PAGE,
        "events/header_event": HEADER_EVENT,
        "per_cpu/cpu0/stats": "",
        "per_cpu/cpu1/stats": "",
        "instances/other/tracing_on": "1",
        "set_event_notrace_pid": "",
    }
    for i, tp in enumerate([SYS_ENTER, SYS_EXIT, TASK_NEWTASK, MM_PAGE_ALLOC]):
        if tp.name not in missing:
            files[f"{tp.path}/format"] = FORMAT.format(name=tp.name, id=100 + i)
    return TraceFS(root=Path("/dry"), dry_run=True, dry_files=files)


def test_setup_writes_in_order() -> None:
    top = dry_tracefs()
    tps = [SYS_ENTER, SYS_EXIT, TASK_NEWTASK, MM_PAGE_ALLOC]
    session = open_session(top, tps, buffer_kb=2048, buffer_percent=25, token=TOKEN)
    arm_session(session, child_pid=4242, notrace_tids=[10, 11])
    close_session(session)

    prefix = f"instances/paracell-{TOKEN}-"
    tree, system = f"{prefix}tree", f"{prefix}system"
    writes = top.writes

    assert writes[0] == (tree, "<mkdir>")
    for role in (tree, system):
        assert (f"{role}/trace_clock", "mono") in writes
        assert (f"{role}/buffer_size_kb", "2048") in writes
        assert (f"{role}/buffer_percent", "25") in writes
        assert (f"{role}/options/overwrite", "0") in writes
    assert (f"{tree}/options/event-fork", "1") in writes
    assert (f"{tree}/set_event_pid", "4242") in writes
    assert (f"{system}/set_event_notrace_pid", "10 11") in writes

    enables = [p for p, v in writes if p.endswith("/enable") and v == "1"]
    assert enables == [
        f"{system}/events/task/task_newtask/enable",
        f"{system}/events/kmem/mm_page_alloc/enable",
        f"{tree}/events/raw_syscalls/sys_enter/enable",
        f"{tree}/events/raw_syscalls/sys_exit/enable",
    ]
    # The pid filter is set before any event is enabled.
    assert writes.index((f"{tree}/set_event_pid", "4242")) < writes.index(
        (f"{system}/events/task/task_newtask/enable", "1")
    )

    assert writes[-4:] == [
        (f"{system}/tracing_on", "0"),
        (system, "<rmdir>"),
        (f"{tree}/tracing_on", "0"),
        (tree, "<rmdir>"),
    ]
    # Nothing outside our instances is written.
    assert [p for p, _ in writes if not p.startswith(prefix)] == []


def test_missing_event_fails_loudly() -> None:
    top = dry_tracefs("mm_page_alloc")
    with pytest.raises(CaptureError, match="kmem:mm_page_alloc does not exist"):
        open_session(top, [SYS_ENTER, MM_PAGE_ALLOC], 1024, 25, TOKEN)
    assert top.writes == []  # failed before creating anything


def test_stats_parsed() -> None:
    text = (
        "entries: 5\noverrun: 3\ncommit overrun: 1\nbytes: 100\n"
        "oldest event ts:     0.000000\nnow ts:   717.474019\ndropped events: 4\n"
    )
    stats = parse_stats(text)
    assert stats["overrun"] == 3
    assert stats["dropped events"] == 4
    assert "now ts" not in stats


def test_lost_events_summed_per_cpu() -> None:
    top = dry_tracefs()
    session = open_session(top, [SYS_ENTER, TASK_NEWTASK], 1024, 25, TOKEN)
    tree = session.instance("tree").fs
    tree.dry_files["per_cpu/cpu1/stats"] = "overrun: 2\ndropped events: 5\n"
    assert read_lost_events(session)["tree"] == {0: 0, 1: 7}


def test_event_selection_groups() -> None:
    assert parse_event_selection("syscalls,faults") == [
        "syscalls",
        "page_fault_user",
        "task_newtask",
    ]
    assert "mm_page_pcpu_drain" in parse_event_selection("kmem")
    assert parse_event_selection(None)[0] == "syscalls"
    with pytest.raises(CaptureError, match="unknown kind or group 'bogus'"):
        parse_event_selection("syscalls,bogus")


def test_tracepoints_deduplicated() -> None:
    tps = tracepoints_for(["syscalls", "syscalls", "task_newtask"])
    assert tps == [SYS_ENTER, SYS_EXIT, TASK_NEWTASK]
