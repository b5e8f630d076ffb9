"""`paracell latency`: replay traces through the runtime latency models."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from paracell.cli._common import (
    add_json_argument,
    add_profile_argument,
    add_trace_arguments,
    load_traces,
    make_console,
    print_json,
    progress_bar,
    singular,
)
from paracell.cli.results import record_run
from paracell.costs import DEPLOYMENTS
from paracell.reports.saving import add_save_arguments, check_save_target
from paracell.trace.caveats import trace_caveats

if TYPE_CHECKING:
    from rich.console import Console

    from paracell.models.latency import LatencyReport, SensitivityReport

RUNTIME_NAMES = ("runc", "runv", "pvm", "paracell")
_LABEL = {"runc": "runc", "runv": "RunV", "pvm": "PVM", "paracell": "ParaCell"}
_SHORT_DEP = {"bare-metal": "BM", "nested": "NST"}

MODELLED_NOTE = (
    "Modelled, not measured: each total is the trace's native wall time plus "
    "overheads computed from the cost parameters (`paracell costs`)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.add_argument(
        "--runtime",
        action="append",
        choices=RUNTIME_NAMES,
        help="runtime to model; repeat for several (default: all)",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        choices=DEPLOYMENTS,
        help="deployment to model; repeat for several (default: both)",
    )
    add_profile_argument(parser)
    add_json_argument(parser)
    add_save_arguments(parser)
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="also vary each estimated parameter over its range, one at a time, "
        "and show how the ranking and ParaCell's reductions move",
    )


def _ordered(chosen: list[str] | None, universe: tuple[str, ...]) -> list[str]:
    return [x for x in universe if chosen is None or x in chosen]


def run(args: argparse.Namespace) -> int:
    from paracell.costs import load_costs
    from paracell.models.latency import classify, evaluate_events, sensitivity

    costs = load_costs(args.profile)
    check_save_target(args)
    runtimes = _ordered(args.runtime, RUNTIME_NAMES)
    deployments = _ordered(args.deployment, DEPLOYMENTS)
    traces = load_traces(args.traces)
    documents: list[dict[str, Any]] = []
    printed: list[tuple[str, Any, Any, list[str]]] = []
    for trace in progress_bar(traces, len(traces), "modelling", quiet=args.quiet):
        events = classify(trace)
        report = evaluate_events(events, costs, runtimes, deployments)
        sens = (
            sensitivity(events, costs, runtimes, deployments)
            if args.sensitivity
            else None
        )
        notes = trace_caveats(trace) + [
            "first touches and Pager binds are the trace's distinct allocated "
            "frames; `paracell compare` and `paracell report` take them from the "
            "memory model instead, so their figures differ slightly"
        ]
        record_run(args, "latency", trace, report.to_dict())
        document: dict[str, Any] = {
            "trace": report.trace_name,
            "path": str(trace.path),
            "modelled": True,
            "nr_events": report.nr_events,
            "concurrency": report.concurrency,
            "mean_busy_cpus": report.mean_busy_cpus,
            "results": report.to_dict(),
            "notes": notes,
        }
        if sens is not None:
            document["sensitivity"] = sens.to_dict()
        documents.append(document)
        printed.append((str(trace.path), report, sens, notes))
    if args.json:
        print_json({"modelled": True, "traces": documents})
        return 0
    # Printed after the loop so tables do not interleave with the progress bar.
    console = _console()
    for path, report, sens, notes in printed:
        _print_report(console, path, report, runtimes, deployments)
        if sens is not None:
            _print_sensitivity(console, sens, deployments)
        for note in notes:
            console.print(f"note: {note}")
    return 0


def _console() -> Console:
    return make_console()


def _ms(ns: float) -> str:
    return f"{ns / 1e6:,.3f}"


def _print_report(
    console: Console,
    path: str,
    report: LatencyReport,
    runtimes: list[str],
    deployments: list[str],
) -> None:
    from rich.table import Table
    from rich.text import Text

    first = report.result(runtimes[0], deployments[0])
    if report.concurrency == "serial":
        combine = "no sched_switch events, so overheads are summed as on one CPU"
    else:
        combine = (
            f"{report.mean_busy_cpus:.2f} CPUs busy on average; each overhead "
            "counts 1/k with k CPUs busy at its time"
        )
    console.rule(f"{report.trace_name}")
    console.print(
        f"trace {path}: {report.nr_events:,} events, native time "
        f"{_ms(first.native_ns)} ms; {combine}"
    )
    console.print(Text(MODELLED_NOTE, style="bold"))

    totals = Table(title="Modelled total time (ms)", title_justify="left")
    totals.add_column("runtime")
    for dep in deployments:
        totals.add_column(dep, justify="right")
        totals.add_column("x runc", justify="right")
        if report.operations:
            totals.add_column("us/op", justify="right")
    for runtime in runtimes:
        row = [_LABEL[runtime]]
        for dep in deployments:
            result = report.result(runtime, dep)
            row += [_ms(result.total_ns), f"{result.relative_to_runc:.3f}"]
            if report.operations and result.per_operation_ns is not None:
                row.append(f"{result.per_operation_ns / 1e3:,.2f}")
        totals.add_row(*row)
    console.print(totals)
    if report.operations:
        console.print(
            f"us/op: modelled time per {singular(report.operation_unit)} "
            f"({report.operations:,} in the trace)"
        )

    overheads = [r for r in runtimes if r != "runc"]
    for dep in deployments:
        table = Table(
            title=f"Overhead by class, {dep} (ms)",
            title_justify="left",
        )
        table.add_column("class")
        table.add_column("count", justify="right")
        for runtime in overheads:
            table.add_column(_LABEL[runtime], justify="right")
        by_class = report.result(runtimes[0], dep).by_class
        for cls, entry in by_class.items():
            table.add_row(
                cls,
                f"{entry.count:,.0f}",
                *(
                    _ms(report.result(r, dep).by_class[cls].overhead_ns)
                    for r in overheads
                ),
            )
        table.add_row(
            "total",
            "",
            *(_ms(report.result(r, dep).overhead_ns) for r in overheads),
            style="bold",
        )
        if overheads:
            console.print(table)

    if report.reductions:
        claims = Table(
            title="ParaCell's reduction of total time against the published claims "
            "(PC26, best cases over its workloads)",
            title_justify="left",
        )
        for column in ("against", "deployment", "model", "claim", "why they differ"):
            claims.add_column(
                column,
                justify="right" if column in ("model", "claim") else "left",
                overflow="fold",
            )
        for red in report.reductions:
            claims.add_row(
                _LABEL[red.baseline],
                red.deployment,
                f"{red.model_percent:.1f} %",
                f"{red.claim_percent:.0f} %",
                Text(red.reason),
            )
        console.print(claims)
    console.print()


def _print_sensitivity(
    console: Console, sens: SensitivityReport, deployments: list[str]
) -> None:
    from rich.table import Table
    from rich.text import Text

    from paracell.cli.costs import display_unit
    from paracell.costs import load_costs

    table = Table(
        title="Sensitivity: each estimate at its low and high bound, the others at "
        "their values; ParaCell's reductions of total time in %",
        title_justify="left",
    )
    table.add_column("estimate", no_wrap=True)
    table.add_column("bound")
    table.add_column("value", justify="right", no_wrap=True)
    reduction_keys = sorted(sens.default.reductions)
    for key in reduction_keys:
        for dep in deployments:
            baseline = _LABEL[key.removeprefix("paracell_vs_")]
            table.add_column(f"vs {baseline} {_SHORT_DEP[dep]}", justify="right")
    table.add_column("ranking, fastest first", overflow="fold")

    def reductions(outcome_reductions: dict[str, dict[str, float]]) -> list[str]:
        return [
            f"{outcome_reductions[k][dep]:.1f}"
            for k in reduction_keys
            for dep in deployments
        ]

    def ranking(order: dict[str, list[str]], only: list[str]) -> str:
        return "; ".join(
            f"{_SHORT_DEP[dep]}: " + " < ".join(_LABEL[r] for r in order[dep])
            for dep in only
        )

    table.add_row(
        "(defaults)",
        "",
        "",
        *reductions(sens.default.reductions),
        ranking(sens.default.ranking, deployments),
        style="bold",
    )
    units = {p.key: display_unit(p) for p in load_costs()}
    for var in sens.variations:
        name = var.name if var.deployment == "any" else f"{var.name} ({var.deployment})"
        unit, factor = units.get((var.name, var.deployment), (var.unit, 1.0))
        changed = [dep for dep in deployments if var.ranking_changed[dep]]
        table.add_row(
            Text(name),
            var.bound,
            f"{var.value / factor:.4g} {unit}",
            *reductions(var.outcome.reductions),
            ranking(var.outcome.ranking, changed) if changed else "same",
        )
    console.print(table)
    movers = [v for v in sens.variations if any(v.ranking_changed.values())]
    if movers:
        console.print(
            f"{len(movers)} of {len(sens.variations)} settings change a ranking."
        )
    else:
        console.print(f"None of the {len(sens.variations)} settings changes a ranking.")
    console.print()
