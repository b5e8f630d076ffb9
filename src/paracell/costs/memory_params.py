"""Cost and policy parameters of the memory models (filled by the memory model)."""

from __future__ import annotations

from paracell.costs.table import Param

MEMORY_PARAMS: list[Param] = []
