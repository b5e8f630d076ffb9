"""The path each runtime takes for each class of event, as named steps.

A path is a tuple of :class:`Step`. Each step costs one cost parameter,
optionally scaled by ratio or count parameters and divided by a batch size.
The overhead of an event is the sum of its path's steps. An empty path means
the runtime adds nothing to the native cost of that event.

Event classes and their sub-groups:

``syscall``
    every system call: the user-kernel transition.
``pt_syscall``
    page-table-heavy calls, on top of ``syscall``: ``fork`` (fork, and clone
    without CLONE_VM), ``exec`` (successful execve/execveat), ``exit_group``
    (address-space teardown) and ``update`` (mmap, munmap, mprotect, mremap,
    madvise, brk).
``io``
    device notifications implied by successful I/O calls (``output``,
    ``input``), scaled by notifications per call.
``timer``
    timer programming by calls that sleep or arm a timer.
``fault``
    user page faults (``exceptions:page_fault_user``): the minor-fault path.
``first_touch``
    secondary faults: the first touch of a guest-physical page that the host
    binds lazily, counted in pages.
``pager_bind``
    ParaCell's Pager binding pages ahead of their touch, counted in pages.
``mm_switch``
    scheduler switches that load another address space.
``idle``
    a vCPU going idle (halt) and being woken again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from paracell.costs.table import CostTable
from paracell.errors import ModelError

RUNTIMES: tuple[str, ...] = ("runc", "runv", "pvm", "paracell")

CLASSES: tuple[str, ...] = (
    "syscall",
    "pt_syscall",
    "io",
    "timer",
    "fault",
    "first_touch",
    "pager_bind",
    "mm_switch",
    "idle",
)

SUBGROUPS: dict[str, tuple[str, ...]] = {
    "syscall": ("all",),
    "pt_syscall": ("fork", "exec", "exit_group", "update"),
    "io": ("output", "input"),
    "timer": ("all",),
    "fault": ("all",),
    "first_touch": ("pages",),
    "pager_bind": ("pages",),
    "mm_switch": ("all",),
    "idle": ("all",),
}

# Parameters that multiply every runtime's path of a sub-group: the path is
# the cost of one notification or timer programming, and an I/O call implies
# a fractional number of them on average.
MULTIPLIERS: dict[tuple[str, str], str] = {
    ("io", "output"): "io.notify_per_output_call",
    ("io", "input"): "io.notify_per_input_call",
    ("timer", "all"): "guest.timer_programs_per_call",
}


@dataclass(frozen=True)
class Step:
    """One step of a path: ``param`` x product of ``scale`` params / ``per`` param."""

    action: str
    param: str
    scale: tuple[str, ...] = ()
    per: str | None = None


Path = tuple[Step, ...]

_SHADOW = "paracell.shadow_share"


def _shadowed(steps: Path) -> Path:
    """Return PVM's shadow page-table steps scaled by ParaCell's share of them."""
    return tuple(Step(s.action, s.param, (*s.scale, _SHADOW), s.per) for s in steps)


_PVM_PT: dict[str, Path] = {
    "fork": (Step("shadow the copied page tables", "pvm.fork_shadow"),),
    "exec": (Step("shadow the new address space", "pvm.exec_shadow"),),
    "exit_group": (
        Step("unshadow the torn-down page tables", "pvm.exit_group_shadow"),
    ),
    "update": (Step("zap shadow entries after the TLB flush", "pvm.pt_update_shadow"),),
}

_PVM_FAULT_SHADOW: Path = (
    Step("container kernel writes the guest PTE", "pvm.guest_pte_write"),
    Step("retried access traps to the host again", "pvm.host_trap"),
    Step("host fills the shadow entry", "pvm.shadow_fill"),
)

_GATES: Path = (
    Step("entry gate: WRPKRU, check, stack switch", "paracell.gate_entry_cycles"),
    Step("exit gate: restore the user's PKRU", "paracell.gate_exit_cycles"),
)

_PV_NOTIFY: Path = (
    Step("notification hypercall", "pvm.hypercall"),
    Step("host device work", "pvm.notify_device"),
)

_PV_IDLE: Path = (
    Step("halt hypercall", "pvm.hypercall"),
    Step("wake-up IPI hypercall", "pvm.hypercall", ("guest.idle_wake_ipi_share",)),
    Step("host wakes the vCPU thread", "guest.vcpu_wakeup"),
)

PATHS: dict[str, dict[str, dict[str, Path]]] = {
    "runc": {},
    "runv": {
        "pt_syscall": {
            "fork": (Step("nested paging during fork", "runv.fork_extra"),),
            "exec": (Step("nested paging during exec", "runv.exec_extra"),),
            "exit_group": (
                Step("nested paging during teardown", "runv.exit_group_extra"),
            ),
        },
        "io": {
            sub: (
                Step("notification exit", "runv.exit"),
                Step("host device work", "runv.notify_device"),
            )
            for sub in ("output", "input")
        },
        "timer": {"all": (Step("TSC-deadline MSR-write exit", "runv.msr_exit"),)},
        "fault": {"all": (Step("guest handles the fault", "runv.guest_fault_extra"),)},
        "first_touch": {
            "pages": (
                Step("EPT violation exit", "runv.ept_violation"),
                Step("host backs the page", "host.anon_fault"),
            )
        },
        "idle": {
            "all": (
                Step("HLT exit", "runv.exit"),
                Step(
                    "wake-up IPI (ICR MSR-write exit)",
                    "runv.msr_exit",
                    ("guest.idle_wake_ipi_share",),
                ),
                Step("host wakes the vCPU thread", "guest.vcpu_wakeup"),
            )
        },
    },
    "pvm": {
        "syscall": {
            "all": (
                Step(
                    "user -> switcher -> container kernel and back, with CR3 switches",
                    "pvm.switcher_roundtrip",
                ),
            )
        },
        "pt_syscall": _PVM_PT,
        "io": {"output": _PV_NOTIFY, "input": _PV_NOTIFY},
        "timer": {"all": (Step("timer hypercall", "pvm.hypercall"),)},
        "fault": {
            "all": (
                Step("user fault traps to the host", "pvm.host_trap"),
                Step(
                    "inject into the container kernel and return through the switcher",
                    "pvm.switcher_roundtrip",
                ),
                *_PVM_FAULT_SHADOW,
            )
        },
        "first_touch": {
            "pages": (
                Step("shadow fault traps to the host", "pvm.host_trap"),
                Step("host backs the page", "host.anon_fault"),
                Step("host fills the shadow entry", "pvm.shadow_fill"),
            )
        },
        "mm_switch": {
            "all": (
                Step("CR3-load hypercall", "pvm.hypercall"),
                Step("host switches the shadow root", "pvm.shadow_root_switch"),
            )
        },
        "idle": {"all": _PV_IDLE},
    },
    "paracell": {
        "syscall": {
            "all": (
                Step("route the call to the entry gate", "paracell.syscall_redirect"),
                *_GATES,
            )
        },
        "pt_syscall": {sub: _shadowed(path) for sub, path in _PVM_PT.items()},
        "io": {"output": _PV_NOTIFY, "input": _PV_NOTIFY},
        "timer": {"all": (Step("timer hypercall", "pvm.hypercall"),)},
        "fault": {
            "all": (
                Step("user fault traps to the host", "pvm.host_trap"),
                *_GATES,
                *_shadowed(_PVM_FAULT_SHADOW),
            )
        },
        # The Pager binds every allocated page before its first touch, so no
        # secondary fault remains; the binding itself is pager_bind.
        "pager_bind": {
            "pages": (
                Step(
                    "host binds the page in a batch",
                    "memory.populate_write_per_page",
                    ("paracell.pager_bind_on_path",),
                ),
                Step(
                    "one bind hypercall per batch",
                    "pvm.hypercall",
                    ("paracell.pager_bind_on_path",),
                    per="paracell.pager_batch_pages",
                ),
            )
        },
        "mm_switch": {
            "all": (
                Step("CR3-load hypercall", "pvm.hypercall"),
                *_shadowed(
                    (Step("host switches the shadow root", "pvm.shadow_root_switch"),)
                ),
            )
        },
        "idle": {"all": _PV_IDLE},
    },
}


def path_of(runtime: str, event_class: str, subgroup: str) -> Path:
    """Return the steps ``runtime`` takes for one sub-group of an event class."""
    if runtime not in PATHS:
        raise ModelError(
            f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}"
        )
    return PATHS[runtime].get(event_class, {}).get(subgroup, ())


def _value_ns(costs: CostTable, name: str, deployment: str) -> float:
    param = costs.param(name, deployment)
    if param.unit == "ns":
        return param.value
    if param.unit == "cycles":
        return param.value / costs.get("cpu.clock_ghz", deployment)
    raise ModelError(
        f"cost parameter {name!r} has unit {param.unit!r}; a step needs a time"
    )


def step_cost_ns(costs: CostTable, step: Step, deployment: str) -> float:
    """Return the cost of one step in ns on ``deployment``."""
    value = _value_ns(costs, step.param, deployment)
    for name in step.scale:
        value *= costs.get(name, deployment)
    if step.per is not None:
        batch = costs.get(step.per, deployment)
        if batch <= 0:
            raise ModelError(
                f"cost parameter {step.per!r} must be positive, not {batch:g}"
            )
        value /= batch
    return value


def path_cost_ns(
    costs: CostTable, runtime: str, event_class: str, subgroup: str, deployment: str
) -> float:
    """Return the cost in ns of one event of a sub-group, multipliers included."""
    total = sum(
        step_cost_ns(costs, s, deployment)
        for s in path_of(runtime, event_class, subgroup)
    )
    multiplier = MULTIPLIERS.get((event_class, subgroup))
    if multiplier is not None:
        total *= costs.get(multiplier, deployment)
    return total


def path_costs(
    costs: CostTable, runtime: str, deployment: str
) -> dict[str, dict[str, float]]:
    """Return ``{class: {subgroup: ns per event}}`` for one runtime and deployment."""
    return {
        cls: {sub: path_cost_ns(costs, runtime, cls, sub, deployment) for sub in subs}
        for cls, subs in SUBGROUPS.items()
    }


def parameters_used() -> set[str]:
    """Return the name of every cost parameter a path or multiplier reads."""
    names = set(MULTIPLIERS.values()) | {"cpu.clock_ghz"}
    for by_class in PATHS.values():
        for by_sub in by_class.values():
            for path in by_sub.values():
                for step in path:
                    names.add(step.param)
                    names.update(step.scale)
                    if step.per:
                        names.add(step.per)
    return names


def describe_paths(runtime: str) -> Mapping[str, Mapping[str, Path]]:
    """Return the paths of one runtime (for documentation and the CLI)."""
    return PATHS[runtime]
