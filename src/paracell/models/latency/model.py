"""Evaluate a classified trace under each runtime and deployment."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from paracell.costs import DEPLOYMENTS, CostTable, default_costs
from paracell.errors import ModelError
from paracell.models.latency.events import TraceEvents, classify
from paracell.models.latency.paths import CLASSES, RUNTIMES, SUBGROUPS, path_costs
from paracell.trace.store import Trace

# Published reductions of ParaCell's latency against each baseline, in percent,
# from PC26. They are "up to" values, the best case over its evaluated workloads.
CLAIMS: dict[tuple[str, str], float] = {
    ("pvm", "bare-metal"): 57.0,
    ("pvm", "nested"): 79.0,
    ("runv", "bare-metal"): 33.0,
    ("runv", "nested"): 88.0,
}
CLAIM_SOURCE = "PC26"
# A modelled reduction within this many percentage points of a claim agrees with it.
AGREEMENT_POINTS = 5.0


@dataclass
class ClassResult:
    """Overhead of one event class: occurrences, wall-clock stretch and CPU time."""

    count: float
    overhead_ns: float
    cpu_time_ns: float

    def to_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "overhead_ns": self.overhead_ns,
            "cpu_time_ns": self.cpu_time_ns,
        }


@dataclass
class RuntimeResult:
    """Modelled time of one trace under one runtime and deployment."""

    runtime: str
    deployment: str
    native_ns: int
    overhead_ns: int
    by_class: dict[str, ClassResult]
    relative_to_runc: float = 1.0
    per_operation_ns: float | None = None

    @property
    def total_ns(self) -> int:
        return self.native_ns + self.overhead_ns

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total_ns": self.total_ns,
            "native_ns": self.native_ns,
            "overhead_ns": self.overhead_ns,
            "relative_to_runc": self.relative_to_runc,
            "by_class": {c: r.to_dict() for c, r in self.by_class.items()},
        }
        if self.per_operation_ns is not None:
            out["per_operation_ns"] = self.per_operation_ns
        return out


@dataclass
class Reduction:
    """ParaCell's modelled reduction of total time against a baseline, and the claim."""

    baseline: str
    deployment: str
    model_percent: float
    claim_percent: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "deployment": self.deployment,
            "model_percent": self.model_percent,
            "claim_percent": self.claim_percent,
            "claim_source": CLAIM_SOURCE,
            "reason": self.reason,
        }


@dataclass
class LatencyReport:
    """Results of one trace: ``results[runtime][deployment]`` and the reductions.

    Every figure is modelled from cost parameters, not measured.
    """

    trace_name: str
    results: dict[str, dict[str, RuntimeResult]]
    reductions: list[Reduction] = field(default_factory=list)
    nr_events: int = 0
    concurrency: str = "serial"
    mean_busy_cpus: float = 1.0
    operations: int | None = None
    operation_unit: str | None = None

    def result(self, runtime: str, deployment: str) -> RuntimeResult:
        return self.results[runtime][deployment]

    def to_dict(self) -> dict[str, Any]:
        """Return ``{runtime: {deployment: {...}}}`` plus a ``"reductions"`` key.

        ``"reductions"`` maps ``"paracell_vs_<baseline>"`` to
        ``{deployment: {...}}``; every other key is a runtime name.
        """
        out: dict[str, Any] = {
            runtime: {dep: r.to_dict() for dep, r in by_dep.items()}
            for runtime, by_dep in self.results.items()
        }
        reductions: dict[str, dict[str, Any]] = {}
        for red in self.reductions:
            reductions.setdefault(f"paracell_vs_{red.baseline}", {})[red.deployment] = (
                red.to_dict()
            )
        out["reductions"] = reductions
        return out


def _check_choices(runtimes: Sequence[str], deployments: Sequence[str]) -> None:
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise ModelError(
                f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}"
            )
    for deployment in deployments:
        if deployment not in DEPLOYMENTS:
            raise ModelError(
                f"unknown deployment {deployment!r}; "
                f"choose from {', '.join(DEPLOYMENTS)}"
            )


def with_page_counts(
    events: TraceEvents,
    first_touch_pages: int | None = None,
    pager_bound_pages: int | None = None,
) -> TraceEvents:
    """Return a copy of ``events`` whose page classes use the given counts.

    Without ``pager_bound_pages`` the Pager binds exactly the pages that
    would otherwise be touched first.
    """
    if first_touch_pages is None and pager_bound_pages is None:
        return events
    copy = dataclasses.replace(
        events,
        counts={c: dict(s) for c, s in events.counts.items()},
        weighted={c: dict(s) for c, s in events.weighted.items()},
    )
    if first_touch_pages is not None:
        copy.scale_pages("first_touch", first_touch_pages)
    bound = pager_bound_pages if pager_bound_pages is not None else first_touch_pages
    if bound is not None:
        copy.scale_pages("pager_bind", bound)
    return copy


def _runtime_result(
    events: TraceEvents, costs: CostTable, runtime: str, deployment: str
) -> tuple[RuntimeResult, float]:
    per_event = path_costs(costs, runtime, deployment)
    by_class: dict[str, ClassResult] = {}
    overhead = 0.0
    for cls in CLASSES:
        count = weighted_ns = cpu_ns = 0.0
        for sub in SUBGROUPS[cls]:
            cost = per_event[cls][sub]
            count += events.counts[cls][sub]
            weighted_ns += events.weighted[cls][sub] * cost
            cpu_ns += events.counts[cls][sub] * cost
        by_class[cls] = ClassResult(count, weighted_ns, cpu_ns)
        overhead += weighted_ns
    result = RuntimeResult(
        runtime=runtime,
        deployment=deployment,
        native_ns=events.native_ns,
        overhead_ns=int(round(overhead)),
        by_class=by_class,
    )
    if events.operations:
        result.per_operation_ns = result.total_ns / events.operations
    return result, overhead


