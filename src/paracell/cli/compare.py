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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paracell import __version__
from paracell.cli._common import (
    add_json_argument,
    add_profile_argument,
    add_trace_arguments,
    announce_first_compile,
    load_traces,
    make_console,
    print_json,
    progress_bar,
    singular,
    unique_labels,
)
from paracell.cli.results import record_run
from paracell.errors import ModelError, ParacellError
from paracell.reports.output import check_output_dir
from paracell.reports.saving import add_save_arguments, check_save_target

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
    check_save_target(args)
    if args.out:
        # Checked before modelling, so a bad path does not cost the whole run.
        check_output_dir(args.out)
    traces = load_traces(args.traces)
    announce_first_compile(replay_kernel, syscall_totals)
    labels = unique_labels([t.name for t in traces])
    documents = []
    for trace, label in progress_bar(
        list(zip(traces, labels, strict=True)), len(traces), "comparing", args.quiet
    ):
        documents.append(compare_trace(trace, costs, label))
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
    trace: Trace, costs: CostTable, label: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run both models on one trace; return its JSON summary and the report objects."""
    from paracell.models import latency, memory
    from paracell.trace.caveats import trace_caveats

    summary: dict[str, Any] = {
        "name": label or trace.name,
        "workload": trace.name,
        "path": str(trace.path),
        "kind": trace.manifest.workload.kind,
        "duration_ns": trace.manifest.duration_ns,
        "notes": trace_caveats(trace),
    }
    reports: dict[str, Any] = {"trace": trace, "memory": None, "latency": None}
    first_touch = pager_bound = None
    try:
        mem = memory.evaluate(trace, costs)
    except ModelError as exc:
        # A trace without allocator events (an strace import) still has a
        # latency result; the notes state why its memory table is missing.
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
    summary["notes"] += _linking_notes(reports["memory"], costs, first_touch)
    return summary, reports


def _linking_notes(mem: Any, costs: CostTable, first_touch: int | None) -> list[str]:
    """Say where the latency model's page counts came from and how faults are priced."""
    if mem is None:
        return []
    pager = mem.runs["pager"]
    fault_us = (
        costs.get("memory.first_touch_unbound") - costs.get("memory.first_touch_bound")
    ) / 1e3
    return [
        f"latency: RunV and PVM take {first_touch:,} first-touch faults (the memory "
        f"model's static policy on {mem.runs['static'].placement} placement) and "
        f"ParaCell's Pager binds {int(pager.metrics['pages_bound']):,} pages; "
        "`paracell latency` alone counts the trace's distinct allocated frames",
        f"memory: overhead prices a secondary fault at {fault_us:.1f} us, as "
        "measured on a PVM guest nested in a cloud VM; the latency table prices "
        "first touches per runtime and deployment",
    ]


def _console(file: Any) -> Console:
    return make_console(file)


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
    tables = [latency_table(reports["latency"]), reduction_table(reports["latency"])]
    if reports["memory"] is not None:
        tables.append(memory_table(reports["memory"]))
    for table in tables:
        console.print()
        console.print(table)
    console.print()
    for note in summary["notes"]:
        console.print(f"note: {note}")
    console.print()


def _table(title: str) -> Any:
    from rich import box
    from rich.table import Table

    # A light box and one space of padding keep the widest table in 80 columns.
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        show_edge=False,
        title_justify="left",
    )


def latency_table(report: Any) -> Any:
    ops = report.operations
    table = _table("Latency: modelled total time, ms")
    table.add_column("runtime", no_wrap=True)
    for deployment in ("bare-metal", "nested"):
        table.add_column(deployment, justify="right", no_wrap=True)
        table.add_column("x runc", justify="right", no_wrap=True)
        if ops:
            table.add_column(f"us/{singular(report.operation_unit)}", justify="right")
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
    table = _table("ParaCell's reduction of total time: model vs published claim")
    table.add_column("against", no_wrap=True)
    table.add_column("deployment", no_wrap=True)
    table.add_column("model", justify="right", no_wrap=True)
    table.add_column("claim", justify="right", no_wrap=True)
    table.add_column("why they differ", overflow="fold", max_width=70)
    for r in report.reductions:
        table.add_row(
            RUNTIME_LABELS.get(r.baseline, r.baseline),
            r.deployment,
            # + 0.0 turns a rounded -0.0 into 0.0.
            f"{round(r.model_percent, 1) + 0.0:.1f}%",
            f"{r.claim_percent:.0f}%",
            r.reason,
        )
    return table


# (header, justify); units go in the title so values stay narrow.
_MEMORY_COLUMNS = [
    ("policy", "left"),
    ("placement", "left"),
    ("mean", "right"),
    ("peak", "right"),
    ("GiB*s", "right"),
    ("waste", "right"),
    ("2nd\nfaults", "right"),
    ("calls", "right"),
    ("host\nms", "right"),
    ("pager\nsaves", "right"),
]


def memory_table(report: Any) -> Any:
    table = _table("Memory: modelled footprint in MiB; faults, calls and host time")
    for name, justify in _MEMORY_COLUMNS:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    savings = report.savings()
    for policy, run in report.runs.items():
        mt = run.metrics
        saved = savings.get("pager", {}).get(policy)
        table.add_row(
            policy,
            run.placement,
            f"{mt['mean_footprint_bytes'] / 2**20:,.1f}",
            f"{mt['peak_footprint_bytes'] / 2**20:,.1f}",
            _gib_seconds(mt["gib_seconds"]),
            f"{mt['waste_fraction'] * 100:.1f}%",
            _format_faults(mt),
            f"{int(mt['hypercalls']):,}",
            f"{mt['overhead_ns'] / 1e6:,.1f}",
            "-" if policy == "pager" or saved is None else f"{saved * 100:.1f}%",
        )
    return table


def _gib_seconds(value: float) -> str:
    # Short traces have footprints of a few MiB for a second or two.
    return f"{value:.3g}" if value < 1 else f"{value:,.2f}"


def write_outputs(
    out: Path,
    document: dict[str, Any],
    documents: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Write a footprint plot per trace, compare.txt and compare.json to ``out``.

    Every file is written under a temporary name and renamed into place, and
    compare.json comes last, so an interrupted run leaves no truncated file.
    """
    from paracell.models.memory.plot import plot_footprints

    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for summary, reports in documents:
            if reports["memory"] is not None:
                path = out / f"footprint-{summary['name']}.png"
                _replace_atomically(path, partial(plot_footprints, reports["memory"]))
                written.append(path)
        buffer = io.StringIO()
        console = _console(buffer)
        for summary, reports in documents:
            render_trace(console, summary, reports)
        console.print(MODELLED_NOTE)
        text = buffer.getvalue()
        _replace_atomically(out / "compare.txt", lambda tmp: tmp.write_text(text))
        body = json.dumps(document, indent=2, default=_plain) + "\n"
        _replace_atomically(out / "compare.json", lambda tmp: tmp.write_text(body))
    except OSError as exc:
        raise ParacellError(
            f"{exc.filename or out}: cannot write output ({exc.strerror})",
            hint="choose a writable --out directory",
        ) from None
    names = ", ".join(p.name for p in [*written, out / "compare.txt"])
    print(f"paracell: wrote {out}/compare.json, {names}", file=sys.stderr)


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    # The temporary name keeps the suffix: matplotlib picks the format from it.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _format_faults(metrics: dict[str, Any]) -> str:
    # Imported here: the memory model pulls in numba, and `--help` should not.
    from paracell.models.memory.metrics import format_faults

    return format_faults(metrics)
