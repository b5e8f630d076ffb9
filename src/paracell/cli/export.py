"""`paracell export`: write the modelled timeline of a trace as Chrome trace events."""

from __future__ import annotations

import argparse
from pathlib import Path

from paracell.cli._common import add_profile_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", type=Path, metavar="TRACE", help="trace directory")
    parser.add_argument(
        "--runtime",
        required=True,
        help="runtime whose modelled time to export: runc, runv, pvm or paracell",
    )
    parser.add_argument(
        "--deployment",
        default="bare-metal",
        choices=["bare-metal", "nested"],
        help="where the runtime runs (default: bare-metal)",
    )
    parser.add_argument(
        "--format",
        default="chrome",
        choices=["chrome"],
        help="output format: chrome (Trace Event JSON for Perfetto and chrome://tracing)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="FILE.json",
        help="output file",
    )
    parser.add_argument(
        "--window-us",
        type=float,
        metavar="US",
        help="merge slices per class within windows of US microseconds "
        "(default: merge only when there are more than --max-events slices)",
    )
    parser.add_argument(
        "--max-events",
        type=int,
        default=None,
        metavar="N",
        help="maximum number of slices written (default: 250000). Above it, "
        "slices of one class are merged within time windows, and at least one "
        "slice per event class remains, so N must be at least the number of "
        "classes",
    )
    add_profile_argument(parser)


def run(args: argparse.Namespace) -> int:
    from paracell.costs import load_costs
    from paracell.errors import ParacellError
    from paracell.models import latency
    from paracell.reports.chrome_trace import (
        DEFAULT_MAX_EVENTS,
        min_slices,
        prepare_slices,
        write_chrome_trace,
    )
    from paracell.reports.output import check_output_file
    from paracell.trace import load_trace

    if args.window_us is not None and not args.window_us > 0:
        raise ParacellError(
            f"--window-us {args.window_us}: expected a positive duration"
        )
    max_events = args.max_events if args.max_events is not None else DEFAULT_MAX_EVENTS
    if max_events < 1:
        raise ParacellError(f"--max-events {max_events}: expected at least 1")
    check_output_file(args.output)
    trace = load_trace(args.trace)
    costs = load_costs(args.profile)
    timeline = latency.timeline(trace, costs, args.runtime, args.deployment)
    nr_classes = min_slices(timeline)
    if max_events < nr_classes:
        raise ParacellError(
            f"--max-events {max_events}: the timeline has {nr_classes} event "
            "classes, and merging keeps at least one slice per class",
            hint=f"give --max-events {nr_classes} or more",
        )
    window_ns = round(args.window_us * 1000) if args.window_us is not None else None
    try:
        slices = prepare_slices(
            timeline,
            window_ns=max(1, window_ns) if window_ns else None,
            max_events=max_events,
        )
    except ParacellError as exc:
        # Only a given --window-us can leave more slices than --max-events,
        # because the smaller limit was checked above.
        raise ParacellError(
            f"--window-us {args.window_us:g}, --max-events {max_events}: {exc}"
        ) from None
    try:
        nr_events = write_chrome_trace(
            args.output,
            slices,
            trace_name=trace.name,
            runtime=args.runtime,
            deployment=args.deployment,
            native_name=timeline.class_names[0],
            start_ts_ns=int(timeline.start_ns[0]) if len(timeline) else 0,
        )
    except OSError as exc:
        raise ParacellError(f"{args.output}: cannot write ({exc.strerror})") from None
    merged = (
        f" (merged per class from {slices.nr_input_slices} in windows of "
        f"{slices.window_ns / 1000:g} us)"
        if slices.window_ns
        else ""
    )
    print(
        f"wrote {args.output}: {nr_events} slices{merged}; modelled total "
        f"{slices.total_ns / 1e6:.3f} ms for {trace.name} on {args.runtime} "
        f"({args.deployment})"
    )
    return 0
