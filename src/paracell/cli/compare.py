"""`paracell compare`: every runtime and every memory policy on each trace.

This is the main job. With no TRACE it runs on the shipped traces and prints,
per trace, a latency table (four runtimes on bare metal and nested) and a
memory table (seven host policies). The two models are linked: the secondary
faults that RunV and PVM pay on first touch come from the memory model's
``static`` policy on a modelled guest, and the pages ParaCell binds ahead of
use come from its ``pager`` policy.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paracell import __version__
from paracell.cli._common import (
    add_json_argument,
    add_profile_argument,
    add_trace_arguments,
    announce_first_compile,
    load_traces,
    print_json,
    progress_bar,
)
from paracell.cli.results import record_run
from paracell.errors import ModelError, ParacellError
from paracell.reports.saving import add_save_arguments

if TYPE_CHECKING:
    from rich.console import Console

    from paracell.costs import CostTable
    from paracell.trace import Trace

log = logging.getLogger("paracell.compare")

RUNTIME_LABELS = {"runc": "runc", "runv": "RunV", "pvm": "PVM", "paracell": "ParaCell"}
MODELLED_NOTE = (
    "All figures are modelled from the cost parameters (`paracell costs`), "
    "not measured; `paracell live` measures the memory policies on real memory."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    add_profile_argument(parser)
    add_json_argument(parser)
    add_save_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write compare.json, compare.txt and one footprint plot per "
        "trace to DIR",
    )


def run(args: argparse.Namespace) -> int:
    from paracell.costs import load_costs
    from paracell.models.latency._kernels import syscall_totals
    from paracell.models.memory.replay import replay_kernel

    costs = load_costs(args.profile)
    traces = load_traces(args.traces)
    announce_first_compile(replay_kernel, syscall_totals)
    documents = []
    for trace in progress_bar(traces, len(traces), "comparing", quiet=args.quiet):
        documents.append(compare_trace(trace, costs))
        record_run(args, "compare", trace, documents[-1][0])
    document = {
        "tool_version": __version__,
        "modelled": True,
        "profile": str(args.profile) if args.profile else None,
        "traces": [d for d, _ in documents],
    }
    if args.json:
        print_json(document)
    else:
        console = _console(sys.stdout)
        for summary, reports in documents:
            render_trace(console, summary, reports)
        console.print(MODELLED_NOTE, style="italic")
    if args.out:
        write_outputs(args.out, document, documents)
    return 0


def compare_trace(
    trace: Trace, costs: CostTable
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run both models on one trace; return its JSON summary and the report objects."""
    from paracell.models import latency, memory

    summary: dict[str, Any] = {
        "name": trace.name,
        "path": str(trace.path),
        "kind": trace.manifest.workload.kind,
        "duration_ns": trace.manifest.duration_ns,
        "notes": [],
    }
    reports: dict[str, Any] = {"trace": trace, "memory": None, "latency": None}
    first_touch = pager_bound = None
    try:
        mem = memory.evaluate(trace, costs)
    except ModelError as exc:
        # A trace without allocator events (an strace import) still has a
        # latency result; say why its memory table is missing.
        summary["notes"].append(f"memory model skipped: {exc}")
        summary["memory"] = {}
    else:
        reports["memory"] = mem
        summary["memory"] = mem.to_dict()
        first_touch = int(mem.runs["static"].metrics["secondary_faults"])
        pager_bound = int(mem.runs["pager"].metrics["pages_bound"])
    lat = latency.evaluate(
        trace, costs, first_touch_pages=first_touch, pager_bound_pages=pager_bound
    )
    reports["latency"] = lat
    summary["latency"] = lat.to_dict()
    if first_touch is None:
        summary["notes"].append(
            "first touches counted from the trace's distinct allocated frames"
        )
    return summary, reports


def _console(file: Any) -> Console:
    from rich.console import Console

    # Piped output gets a fixed width so tables are not squeezed to 80 columns.
    width = None if file.isatty() else 120
    return Console(file=file, width=width, highlight=False)


