"""The tracepoints behind each trace kind, and the tracefs instance of each.

Two instances are used. The *tree* instance follows the traced command and
its descendants through ``set_event_pid`` and the ``event-fork`` option, so
only their system calls, faults and context switches are recorded. The
*system* instance records page-allocator and fork events of every task
(except the capture process itself), because pages allocated by the tree are
often freed from other contexts: RCU callbacks, kworkers, the idle task.
"""

from __future__ import annotations

from dataclasses import dataclass

from paracell.errors import CaptureError
from paracell.trace.schema import EVENT_GROUPS, KINDS

TREE = "tree"
SYSTEM = "system"


@dataclass(frozen=True)
class Tracepoint:
    system: str
    name: str
    instance: str

    @property
    def path(self) -> str:
        return f"events/{self.system}/{self.name}"

    def __str__(self) -> str:
        return f"{self.system}:{self.name}"


SYS_ENTER = Tracepoint("raw_syscalls", "sys_enter", TREE)
SYS_EXIT = Tracepoint("raw_syscalls", "sys_exit", TREE)
PAGE_FAULT_USER = Tracepoint("exceptions", "page_fault_user", TREE)
SCHED_SWITCH = Tracepoint("sched", "sched_switch", TREE)
TASK_NEWTASK = Tracepoint("task", "task_newtask", SYSTEM)
MM_PAGE_ALLOC = Tracepoint("kmem", "mm_page_alloc", SYSTEM)
MM_PAGE_FREE = Tracepoint("kmem", "mm_page_free", SYSTEM)
MM_PAGE_FREE_BATCHED = Tracepoint("kmem", "mm_page_free_batched", SYSTEM)
MM_PAGE_ALLOC_ZONE_LOCKED = Tracepoint("kmem", "mm_page_alloc_zone_locked", SYSTEM)
MM_PAGE_PCPU_DRAIN = Tracepoint("kmem", "mm_page_pcpu_drain", SYSTEM)

# Tracepoints recorded for each trace kind.
KIND_TRACEPOINTS: dict[str, tuple[Tracepoint, ...]] = {
    "syscalls": (SYS_ENTER, SYS_EXIT),
    "page_fault_user": (PAGE_FAULT_USER,),
    "sched_switch": (SCHED_SWITCH,),
    "task_newtask": (TASK_NEWTASK,),
    "mm_page_alloc": (MM_PAGE_ALLOC,),
    "mm_page_free": (MM_PAGE_FREE,),
    "mm_page_free_batched": (MM_PAGE_FREE_BATCHED,),
    "mm_page_alloc_zone_locked": (MM_PAGE_ALLOC_ZONE_LOCKED,),
    "mm_page_pcpu_drain": (MM_PAGE_PCPU_DRAIN,),
}

# task_newtask is always recorded: it gives every task's thread-group id
# (the ``pid`` column) and the membership of the traced tree.
ALWAYS = ("task_newtask",)


def parse_event_selection(text: str | None) -> list[str]:
    """Turn ``--events`` (kind names or groups, comma separated) into kinds.

    ``None`` selects every kind. The result is in schema order and always
    contains ``task_newtask``.
    """
    if text is None:
        return list(KINDS)
    known = ", ".join([*EVENT_GROUPS, *(k for k in KINDS if k not in EVENT_GROUPS)])
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CaptureError(
            f"--events {text!r} selects nothing", hint=f"name kinds or groups: {known}"
        )
    chosen = set(ALWAYS)
    for item in items:
        if item in EVENT_GROUPS:
            chosen.update(EVENT_GROUPS[item])
        elif item in KINDS:
            chosen.add(item)
        else:
            raise CaptureError(
                f"--events names unknown kind or group {item!r}; known: {known}"
            )
    return [k for k in KINDS if k in chosen]


def tracepoints_for(kinds: list[str]) -> list[Tracepoint]:
    out: list[Tracepoint] = []
    for kind in kinds:
        for tp in KIND_TRACEPOINTS[kind]:
            if tp not in out:
                out.append(tp)
    return out
