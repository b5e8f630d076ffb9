"""The cost-parameter table shared by the latency and memory models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from paracell.costs.sources import SOURCES
from paracell.costs.units import UNITS

DEPLOYMENTS = ("bare-metal", "nested")
ANY = "any"


@dataclass(frozen=True)
class Param:
    """One named cost with its unit, source and, for estimates, a range and reasoning.

    ``deployment`` is ``"any"`` when one value serves bare metal and nested;
    otherwise the table holds one Param per deployment under the same name.
    ``low``/``high`` bound the value for the sensitivity analysis.
    """

    name: str
    value: float
    unit: str
    source: str
    description: str
    deployment: str = ANY
    low: float | None = None
    high: float | None = None
    reasoning: str = ""
    note: str = ""
    # Smallest value the models accept, and whether the value must be whole
    # (page counts always are); the profile loader enforces both.
    minimum: float = 0.0
    integer: bool = False

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"parameter {self.name}: unknown unit {self.unit!r}")
        if self.source not in SOURCES:
            raise ValueError(f"parameter {self.name}: unknown source {self.source!r}")
        if self.deployment not in (ANY, *DEPLOYMENTS):
            raise ValueError(
                f"parameter {self.name}: unknown deployment {self.deployment!r}"
            )
        if self.source == "estimate" and (
            not self.reasoning or self.low is None or self.high is None
        ):
            raise ValueError(f"estimate {self.name} needs reasoning, low and high")
        problem = self.invalid_reason(self.value)
        if problem:
            raise ValueError(f"parameter {self.name}: default {problem}")

    def invalid_reason(self, value: float) -> str | None:
        """Return why ``value`` is unusable for this parameter, or None if valid."""
        if value < self.minimum:
            return f"value {value:g} is below its minimum {self.minimum:g} {self.unit}"
        if self.unit == "ratio" and value > 1:
            return f"value {value:g} is a ratio and must lie in [0, 1]"
        if self.unit == "GHz" and value <= 0:
            return f"value {value:g} is a clock frequency and must be positive"
        if (self.integer or self.unit == "pages") and value != int(value):
            return f"value {value:g} must be a whole number of {self.unit}"
        return None

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.deployment)

    @property
    def is_estimate(self) -> bool:
        return self.source == "estimate"


class CostTable:
    """An immutable mapping from (name, deployment) to :class:`Param`."""

    def __init__(self, params: Iterable[Param]) -> None:
        self._params: dict[tuple[str, str], Param] = {}
        for p in params:
            if p.key in self._params:
                raise ValueError(
                    f"parameter {p.name} ({p.deployment}) is defined twice"
                )
            self._params[p.key] = p

    def __iter__(self) -> Iterator[Param]:
        return iter(self._params.values())

    def __len__(self) -> int:
        return len(self._params)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self._params.values())

    def param(self, name: str, deployment: str = ANY) -> Param:
        """Return the parameter for ``deployment``, else its ``any`` value."""
        found = self._params.get((name, deployment)) or self._params.get((name, ANY))
        if found is None:
            raise KeyError(f"no cost parameter {name!r} for deployment {deployment!r}")
        return found

    def get(self, name: str, deployment: str = ANY) -> float:
        return self.param(name, deployment).value

    def keys_for(self, name: str) -> list[tuple[str, str]]:
        return [k for k in self._params if k[0] == name]

    def replace_values(self, values: Mapping[tuple[str, str], float]) -> CostTable:
        """Return a copy with new values for the given (name, deployment) keys."""
        params = dict(self._params)
        for key, value in values.items():
            params[key] = replace(params[key], value=float(value))
        return CostTable(params.values())

    def estimates(self) -> list[Param]:
        return [p for p in self if p.is_estimate]
