"""`paracell live`: run a memory policy's op stream on real host memory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paracell.cli._common import (
    add_json_argument,
    add_profile_argument,
    add_trace_arguments,
    announce_first_compile,
    load_traces,
    make_console,
    parse_size,
    print_json,
)
from paracell.cli.results import record_run
from paracell.errors import ParacellError
from paracell.reports.saving import add_save_arguments, check_save_target

if TYPE_CHECKING:
    from rich.console import Console

    from paracell.live.session import LiveReport

POLICY_NAMES = ("static", "thp", "fpr", "balloon", "damon", "hyperalloc", "pager")
PLACEMENT_NAMES = ("buddy", "llfree", "trace")
_MIB = float(1 << 20)

MEASURED_NOTE = (
    "Measured: resident memory of the region (mincore after every operation and "
    "a full scan at every sample), minor faults of this thread (perf counter of "
    "hardware traps; getrusage also counts MADV_POPULATE_WRITE's page faults) and "
    "wall time per operation. Modelled: the memory model's prediction for the "
    "same op stream."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.add_argument(
        "--policy",
        choices=POLICY_NAMES,
        default="pager",
        metavar="P",
        help="memory policy whose op stream runs on real memory: "
        + ", ".join(POLICY_NAMES)
        + " (default: pager)",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENT_NAMES,
        help="guest allocator (default: llfree for hyperalloc, buddy for the others)",
    )
    parser.add_argument(
        "--guest-ram",
        metavar="SIZE",
        help="RAM of the modelled guest, e.g. 4GiB (default: memory.guest_ram)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help="replay X seconds of trace per second of wall time, sleeping between "
        "operations (default: as fast as possible, in trace order)",
    )
    parser.add_argument(
        "--max-rss",
        metavar="BYTES",
        help="maximum memory the replay adds: the region's resident memory plus "
        "its page tables and buffers, in bytes or with a unit such as 512MiB; the "
        "process's own code and model data (about 300 MiB) are not counted "
        "(default: half of MemAvailable at start)",
    )
    parser.add_argument(
        "--sample-ms",
        type=float,
        default=100.0,
        metavar="N",
        help="trace time between two full scans of the region, in ms (default: 100)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw measured and modelled footprint over trace time; with several "
        "traces the trace name is added to the file name",
    )
    add_profile_argument(parser)
    add_json_argument(parser)
    add_save_arguments(parser)


def _plot_path(base: Path, trace_name: str, several: bool) -> Path:
    if not several:
        return base
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in trace_name)
    return base.with_name(f"{base.stem}-{safe}{base.suffix or '.png'}")


def run(args: argparse.Namespace) -> int:
    from paracell.costs import load_costs
    from paracell.live.session import run_live
    from paracell.live.stream import LiveOptions

    max_rss = parse_size(args.max_rss, "--max-rss") if args.max_rss else None
    guest_ram = parse_size(args.guest_ram, "--guest-ram") if args.guest_ram else None
    if args.sample_ms <= 0:
        raise ParacellError(
            f"--sample-ms {args.sample_ms:g} is invalid; give a positive number"
        )
    if args.speed is not None and args.speed <= 0:
        raise ParacellError(
            f"--speed {args.speed:g} is invalid; give a positive number"
        )
    options = LiveOptions(speed=args.speed, sample_ns=int(args.sample_ms * 1e6))
    costs = load_costs(args.profile)
    check_save_target(args)
    traces = load_traces(args.traces)
    from paracell.live.executor import execute_chunk
    from paracell.models.memory.replay import replay_kernel

    announce_first_compile(replay_kernel, execute_chunk)
    console = None if args.json else _console()
    documents: list[dict[str, Any]] = []
    for trace in traces:
        report = run_live(
            trace,
            args.policy,
            costs,
            placement=args.placement,
            options=options,
            max_rss_bytes=max_rss,
            guest_ram_bytes=guest_ram,
        )
        document = report.to_dict()
        document["path"] = str(trace.path)
        record_run(args, "live", trace, document)
        if args.plot:
            from paracell.live.plot import plot_live

            path = plot_live(report, _plot_path(args.plot, trace.name, len(traces) > 1))
            document["plot"] = str(path)
        if console is None:
            documents.append(document)
        else:
            _print_report(console, report, document)
    if console is None:
        print_json(documents[0] if len(documents) == 1 else {"runs": documents})
    return 0


def _console() -> Console:
    return make_console()


def _mib(nbytes: float | int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / _MIB:,.1f} MiB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2%}"


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e3:,.3f}"


def _print_report(console: Console, report: LiveReport, doc: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    m, model, rel = doc["measured"], doc["model"], doc["relative_difference"]
    console.rule(f"{report.trace_name}: {report.policy}")
    console.print(
        f"trace {doc['path']}: {doc['duration_ns'] / 1e9:.2f} s replayed in "
        f"{m['wall_seconds']:.2f} s on a {m['region_bytes'] / _MIB:,.0f} MiB region "
        f"({'2 MiB' if m['huge_pages_requested'] else '4 KiB'} pages requested, "
        f"transparent huge pages {doc['host']['thp_enabled']!r}), "
        f"{report.placement} placement"
    )
    console.print(Text(MEASURED_NOTE, style="bold"))
    offset = m["fault_offset"] or {}
    table = Table(title="Footprint and faults", title_justify="left")
    for column in ("quantity", "measured", "modelled", "difference"):
        table.add_column(column, justify="left" if column == "quantity" else "right")
    table.add_row(
        "mean footprint (time-weighted)",
        _mib(m["mean_resident_bytes"]),
        _mib(model["mean_footprint_bytes"]),
        _pct(rel["mean_footprint"]),
    )
    table.add_row(
        "mean footprint at the samples",
        _mib(m["sampled_mean_resident_bytes"]),
        _mib(model["sampled_mean_footprint_bytes"]),
        _pct(rel["sampled_mean_footprint"]),
    )
    table.add_row(
        "peak footprint",
        _mib(m["peak_resident_bytes"]),
        _mib(model["peak_footprint_bytes"]),
        _pct(rel["peak_footprint"]),
    )
    table.add_row("minor faults, hardware traps", _count(m["minor_faults"]), "", "")
    table.add_row("  offset (dry replay)", _count(offset.get("minor_faults")), "", "")
    table.add_row(
        "  less the offset",
        _count(m["minor_faults_corrected"]),
        _count(model["expected_minor_faults"]),
        _pct(rel["minor_faults"]),
    )
    table.add_row("minor faults, getrusage", _count(m["minor_faults_rusage"]), "", "")
    table.add_row(
        "  of them get_user_pages", _count(m["get_user_pages_faults"]), "", ""
    )
    console.print(table)

    timing = Table(title="Time per operation (wall clock)", title_justify="left")
    for column in (
        "operation",
        "ops",
        "pages",
        "median us/page",
        "mean us/page",
        "model us",
        "per",
        "parameter",
    ):
        timing.add_column(
            column, justify="left" if column in ("operation", "parameter") else "right"
        )
    for name, entry in doc["time_per_page"].items():
        measured = entry["measured"]
        median = measured["median_ns_per_page"]
        mean = measured["ns_per_page"]
        if name == "touch_fault":
            median = measured["median_ns_per_page_not_resident"]
            mean = measured.get("ns_per_faulted_page", mean)
        predicted = entry.get("model", {})
        per = next(
            (k[len("ns_per_") :] for k in predicted if k.startswith("ns_per_")), ""
        )
        timing.add_row(
            name,
            _count(measured["operations"]),
            _count(measured["pages"]),
            _us(median),
            _us(mean),
            _us(predicted.get(f"ns_per_{per}")) if per else "-",
            per,
            predicted.get("parameter", ""),
        )
    console.print(timing)
    if m.get("huge_page_share_at_peak") is not None:
        share = m["huge_page_share_at_peak"]
        console.print(f"2 MiB pages at the peak: {share:.0%} of resident memory")
    for note in doc["notes"]:
        console.print(f"note: {note}")


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
