"""Cost parameters of the runtime latency models (filled by the latency model)."""

from __future__ import annotations

from paracell.costs.table import Param

LATENCY_PARAMS: list[Param] = []