def render_trace(
    console: Console, summary: dict[str, Any], reports: dict[str, Any]
) -> None:
    """Print the latency and memory tables of one trace."""
    trace = reports["trace"]
    m = trace.manifest
    console.rule(f"[bold]{summary['name']}[/bold] ({summary['kind']})")
    console.print(
        f"{m.duration_ns / 1e9:.2f} s traced on {m.cpu_count} CPUs, kernel "
        f"{m.kernel_release}; {sum(m.event_counts.values()):,} events"
    )
    console.print(latency_table(reports["latency"]))
    console.print(reduction_table(reports["latency"]))
    if reports["memory"] is not None:
        console.print(memory_table(reports["memory"]))
    for note in summary["notes"]:
        console.print(f"note: {note}")


def latency_table(report: Any) -> Any:
    from rich.table import Table

    ops = report.operations
    table = Table(title="Latency: modelled total time")
    table.add_column("runtime")
    for deployment in ("bare-metal", "nested"):
        table.add_column(f"{deployment} ms", justify="right")
        table.add_column("x runc", justify="right")
        if ops:
            table.add_column(f"us/{report.operation_unit or 'op'}", justify="right")
    for runtime, label in RUNTIME_LABELS.items():
        if runtime not in report.results:
            continue
        row = [label]
        for deployment in ("bare-metal", "nested"):
            r = report.results[runtime].get(deployment)
            if r is None:
                row += ["-", "-"] + (["-"] if ops else [])
                continue
            row += [f"{r.total_ns / 1e6:,.1f}", f"{r.relative_to_runc:.3f}"]
            if ops:
                row.append(f"{r.total_ns / ops / 1e3:.2f}")
        table.add_row(*row)
    return table


def reduction_table(report: Any) -> Any:
    from rich.table import Table

    table = Table(title="ParaCell's reduction of total time (model vs published claim)")
    for name in ("against", "deployment", "model", "claim"):
        table.add_column(
            name, justify="right" if name in ("model", "claim") else "left"
        )
    table.add_column("why they differ", overflow="fold", max_width=70)
    for r in report.reductions:
        table.add_row(
            RUNTIME_LABELS.get(r.baseline, r.baseline),
            r.deployment,
            f"{r.model_percent:.1f} %",
            f"{r.claim_percent:.0f} %",
            r.reason,
        )
    return table


def memory_table(report: Any) -> Any:
    from rich.table import Table

    table = Table(title="Memory: modelled host footprint per policy")
    columns = [
        ("policy", "left"),
        ("placement", "left"),
        ("mean MiB", "right"),
        ("peak MiB", "right"),
        ("GiB x s", "right"),
        ("waste", "right"),
        ("2nd faults", "right"),
        ("hypercalls", "right"),
        ("overhead ms", "right"),
        ("pager saves", "right"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    savings = report.savings()
    for policy, run in report.runs.items():
        mt = run.metrics
        saved = savings.get("pager", {}).get(policy)
        table.add_row(
            policy,
            run.placement,
            f"{mt['mean_footprint_bytes'] / 2**20:,.1f}",
            f"{mt['peak_footprint_bytes'] / 2**20:,.1f}",
            f"{mt['gib_seconds']:.3f}",
            f"{mt['waste_fraction'] * 100:.2f} %",
            f"{int(mt['secondary_faults']):,}",
            f"{int(mt['hypercalls']):,}",
            f"{mt['overhead_ns'] / 1e6:,.2f}",
            "-" if policy == "pager" or saved is None else f"{saved * 100:.1f} %",
        )
    return table


def write_outputs(
    out: Path,
    document: dict[str, Any],
    documents: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Write compare.json, compare.txt and a footprint plot per trace to ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParacellError(
            f"{out}: cannot create output directory ({exc.strerror})"
        ) from None
    _write_atomic(
        out / "compare.json", json.dumps(document, indent=2, default=_plain) + "\n"
    )
    buffer = io.StringIO()
    console = _console(buffer)
    for summary, reports in documents:
        render_trace(console, summary, reports)
    console.print(MODELLED_NOTE)
    _write_atomic(out / "compare.txt", buffer.getvalue())
    for summary, reports in documents:
        if reports["memory"] is not None:
            _plot_footprint(reports["memory"], out / f"footprint-{summary['name']}.png")


def _plot_footprint(report: Any, path: Path) -> None:
    from paracell.models.memory.plot import plot_footprints

    plot_footprints(report, path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
