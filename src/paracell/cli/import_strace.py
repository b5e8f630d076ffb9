"""``paracell import-strace``: convert an ``strace -f -ttt -T`` log to a trace."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paracell.trace.manifest import WORKLOAD_KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "log",
        type=Path,
        metavar="LOG",
        help="log written by strace -f -ttt -T -o LOG CMD",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="trace directory to write (must not exist unless --force)",
    )
    parser.add_argument("--name", help="workload name (default: the log's file name)")
    parser.add_argument(
        "--kind",
        choices=WORKLOAD_KINDS,
        default="agent",
        help="server or agent (default: agent)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace DIR if it is an earlier trace or an empty directory",
    )


def run(args: argparse.Namespace) -> int:
    from paracell.capture.strace import import_strace

    trace = import_strace(
        args.log, args.output, name=args.name, kind=args.kind, overwrite=args.force
    )
    count = trace.manifest.event_counts.get("syscalls", 0)
    print(f"paracell: wrote {args.output}: {count} system calls", file=sys.stderr)
    return 0
