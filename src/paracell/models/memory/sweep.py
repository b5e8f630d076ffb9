"""Sweep of the Pager's own parameters: waste against hypercalls.

PC26 publishes no Pager parameters, so the model treats them as estimates
and shows how the two costs trade. A larger unbind batch, a longer delay or
a larger reserve cut hypercalls and raise waste.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from paracell.costs import CostTable
from paracell.models.memory.events import AllocatorEvents
from paracell.models.memory.metrics import CostModel
from paracell.models.memory.policy import POLICIES
from paracell.models.memory.replay import ReplayConfig

_MS = 1_000_000

DEFAULT_UNBIND_BATCHES = (16, 64, 256)
DEFAULT_DELAYS_NS = (0, 10 * _MS, 100 * _MS, 1000 * _MS)
DEFAULT_RESERVES = (0, 256, 1024)


@dataclass(frozen=True)
class SweepPoint:
    """The Pager's results for one setting of its parameters."""

    unbind_batch: int
    unbind_delay_ns: int
    reserve: int
    mean_footprint_bytes: float
    waste_fraction: float
    hypercalls: int
    overhead_ns: float
    is_default: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def pager_sweep(
    events: AllocatorEvents,
    costs: CostTable,
    unbind_batches: Sequence[int] = DEFAULT_UNBIND_BATCHES,
    delays_ns: Sequence[int] = DEFAULT_DELAYS_NS,
    reserves: Sequence[int] = DEFAULT_RESERVES,
    placement: str | None = None,
    guest_ram_bytes: int | None = None,
) -> list[SweepPoint]:
    """Run the Pager on every combination of the given parameters."""
    defaults = (
        int(costs.get("memory.pager.unbind_batch")),
        int(costs.get("memory.pager.unbind_delay")),
        int(costs.get("memory.pager.reserve")),
    )
    cost_model = CostModel.from_costs(costs)
    grid = sorted(
        set(itertools.product(unbind_batches, delays_ns, reserves)) | {defaults}
    )
    points = []
    for batch, delay, reserve in grid:
        table = costs.replace_values(
            {
                ("memory.pager.unbind_batch", "any"): batch,
                ("memory.pager.unbind_delay", "any"): delay,
                ("memory.pager.reserve", "any"): reserve,
            }
        )
        config = ReplayConfig.from_costs(table, guest_ram_bytes=guest_ram_bytes)
        run = POLICIES["pager"].run(events, config, placement).compute(cost_model)
        m = run.metrics
        points.append(
            SweepPoint(
                unbind_batch=int(batch),
                unbind_delay_ns=int(delay),
                reserve=int(reserve),
                mean_footprint_bytes=float(m["mean_footprint_bytes"]),
                waste_fraction=float(m["waste_fraction"]),
                hypercalls=int(m["hypercalls"]),
                overhead_ns=float(m["overhead_ns"]),
                is_default=(batch, delay, reserve) == defaults,
            )
        )
    return points
