"""Helpers shared by the memory-model tests: costs with overrides, traces, integrals."""

from __future__ import annotations

from pathlib import Path

from paracell.costs import CostTable, default_costs
from paracell.models.memory import MemoryReport, evaluate
from paracell.trace import load_trace
from paracell.trace.builder import TraceBuilder

MIB = 1 << 20
S = 1_000_000_000
PAGE = 4096

# Settings of the hand-computed scenarios: a 256 MiB guest with one vCPU,
# pcp batch and high as Linux derives them for that size, a balloon that
# keeps no headroom, and DAMON with a 2 s minimum age so it acts in a trace
# of seconds.
SCENARIO_COSTS = {
    "memory.guest_ram": 256 * MIB,
    "memory.vcpus": 1,
    "memory.buddy.pcp_batch": 15,
    "memory.buddy.pcp_high": 640,
    "memory.balloon.headroom": 0,
    "memory.balloon.period": 1 * S,
    "memory.damon.min_age": 2 * S,
}


def costs_with(overrides: dict[str, float] | None = None) -> CostTable:
    """Return the default cost table with ``overrides`` (name -> value in canonical unit)."""
    table = default_costs()
    values = {(name, "any"): value for name, value in (overrides or {}).items()}
    return table.replace_values(values) if values else table


def write(builder: TraceBuilder, tmp_path: Path, end_s: float):
    path = tmp_path / builder.workload.name
    builder.write(path, end_ts_ns=int(end_s * S))
    return load_trace(path)


def run(
    trace, placement: str | None = None, overrides: dict | None = None, policies=None
) -> MemoryReport:
    costs = costs_with({**SCENARIO_COSTS, **(overrides or {})})
    kwargs = {} if policies is None else {"policies": policies}
    return evaluate(trace, costs, placement=placement, **kwargs)


def page_seconds(metrics: dict, duration_s: float) -> float:
    """Return the footprint integral in page x seconds from the mean footprint."""
    return float(metrics["mean_footprint_bytes"]) / PAGE * duration_s


def ns_per_balloon_page() -> float:
    costs = default_costs()
    return 1e9 * PAGE / costs.get("memory.balloon.rate")
