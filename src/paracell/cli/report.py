"""`paracell report`: write a self-contained HTML report of traces."""

from __future__ import annotations

import argparse
from pathlib import Path

from paracell.cli._common import add_profile_argument, add_trace_arguments, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory to write index.html into (created if missing)",
    )
    add_profile_argument(parser)
    parser.add_argument(
        "--results",
        type=Path,
        metavar="DIR",
        help="results store whose `paracell live --save` runs of these traces are "
        "shown as measured (default: $PARACELL_RESULTS or ./results, if present)",
    )


def run(args: argparse.Namespace) -> int:
    from paracell.cli._common import load_traces
    from paracell.costs import load_costs
    from paracell.errors import ParacellError
    from paracell.reports.html import evaluate_trace, render_report, write_report
    from paracell.reports.output import check_output_dir
    from paracell.reports.saving import results_dir

    check_output_dir(args.out)
    costs = load_costs(args.profile)
    traces = load_traces(args.traces)
    store_dir = results_dir(args)
    if args.results is not None and not store_dir.is_dir():
        raise ParacellError(f"--results {store_dir}: directory not found")
    sections = [
        evaluate_trace(trace, costs, store_dir)
        for trace in progress_bar(traces, len(traces), "modelling traces", args.quiet)
    ]
    page = render_report(sections, costs, args.profile)
    try:
        path = write_report(args.out, page)
    except OSError as exc:
        raise ParacellError(
            f"{args.out}: cannot write the report ({exc.strerror})"
        ) from None
    size_kib = path.stat().st_size / 1024
    traces_text = "1 trace" if len(sections) == 1 else f"{len(sections)} traces"
    print(f"wrote {path} ({traces_text}, {size_kib:,.0f} KiB, self-contained)")
    return 0
