"""`paracell memory`: replay allocator events through the memory policies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from paracell.cli._common import (
    add_json_argument,
    add_profile_argument,
    add_trace_arguments,
    announce_first_compile,
    check_plot_path,
    load_traces,
    make_console,
    parse_size,
    print_json,
    progress_bar,
    unique_labels,
)
from paracell.cli.results import record_run
from paracell.errors import ParacellError
from paracell.reports.saving import add_save_arguments, check_save_target
from paracell.trace.caveats import trace_caveats

POLICY_NAMES = ("static", "thp", "fpr", "balloon", "damon", "hyperalloc", "pager")
PLACEMENT_NAMES = ("buddy", "llfree", "trace")
_MIB = float(1 << 20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.add_argument(
        "--policy",
        action="append",
        choices=POLICY_NAMES,
        metavar="P",
        help="policy to model; repeat for several (default: all of "
        + ", ".join(POLICY_NAMES)
        + ")",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENT_NAMES,
        help="guest allocator for every policy (default: llfree for hyperalloc, "
        "buddy for the others; trace keeps the captured page frames)",
    )
    parser.add_argument(
        "--guest-ram",
        metavar="SIZE",
        help="RAM of the modelled guest, e.g. 4GiB or 512MiB "
        "(default: memory.guest_ram, 4 GiB)",
    )
    parser.add_argument(
        "--vcpus",
        type=int,
        metavar="N",
        help="guest vCPUs; trace CPU c runs on vCPU c mod N "
        "(default: the trace's CPU count)",
    )
    add_profile_argument(parser)
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw footprint over time for every policy; with several traces "
        "the trace name is added to the file name",
    )
    parser.add_argument(
        "--pager-sweep",
        action="store_true",
        help="also sweep the Pager's unbind batch, delay and reserve and show "
        "waste against hypercalls",
    )
    parser.add_argument(
        "--sweep-plot",
        type=Path,
        metavar="FILE.png",
        help="draw the Pager sweep (implies --pager-sweep)",
    )
    add_json_argument(parser)
    add_save_arguments(parser)


def _plot_path(base: Path, trace_name: str, several: bool) -> Path:
    if not several:
        return base
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in trace_name)
    return base.with_name(f"{base.stem}-{safe}{base.suffix or '.png'}")


def run(args: argparse.Namespace) -> int:
    from paracell.costs import load_costs
    from paracell.models.memory import ALL, AllocatorEvents, evaluate
    from paracell.models.memory.replay import replay_kernel

    costs = load_costs(args.profile)
    check_save_target(args)
    policies = args.policy or list(ALL)
    guest_ram = parse_size(args.guest_ram, "--guest-ram") if args.guest_ram else None
    if guest_ram is not None and args.placement == "trace":
        print(
            "paracell: --guest-ram is ignored with --placement trace, which keeps "
            "the captured page frames of the capturing machine",
            file=sys.stderr,
        )
    if args.vcpus is not None and args.vcpus < 1:
        raise ParacellError(f"--vcpus {args.vcpus} is invalid; give 1 or more")
    for option, path in (("--plot", args.plot), ("--sweep-plot", args.sweep_plot)):
        if path is not None:
            check_plot_path(path, option)
    sweep = args.pager_sweep or args.sweep_plot is not None
    traces = load_traces(args.traces)
    labels = unique_labels([t.name for t in traces])
    announce_first_compile(replay_kernel)
    quiet = getattr(args, "quiet", False)
    document: dict[str, Any] = {}
    printed: list[tuple[Any, dict[str, Any], Any]] = []
    pairs = list(zip(traces, labels, strict=True))
    for trace, label in progress_bar(pairs, len(pairs), "memory model", quiet):
        events = AllocatorEvents.from_trace(trace)
        report = evaluate(
            events,
            costs,
            policies=policies,
            placement=args.placement,
            guest_ram_bytes=guest_ram,
            vcpus=args.vcpus,
        )
        entry: dict[str, Any] = report.to_dict()
        entry["notes"] = trace_caveats(trace) + _policy_notes(report, costs)
        several = len(traces) > 1
        if args.plot:
            from paracell.models.memory.plot import plot_footprints

            path = _plot(plot_footprints, report, _plot_path(args.plot, label, several))
            entry["plot"] = str(path)
        points = None
        if sweep:
            from paracell.models.memory.sweep import pager_sweep

            points = pager_sweep(
                events, costs, placement=args.placement, guest_ram_bytes=guest_ram
            )
            entry["pager_sweep"] = [p.to_dict() for p in points]
            if args.sweep_plot:
                from paracell.models.memory.plot import plot_sweep

                target = _plot_path(args.sweep_plot, label, several)
                path = _plot(plot_sweep, points, trace.name, target)
                entry["sweep_plot"] = str(path)
        document[label] = entry
        record_run(args, "memory", trace, entry)
        printed.append((report, entry, points))
    # Tables are printed after the loop so they do not interleave with the
    # progress bar on standard error.
    if args.json:
        print_json({"modelled": True, "traces": document})
    else:
        for report, entry, points in printed:
            _print_report(report, entry, points)
    for entry in document.values():
        for key in ("plot", "sweep_plot"):
            if key in entry:
                print(f"paracell: wrote {entry[key]}", file=sys.stderr)
    return 0


def _plot(function: Any, *arguments: Any) -> Any:
    try:
        return function(*arguments)
    except OSError as exc:
        raise ParacellError(
            f"{exc.filename}: cannot write plot ({exc.strerror})"
        ) from None


def _policy_notes(report: Any, costs: Any) -> list[str]:
    """Explain results a reader would otherwise take for a bug."""
    notes = []
    damon = report.runs.get("damon")
    min_age_ns = costs.get("memory.damon.min_age")
    if damon is not None and report.duration_ns < min_age_ns:
        notes.append(
            f"damon reclaims nothing here: its minimum age "
            f"(memory.damon.min_age, {min_age_ns / 1e9:g} s) is longer than the "
            f"trace ({report.duration_ns / 1e9:.1f} s)"
        )
    return notes


def _print_report(report: Any, entry: dict[str, Any], points: Any) -> None:
    from rich import box
    from rich.table import Table

    from paracell.models.memory.metrics import format_faults

    console = make_console()
    info = entry["trace"]
    console.print(
        f"[bold]{report.trace_name}[/bold]: {info['duration_ns'] / 1e9:.1f} s, "
        f"{info['allocations']} allocations, {info['frees']} frees "
        f"(modelled, not measured)"
    )
    rows = []
    for name, run in report.runs.items():
        m = run.metrics
        rows.append(
            (
                name,
                m["placement"],
                f"{m['mean_footprint_bytes'] / _MIB:.1f}",
                f"{m['peak_footprint_bytes'] / _MIB:.1f}",
                f"{m['gib_seconds']:#.3g}",
                f"{m['waste_fraction'] * 100:.2f}",
                format_faults(m),
                f"{m['hypercalls']:,}",
                f"{m['pages_bound']:,}",
                f"{m['pages_unbound']:,}",
                f"{m['overhead_ns'] / 1e6:.1f}",
            )
        )
    headers = (
        "policy",
        "guest\nalloc",
        "mean\nMiB",
        "peak\nMiB",
        "GiB\nx s",
        "waste\n%",
        "2nd\nfaults",
        "hyper-\ncalls",
        "pages\nbound",
        "pages\nunbound",
        "overhead\nms",
    )
    # No vertical rules, and every column at least as wide as its longest
    # value and header word: an 80-column terminal shows them all whole.
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        header_style="bold",
        padding=(0, 0),
        pad_edge=False,
    )
    for index, header in enumerate(headers):
        width = max(
            max(len(row[index]) for row in rows),
            max(len(word) for word in header.split()),
        )
        table.add_column(
            header,
            justify="left" if index < 2 else "right",
            no_wrap=True,
            min_width=width,
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    first = next(iter(report.runs.values())).metrics
    console.print(
        f"guest {first['guest_bytes'] / _MIB:.0f} MiB, {first['vcpus']} vCPUs; "
        f"mean allocated {first['mean_allocated_bytes'] / _MIB:.1f} MiB; "
        f"{first['ignored_free_pages']} freed pages were not allocated in the trace "
        "and were ignored"
    )
    savings = entry["savings"]
    if len(savings) > 1:
        matrix = Table(
            title="savings: row policy's mean footprint against column policy's",
            show_edge=False,
            header_style="bold",
        )
        matrix.add_column("")
        for name in savings:
            matrix.add_column(name, justify="right")
        for name, row in savings.items():
            matrix.add_row(name, *(f"{row[other] * 100:+.1f}%" for other in savings))
        console.print(matrix)
    if points:
        sweep = Table(
            title="Pager sweep (sorted by hypercalls; * marks the default)",
            show_edge=False,
            header_style="bold",
        )
        for column in (
            "unbind batch",
            "delay ms",
            "reserve",
            "mean MiB",
            "waste %",
            "hypercalls",
            "overhead ms",
        ):
            sweep.add_column(column, justify="right")
        for p in sorted(points, key=lambda p: (p.hypercalls, p.waste_fraction)):
            sweep.add_row(
                f"{p.unbind_batch}{' *' if p.is_default else ''}",
                f"{p.unbind_delay_ns / 1e6:g}",
                f"{p.reserve}",
                f"{p.mean_footprint_bytes / _MIB:.1f}",
                f"{p.waste_fraction * 100:.3f}",
                f"{p.hypercalls}",
                f"{p.overhead_ns / 1e6:.1f}",
            )
        console.print(sweep)
    for note in entry["notes"]:
        console.print(f"note: {note}")
    console.print()
