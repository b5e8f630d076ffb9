"""Shared helpers of the latency tests: trace writing and hand-computed path costs.

The expected costs here are written out step by step from the parameter
table, independently of paracell.models.latency.paths, so a test compares the
model against arithmetic a reader can check.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from paracell.costs import CostTable, default_costs
from paracell.trace.builder import TraceBuilder
from paracell.trace.schema import arrow_schema
from paracell.trace.store import Trace, write_trace

COSTS = default_costs()


def v(name: str, deployment: str, costs: CostTable = COSTS) -> float:
    return costs.get(name, deployment)


def gates_ns(deployment: str, costs: CostTable = COSTS) -> float:
    cycles = v("paracell.gate_entry_cycles", deployment, costs) + v(
        "paracell.gate_exit_cycles", deployment, costs
    )
    return cycles / v("cpu.clock_ghz", deployment, costs)


def expected_syscall(runtime: str, d: str) -> float:
    if runtime == "pvm":
        return v("pvm.switcher_roundtrip", d)
    if runtime == "paracell":
        return v("paracell.syscall_redirect", d) + gates_ns(d)
    return 0.0


def expected_fault(runtime: str, d: str) -> float:
    trap, fill = v("pvm.host_trap", d), v("pvm.shadow_fill", d)
    pte = v("pvm.guest_pte_write", d)
    if runtime == "runv":
        return v("runv.guest_fault_extra", d)
    if runtime == "pvm":
        # trap, inject + return through the switcher, PTE write, retry trap, fill
        return trap + v("pvm.switcher_roundtrip", d) + pte + trap + fill
    if runtime == "paracell":
        share = v("paracell.shadow_share", d)
        return trap + gates_ns(d) + share * (pte + trap + fill)
    return 0.0


def expected_first_touch_page(runtime: str, d: str) -> float:
    if runtime == "runv":
        return v("runv.ept_violation", d) + v("host.anon_fault", d)
    if runtime == "pvm":
        return v("pvm.host_trap", d) + v("host.anon_fault", d) + v("pvm.shadow_fill", d)
    return 0.0


def expected_pager_bind_page(runtime: str, d: str) -> float:
    if runtime != "paracell":
        return 0.0
    on_path = v("paracell.pager_bind_on_path", d)
    per_batch = v("pvm.hypercall", d) / v("paracell.pager_batch_pages", d)
    return on_path * (v("memory.populate_write_per_page", d) + per_batch)


def expected_notification(runtime: str, d: str) -> float:
    if runtime == "runv":
        return v("runv.exit", d) + v("runv.notify_device", d)
    if runtime in ("pvm", "paracell"):
        return v("pvm.hypercall", d) + v("pvm.notify_device", d)
    return 0.0


def expected_timer(runtime: str, d: str) -> float:
    per_call = v("guest.timer_programs_per_call", d)
    if runtime == "runv":
        return per_call * v("runv.msr_exit", d)
    if runtime in ("pvm", "paracell"):
        return per_call * v("pvm.hypercall", d)
    return 0.0


def expected_pt(runtime: str, d: str, sub: str) -> float:
    pvm = {
        "fork": "pvm.fork_shadow",
        "exec": "pvm.exec_shadow",
        "exit_group": "pvm.exit_group_shadow",
        "update": "pvm.pt_update_shadow",
    }[sub]
    if runtime == "runv":
        runv = {
            "fork": "runv.fork_extra",
            "exec": "runv.exec_extra",
            "exit_group": "runv.exit_group_extra",
        }.get(sub)
        return v(runv, d) if runv else 0.0
    if runtime == "pvm":
        return v(pvm, d)
    if runtime == "paracell":
        return v("paracell.shadow_share", d) * v(pvm, d)
    return 0.0


def expected_mm_switch(runtime: str, d: str) -> float:
    root = v("pvm.shadow_root_switch", d)
    if runtime == "pvm":
        return v("pvm.hypercall", d) + root
    if runtime == "paracell":
        return v("pvm.hypercall", d) + v("paracell.shadow_share", d) * root
    return 0.0


def expected_idle(runtime: str, d: str) -> float:
    ipi_share = v("guest.idle_wake_ipi_share", d)
    wakeup = v("guest.vcpu_wakeup", d)
    if runtime == "runv":
        return v("runv.exit", d) + ipi_share * v("runv.msr_exit", d) + wakeup
    if runtime in ("pvm", "paracell"):
        return v("pvm.hypercall", d) * (1 + ipi_share) + wakeup
    return 0.0


def write_with_newtask(
    builder: TraceBuilder, path: Path, newtask_rows: list[dict], end_ts_ns: int
) -> Trace:
    """Write the builder's trace plus a task_newtask table, which it cannot add."""
    tables = builder.tables()
    tables["task_newtask"] = pa.Table.from_pylist(
        newtask_rows, schema=arrow_schema("task_newtask")
    )
    return write_trace(path, builder.manifest(end_ts_ns), tables)


def newtask(
    ts_ns: int, parent: int, child_tid: int, child_pid: int, flags: int
) -> dict:
    return {
        "ts_ns": ts_ns,
        "cpu": 0,
        "pid": parent,
        "tid": parent,
        "child_tid": child_tid,
        "child_pid": child_pid,
        "clone_flags": flags,
        "comm": "child",
    }
