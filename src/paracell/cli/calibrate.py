"""`paracell calibrate`: measure fault, bind, unbind and system-call costs here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from paracell.cli._common import add_json_argument, make_console, print_json
from paracell.errors import ParacellError

if TYPE_CHECKING:
    from rich.console import Console

    from paracell.live.calibrate import Calibration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE.toml",
        help="write the measured values as a cost profile for --profile",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=11,
        metavar="N",
        help="repeats of each measurement; the median is reported (default: 11)",
    )
    parser.add_argument(
        "--max-rss",
        metavar="BYTES",
        default="640MiB",
        help="maximum memory the measurements map at once, in bytes or with a "
        "unit such as 640MiB (default: 640MiB; the large batch is 512 MiB)",
    )
    add_json_argument(parser)


def _check_output(path: Path) -> None:
    """Reject an unusable -o before the measurements, which take several seconds."""
    import os

    if not path.parent.is_dir():
        raise ParacellError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ParacellError(
            f"{path} is a directory; give a file name such as host.toml"
        )
    if not os.access(path.parent, os.W_OK):
        raise ParacellError(f"{path}: directory {path.parent} is not writable")


def run(args: argparse.Namespace) -> int:
    from paracell.cli._common import parse_size
    from paracell.costs import write_profile
    from paracell.live.calibrate import calibrate

    max_rss = parse_size(args.max_rss, "--max-rss")
    if args.repeats < 3:
        raise ParacellError(f"--repeats {args.repeats} is invalid; give 3 or more")
    if args.output is not None:
        _check_output(args.output)
    show = not (args.json or args.quiet) and sys.stderr.isatty()

    def progress(step: str) -> None:
        if show:
            print(f"paracell calibrate: {step}", file=sys.stderr)

    result = calibrate(repeats=args.repeats, max_rss_bytes=max_rss, progress=progress)
    if args.output is not None:
        try:
            write_profile(args.output, result.meta(), result.profile_entries())
        except OSError as exc:
            message = f"{args.output}: cannot write ({exc.strerror})"
            raise ParacellError(message) from None
    if args.json:
        document = result.to_dict()
        document["profile"] = str(args.output) if args.output else None
        print_json(document)
    else:
        _print(_console(), result, args.output)
    return 0


def _console() -> Console:
    return make_console()


def _print(console: Console, result: Calibration, output: Path | None) -> None:
    from rich.table import Table

    console.print(
        f"Measured on this host ({result.machine}, Linux {result.kernel_release}, "
        f"{result.when}); median of {result.repeats} repeats, loops timed in the "
        "thread's CPU time."
    )
    table = Table(title_justify="left")
    for column in (
        "measurement",
        "unit",
        "median",
        "p25-p75",
        "HERE",
        "vs HERE",
        "parameter",
    ):
        justify: Literal["left", "right"] = (
            "left" if column in ("measurement", "unit", "parameter") else "right"
        )
        table.add_column(column, justify=justify)
    for m in result.measurements:
        spread = m.spread
        here_text = "-"
        if m.here_ns is not None:
            low, high = m.here_ns
            here_text = f"{low:,.0f}" if low == high else f"{low:,.0f}-{high:,.0f}"
        rel = m.relative_to_here()
        table.add_row(
            m.key,
            m.unit,
            f"{m.median:,.0f}",
            f"{spread['p25']:,.0f}-{spread['p75']:,.0f}",
            here_text,
            "-" if rel is None else f"{rel:+.0%}",
            ", ".join(m.parameters) or "(none)",
        )
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    if output is not None:
        console.print(f"wrote cost profile {output} (use it with --profile)")
