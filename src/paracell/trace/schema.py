"""Event kinds of a trace and the columns of their Parquet tables.

Column names follow the kernel's tracepoint fields. Two columns are common to
every per-task table and differ from the raw tracepoint: ``tid`` is the
kernel's ``common_pid`` (the thread that was running), and ``pid`` is that
thread's thread-group id, the process id user space sees. ``ts_ns`` is the
trace clock in nanoseconds (``CLOCK_MONOTONIC`` for tracefs captures, the
wall clock for strace imports); every table is sorted by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# Largest buddy order Linux hands out on x86-64 (MAX_PAGE_ORDER = 10).
MAX_ORDER = 10
# x86-64 has fewer than 1024 system calls; the bound catches garbage numbers.
MAX_SYSCALL_NR = 1023


@dataclass(frozen=True)
class Column:
    """One column: its Arrow type and the inclusive range its values must lie in."""

    name: str
    type: pa.DataType
    min: int | None = None
    max: int | None = None
    doc: str = ""


def _ts() -> Column:
    return Column("ts_ns", pa.int64(), 0, None, "event time, ns")


def _cpu() -> Column:
    return Column("cpu", pa.int32(), 0, 65535, "CPU the event was recorded on")


def _task() -> list[Column]:
    return [
        Column("pid", pa.int32(), 0, 2**22, "thread-group id of the running task"),
        Column("tid", pa.int32(), 0, 2**22, "kernel common_pid: the running thread"),
    ]


def _pfn() -> Column:
    return Column("pfn", pa.uint64(), 0, 2**52, "page frame number")


def _order() -> Column:
    return Column("order", pa.uint8(), 0, MAX_ORDER, "allocation order: 2**order pages")


def _migratetype() -> Column:
    return Column("migratetype", pa.int32(), -1, 16, "kernel migratetype")


KINDS: dict[str, list[Column]] = {
    # raw_syscalls:sys_enter paired with sys_exit of the same thread.
    "syscalls": [
        _ts(),
        _cpu(),
        *_task(),
        Column("nr", pa.int32(), 0, MAX_SYSCALL_NR, "system-call number (x86-64)"),
        Column("ret", pa.int64(), None, None, "return value; 0 when incomplete"),
        Column(
            "duration_ns", pa.int64(), 0, None, "sys_exit time minus sys_enter time"
        ),
        Column("complete", pa.bool_(), None, None, "false when no sys_exit was seen"),
    ],
    # exceptions:page_fault_user
    "page_fault_user": [
        _ts(),
        _cpu(),
        *_task(),
        Column("address", pa.uint64(), None, None, "faulting virtual address"),
        Column("ip", pa.uint64(), None, None, "instruction pointer"),
        Column("error_code", pa.uint64(), 0, 2**32 - 1, "x86 page-fault error code"),
    ],
    # sched:sched_switch of the traced tasks (prev or next in the tree).
    "sched_switch": [
        _ts(),
        _cpu(),
        Column("prev_comm", pa.string()),
        Column("prev_pid", pa.int32(), 0, 2**22, "thread switched out"),
        # Kernel prio: -1 for SCHED_DEADLINE, 0-99 real-time, 100-139 normal.
        Column("prev_prio", pa.int32(), -1, 139),
        Column("prev_state", pa.int64(), 0, None, "TASK_* state bits; 0 is runnable"),
        Column("next_comm", pa.string()),
        Column("next_pid", pa.int32(), 0, 2**22, "thread switched in; 0 is idle"),
        Column("next_prio", pa.int32(), -1, 139),
    ],
    # task:task_newtask; its "pid" field is stored as child_tid.
    "task_newtask": [
        _ts(),
        _cpu(),
        *_task(),
        Column("child_tid", pa.int32(), 1, 2**22, "id of the new task"),
        Column("child_pid", pa.int32(), 1, 2**22, "thread-group id of the new task"),
        Column("clone_flags", pa.uint64(), None, None, "CLONE_* flags"),
        Column("comm", pa.string()),
    ],
    # kmem:mm_page_alloc (failed allocations, pfn == -1, are dropped).
    "mm_page_alloc": [
        _ts(),
        _cpu(),
        *_task(),
        _pfn(),
        _order(),
        Column("gfp_flags", pa.uint64(), None, None, "GFP flags of the request"),
        _migratetype(),
    ],
    # kmem:mm_page_free: count this event as the free of a page. Captures keep
    # the free of every frame the traced tree allocated, from any context
    # (kworkers, RCU callbacks, the idle task), so pid/tid may be outside it.
    "mm_page_free": [_ts(), _cpu(), *_task(), _pfn(), _order()],
    # kmem:mm_page_free_batched (always order 0). On Linux 6.x a page freed in
    # a batch (free_unref_folios) also emits mm_page_free, just before this
    # event: on 6.18 all 102,936 batched frees of the shipped agent-build trace
    # follow an mm_page_free of the same pfn. Do not count it as a second free;
    # it only marks that the free took the batched path.
    "mm_page_free_batched": [_ts(), _cpu(), *_task(), _pfn()],
    # kmem:mm_page_alloc_zone_locked; percpu_refill is 1 for a per-CPU list refill.
    "mm_page_alloc_zone_locked": [
        _ts(),
        _cpu(),
        *_task(),
        _pfn(),
        _order(),
        _migratetype(),
        Column(
            "percpu_refill", pa.int8(), 0, 1, "1 when the page refills a per-CPU list"
        ),
    ],
    # kmem:mm_page_pcpu_drain
    "mm_page_pcpu_drain": [_ts(), _cpu(), *_task(), _pfn(), _order(), _migratetype()],
}

# Groups accepted by ``paracell trace --events`` besides the kind names.
EVENT_GROUPS: dict[str, list[str]] = {
    "syscalls": ["syscalls"],
    "faults": ["page_fault_user"],
    "sched": ["sched_switch"],
    "kmem": [
        "mm_page_alloc",
        "mm_page_free",
        "mm_page_free_batched",
        "mm_page_alloc_zone_locked",
        "mm_page_pcpu_drain",
    ],
}

ALLOCATOR_KINDS = tuple(EVENT_GROUPS["kmem"])


def arrow_schema(kind: str) -> pa.Schema:
    """Return the Arrow schema of one event kind's table."""
    return pa.schema([pa.field(c.name, c.type, nullable=False) for c in KINDS[kind]])


def parquet_name(kind: str) -> str:
    return f"{kind}.parquet"
