"""Cost parameters: one table of named, sourced values, and overriding profiles."""

from __future__ import annotations

from pathlib import Path

from paracell.costs.latency_params import LATENCY_PARAMS
from paracell.costs.memory_params import MEMORY_PARAMS
from paracell.costs.profile import apply_profile, write_profile
from paracell.costs.sources import SOURCES, describe_source
from paracell.costs.table import ANY, DEPLOYMENTS, CostTable, Param


def default_costs() -> CostTable:
    """Return the table of default parameters of every model."""
    return CostTable([*LATENCY_PARAMS, *MEMORY_PARAMS])


def load_costs(profile: Path | None = None) -> CostTable:
    """Return the default table, overridden by ``profile`` when given."""
    table = default_costs()
    return apply_profile(table, profile) if profile else table


__all__ = [
    "ANY",
    "DEPLOYMENTS",
    "SOURCES",
    "CostTable",
    "Param",
    "apply_profile",
    "default_costs",
    "describe_source",
    "load_costs",
    "write_profile",
]
