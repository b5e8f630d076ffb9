"""``paracell info``: summarise a trace."""

from __future__ import annotations

import argparse
from pathlib import Path

from paracell.cli._common import add_json_argument, print_json

# System calls listed in the text output; --json lists all.
_TOP_SYSCALLS = 15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", type=Path, metavar="TRACE", help="trace directory")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    from paracell.trace import load_trace
    from paracell.trace.summary import summarize

    summary = summarize(load_trace(args.trace))
    if args.json:
        print_json(summary.to_dict())
        return 0
    s = summary
    ops = f", {s.operations} operations" if s.operations is not None else ""
    print(f"{s.name} ({s.kind}, {s.source}): {s.duration_ns / 1e9:.3f} s{ops}")
    print("events:")
    for kind, count in s.event_counts.items():
        print(f"  {kind:<27} {count:>10}")
    lost = ", ".join(f"{k} {v}" for k, v in s.lost_events.items() if k != "total")
    print(f"lost events: {s.lost_events.get('total', 0)}" + (f" ({lost})" if lost else ""))
    if s.syscalls:
        print(f"system calls: {len(s.syscalls)} distinct")
        for sc in s.syscalls[:_TOP_SYSCALLS]:
            mean_us = sc.total_duration_ns / sc.count / 1e3
            print(f"  {sc.nr:>4} {sc.name:<22} {sc.count:>9}  mean {mean_us:9.2f} us")
        if len(s.syscalls) > _TOP_SYSCALLS:
            print(f"  ... {len(s.syscalls) - _TOP_SYSCALLS} more (see --json)")
    if "mm_page_alloc" in s.event_counts:
        mib = 1 << 20
        print(f"pages allocated: {s.pages_allocated}, freed: {s.pages_freed}")
        print(f"peak allocated: {s.peak_allocated_bytes / mib:.1f} MiB, at exit: "
              f"{s.end_allocated_bytes / mib:.1f} MiB")
    return 0