def evaluate_events(
    events: TraceEvents,
    costs: CostTable,
    runtimes: Sequence[str] = RUNTIMES,
    deployments: Sequence[str] = DEPLOYMENTS,
) -> LatencyReport:
    """Evaluate an already classified trace (see :func:`evaluate`)."""
    _check_choices(runtimes, deployments)
    results: dict[str, dict[str, RuntimeResult]] = {}
    for runtime in runtimes:
        results[runtime] = {}
        for deployment in deployments:
            results[runtime][deployment], _ = _runtime_result(
                events, costs, runtime, deployment
            )
    for deployment in deployments:
        runc = (
            results["runc"][deployment]
            if "runc" in results
            else _runtime_result(events, costs, "runc", deployment)[0]
        )
        for runtime in runtimes:
            result = results[runtime][deployment]
            result.relative_to_runc = (
                result.total_ns / runc.total_ns if runc.total_ns else 1.0
            )
    report = LatencyReport(
        trace_name=events.name,
        results=results,
        nr_events=events.nr_events,
        concurrency=events.concurrency,
        mean_busy_cpus=events.mean_busy_cpus,
        operations=events.operations,
        operation_unit=events.operation_unit,
    )
    report.reductions = list(_reductions(results, deployments))
    return report


def evaluate(
    trace: Trace | TraceEvents,
    costs: CostTable | None = None,
    runtimes: Sequence[str] = RUNTIMES,
    deployments: Sequence[str] = DEPLOYMENTS,
    first_touch_pages: int | None = None,
    pager_bound_pages: int | None = None,
) -> LatencyReport:
    """Replay ``trace`` through each runtime on each deployment.

    :param trace: a loaded trace, or the result of :func:`classify` to reuse one.
    :param costs: the cost table (default: :func:`paracell.costs.default_costs`).
    :param first_touch_pages: secondary faults of RunV and PVM. The default is
        the number of distinct page frames the trace allocates; the memory
        model's ``static`` policy gives the count for a modelled guest.
    :param pager_bound_pages: pages ParaCell's Pager binds (default: the first
        touches).
    :raises ModelError: for an unknown runtime or deployment.
    """
    _check_choices(runtimes, deployments)
    events = trace if isinstance(trace, TraceEvents) else classify(trace)
    events = with_page_counts(events, first_touch_pages, pager_bound_pages)
    table = costs if costs is not None else default_costs()
    return evaluate_events(events, table, runtimes, deployments)


def reduction_percent(paracell: RuntimeResult, baseline: RuntimeResult) -> float:
    """Return how much lower ParaCell's total is than the baseline's, in percent."""
    if baseline.total_ns == 0:
        return 0.0
    return 100.0 * (1.0 - paracell.total_ns / baseline.total_ns)


def _reductions(
    results: dict[str, dict[str, RuntimeResult]], deployments: Iterable[str]
) -> Iterable[Reduction]:
    if "paracell" not in results:
        return
    for baseline in ("pvm", "runv"):
        if baseline not in results:
            continue
        for deployment in deployments:
            pc = results["paracell"][deployment]
            base = results[baseline][deployment]
            model = reduction_percent(pc, base)
            claim = CLAIMS[(baseline, deployment)]
            yield Reduction(
                baseline, deployment, model, claim, _explain(pc, base, model, claim)
            )


def _explain(pc: RuntimeResult, base: RuntimeResult, model: float, claim: float) -> str:
    """Return one line saying why the modelled reduction differs from the claim."""
    name = base.runtime.upper() if base.runtime == "pvm" else "RunV"
    if abs(model - claim) <= AGREEMENT_POINTS:
        return f"within {AGREEMENT_POINTS:g} points of the published figure"
    if base.total_ns == 0:
        return "the trace has no native time and no overhead"
    ceiling = 100.0 * base.overhead_ns / base.total_ns
    if model < 0:
        worst = max(
            pc.by_class.items(),
            key=lambda kv: kv[1].overhead_ns - base.by_class[kv[0]].overhead_ns,
        )
        extra = worst[1].overhead_ns - base.by_class[worst[0]].overhead_ns
        return (
            f"ParaCell is slower than {name} on this trace, mostly in {worst[0]} "
            f"(+{extra / 1e6:.2f} ms)"
        )
    if model < claim:
        if ceiling < claim:
            return (
                f"native time is {100 - ceiling:.0f} % of {name}'s modelled total, "
                f"so even a runtime without overhead would be at most {ceiling:.1f} % "
                "faster; the published figure is a best case over other workloads"
            )
        kept_percent = (
            100.0 * pc.overhead_ns / base.overhead_ns if base.overhead_ns else 0.0
        )
        top = max(pc.by_class.items(), key=lambda kv: kv[1].overhead_ns)
        return (
            f"ParaCell keeps {kept_percent:.0f} % of {name}'s overhead, most of it in "
            f"{top[0]} ({top[1].overhead_ns / 1e6:.2f} ms), which the model charges "
            "ParaCell much as it charges " + name
        )
    saved = max(
        base.by_class.items(),
        key=lambda kv: kv[1].overhead_ns - pc.by_class[kv[0]].overhead_ns,
    )
    gain = saved[1].overhead_ns - pc.by_class[saved[0]].overhead_ns
    return (
        f"{name}'s modelled overhead on this trace is larger than on the published "
        f"workloads, mostly in {saved[0]}, where ParaCell saves {gain / 1e6:.2f} ms"
    )
