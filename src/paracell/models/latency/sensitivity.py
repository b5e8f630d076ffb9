"""Sensitivity of the model's conclusions to each estimated parameter.

Each estimate used by a latency path is set to its low and then its high
bound, one at a time with every other parameter at its value in the table.
For each setting the ranking of the runtimes per deployment and ParaCell's
reductions against PVM and RunV are recorded next to the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from paracell.costs import DEPLOYMENTS, CostTable, Param
from paracell.models.latency.events import TraceEvents
from paracell.models.latency.model import LatencyReport, evaluate_events
from paracell.models.latency.paths import RUNTIMES, parameters_used


@dataclass
class Outcome:
    """Ranking per deployment (fastest first) and reductions in percent."""

    ranking: dict[str, list[str]]
    reductions: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"ranking": self.ranking, "reductions": self.reductions}


@dataclass
class Variation:
    """One estimate set to one bound, with the outcome and what changed."""

    name: str
    deployment: str
    bound: str
    value: float
    unit: str
    outcome: Outcome
    ranking_changed: dict[str, bool]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "deployment": self.deployment,
            "bound": self.bound,
            "value": self.value,
            "unit": self.unit,
            "ranking_changed": self.ranking_changed,
            **self.outcome.to_dict(),
        }


@dataclass
class SensitivityReport:
    """The default outcome and one :class:`Variation` per estimate and bound."""

    trace_name: str
    default: Outcome
    variations: list[Variation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace": self.trace_name,
            "default": self.default.to_dict(),
            "variations": [v.to_dict() for v in self.variations],
        }


def _outcome(report: LatencyReport, runtimes: Sequence[str]) -> Outcome:
    ranking = {}
    for deployment in next(iter(report.results.values())):
        ranking[deployment] = sorted(
            runtimes,
            key=lambda r: (report.result(r, deployment).total_ns, RUNTIMES.index(r)),
        )
    reductions: dict[str, dict[str, float]] = {}
    for red in report.reductions:
        reductions.setdefault(f"paracell_vs_{red.baseline}", {})[red.deployment] = (
            red.model_percent
        )
    return Outcome(ranking, reductions)


def varied_parameters(costs: CostTable) -> list[Param]:
    """Return the estimates of ``costs`` that a latency path reads."""
    used = parameters_used()
    return [p for p in costs.estimates() if p.name in used]


def sensitivity(
    events: TraceEvents,
    costs: CostTable,
    runtimes: Sequence[str] = RUNTIMES,
    deployments: Sequence[str] = DEPLOYMENTS,
) -> SensitivityReport:
    """Vary each estimate over its range, one at a time, and record the outcomes."""
    default = _outcome(evaluate_events(events, costs, runtimes, deployments), runtimes)
    result = SensitivityReport(events.name, default)
    for param in varied_parameters(costs):
        for bound, value in (("low", param.low), ("high", param.high)):
            assert value is not None  # every estimate has a range (Param checks it)
            varied = costs.replace_values({param.key: value})
            outcome = _outcome(
                evaluate_events(events, varied, runtimes, deployments), runtimes
            )
            changed = {
                dep: outcome.ranking[dep] != default.ranking[dep] for dep in deployments
            }
            result.variations.append(
                Variation(
                    param.name,
                    param.deployment,
                    bound,
                    value,
                    param.unit,
                    outcome,
                    changed,
                )
            )
    return result
