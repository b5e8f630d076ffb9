"""`paracell scan`: find WRPKRU, XRSTOR and XRSTORS byte sequences in ELF files.

Exit status: 0 when every hit is on the allow-list (or there is none), 1 when
a hit is not, 2 on bad usage. That makes the command usable as a gate in an
image build. The allow-list format is described in
``paracell.isolation.allowlist`` and in docs/isolation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from paracell.cli._common import add_json_argument, print_json
from paracell.errors import ParacellError

if TYPE_CHECKING:
    from paracell.isolation.scanner import ScanHit, ScanReport


def _context_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid instruction count {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"instruction count {value} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        type=Path,
        help="ELF files or directory trees (for example a container root filesystem)",
    )
    add_json_argument(parser)
    parser.add_argument(
        "--allow",
        type=Path,
        metavar="FILE",
        help="allow-list of accepted hits, one FILE:OFFSET or FILE:SYMBOL per line",
    )
    parser.add_argument(
        "--context",
        type=_context_count,
        default=3,
        metavar="N",
        help="instructions of disassembly shown before and after each hit (default: 3)",
    )
    parser.add_argument(
        "--list-skipped",
        action="store_true",
        help="list every skipped file with its reason, not only the counts",
    )


def run(args: argparse.Namespace) -> int:
    from paracell.isolation.allowlist import AllowList
    from paracell.isolation.scanner import ElfScanner

    for path in args.paths:
        if not path.exists() and not path.is_symlink():
            raise ParacellError(
                f"{path}: no such file or directory", hint="check the PATH"
            )
    allow = AllowList.load(args.allow) if args.allow else AllowList()
    report = ElfScanner(context_instructions=args.context).scan_paths(args.paths)
    for hit in report.hits:
        hit.allowed = allow.allows(hit.file, hit.offset, hit.symbol)
    rejected = [hit for hit in report.hits if not hit.allowed]
    if args.json:
        print_json(
            {
                "files_scanned": report.files_scanned,
                "files_skipped": [
                    {"path": s.path, "reason": s.reason} for s in report.files_skipped
                ],
                "skipped_by_reason": report.skipped_by_reason(),
                "bytes_scanned": report.bytes_scanned,
                "elapsed_s": round(report.elapsed_s, 3),
                "hits": [hit.to_json() for hit in report.hits],
                "hits_not_allowed": len(rejected),
            }
        )
    else:
        _print_text(report, rejected, args.list_skipped)
    return 1 if rejected else 0


def _print_text(
    report: ScanReport, rejected: list[ScanHit], list_skipped: bool
) -> None:
    out = sys.stdout
    megabytes = report.bytes_scanned / 1e6
    rate = megabytes / report.elapsed_s if report.elapsed_s > 0 else 0.0
    reasons = ", ".join(
        f"{count} {reason}" for reason, count in report.skipped_by_reason().items()
    )
    out.write(
        f"{report.files_scanned} ELF files scanned ({megabytes:.1f} MB of executable "
        f"segments in {report.elapsed_s:.2f} s, {rate:.0f} MB/s); "
        f"{len(report.files_skipped)} skipped{': ' + reasons if reasons else ''}\n"
    )
    if list_skipped:
        for skipped in report.files_skipped:
            out.write(f"  skipped {skipped.path}: {skipped.reason}\n")
    for hit in report.hits:
        where = hit.section or "no section"
        if not hit.in_segment:
            where += ", page padding outside the segment"
        symbol = f" in {hit.symbol}" if hit.symbol else ""
        placement = (
            "at an instruction start" if hit.aligned else "inside other instructions"
        )
        verdict = "allowed" if hit.allowed else "NOT ALLOWED"
        out.write(
            f"\n{hit.file}: {hit.kind} at offset {hit.offset:#x} "
            f"(vaddr {hit.vaddr:#x}, {where}){symbol}, {placement} [{verdict}]\n"
        )
        overlapping = set(hit.overlapping)
        for insn in hit.context:
            marker = ">" if insn in overlapping else " "
            out.write(f"  {marker} {insn.render()}\n")
        out.write(f"    a jump to {hit.vaddr:#x} executes: {hit.instruction}\n")
    allowed = len(report.hits) - len(rejected)
    out.write(
        f"\n{len(report.hits)} hits: {allowed} allowed, {len(rejected)} not allowed\n"
    )
