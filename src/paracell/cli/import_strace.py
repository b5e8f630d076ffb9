"""``paracell import-strace``: convert an ``strace -f -ttt -T`` log to a trace."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paracell.cli._common import add_trace_output_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "log",
        type=Path,
        metavar="LOG",
        help="log written by strace -f -ttt -T -o LOG CMD",
    )
    add_trace_output_arguments(parser, "the log's file name")


def run(args: argparse.Namespace) -> int:
    from paracell.capture.strace import import_strace

    trace = import_strace(
        args.log, args.output, name=args.name, kind=args.kind, overwrite=args.force
    )
    count = trace.manifest.event_counts.get("syscalls", 0)
    print(f"paracell: wrote {args.output}: {count} system calls", file=sys.stderr)
    return 0
