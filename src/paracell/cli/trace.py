"""``paracell trace``: record a command and its children through tracefs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paracell.cli._common import add_trace_output_arguments
from paracell.errors import CaptureError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from paracell.capture.tracefs import DEFAULT_BUFFER_KB

    add_trace_output_arguments(parser, "basename of CMD")
    parser.add_argument(
        "--events",
        metavar="LIST",
        help="comma-separated kinds or groups (syscalls, faults, sched, "
        "kmem) to record; default: all",
    )
    operations = parser.add_mutually_exclusive_group()
    operations.add_argument(
        "--operations",
        type=int,
        metavar="N",
        help="operations (for example requests) the command performs, "
        "stored in the manifest",
    )
    operations.add_argument(
        "--operations-from",
        type=Path,
        metavar="FILE",
        help="read the operation count from FILE after the command "
        "exits (for benchmarks that report how many requests they made)",
    )
    parser.add_argument(
        "--operation-unit",
        metavar="UNIT",
        help="what one operation is (default: requests)",
    )
    parser.add_argument(
        "--recreate",
        metavar="SCRIPT",
        help="script that recreates this trace, stored in the manifest",
    )
    parser.add_argument(
        "--buffer-kb",
        type=int,
        default=DEFAULT_BUFFER_KB,
        metavar="KB",
        help=f"ring-buffer size per CPU and instance, in KiB "
        f"(default: {DEFAULT_BUFFER_KB})",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="the command to trace, after --",
    )


def run(args: argparse.Namespace) -> int:
    from paracell.capture.events import parse_event_selection
    from paracell.capture.record import CaptureOptions, capture

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CaptureError(
            "no command given", hint="usage: paracell trace -o DIR -- CMD"
        )
    if args.buffer_kb < 64:
        raise CaptureError(
            f"--buffer-kb {args.buffer_kb} is too small; use at least 64"
        )
    if args.operations is not None and args.operations < 0:
        raise CaptureError(f"--operations {args.operations} must not be negative")
    options = CaptureOptions(
        command=command,
        output=args.output,
        kinds=parse_event_selection(args.events),
        name=args.name,
        workload_kind=args.kind,
        operations=args.operations,
        operations_from=args.operations_from,
        operation_unit=args.operation_unit,
        recreate=args.recreate,
        buffer_kb=args.buffer_kb,
        overwrite=args.force,
    )
    result = capture(options)
    manifest = result.trace.manifest
    counts = ", ".join(f"{k} {v}" for k, v in manifest.event_counts.items())
    print(
        f"paracell: wrote {args.output}: {result.wall_ns / 1e9:.3f} s, {counts}; "
        f"decoded {result.records} records in {result.decode_s:.2f} s",
        file=sys.stderr,
    )
    if result.nr_events == 0:
        print(
            "paracell: warning: the capture recorded no events at all although "
            f"{command[0]} ran; the trace is empty. Check that tracing works here "
            "(run with --log-level DEBUG to see every tracefs write)",
            file=sys.stderr,
        )
    if result.lost_total:
        per_cpu = ", ".join(
            f"{k} {v}" for k, v in manifest.lost_events.items() if k.startswith("cpu")
        )
        print(
            f"paracell: warning: {result.lost_total} events were lost ({per_cpu}); "
            "raise --buffer-kb or trace fewer kinds with --events",
            file=sys.stderr,
        )
    return result.exit_status
