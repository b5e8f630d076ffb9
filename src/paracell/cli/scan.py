"""`paracell scan`: find WRPKRU, XRSTOR and XRSTORS byte sequences in ELF files.

Exit status, so the command can gate an image build:

- 0: every hit is on the allow-list (or there is none) and every file that
  may hold x86 code was scanned;
- 1: a hit is not on the allow-list;
- 2: bad usage;
- 3: no hit outside the allow-list, but some files could not be scanned
  (unreadable, truncated or invalid ELF), unless ``--allow-unscanned``.

The allow-list format is described in ``paracell.isolation.allowlist`` and
in docs/isolation.md.
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

EXIT_HITS = 1
EXIT_UNSCANNED = 3


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
    parser.add_argument(
        "--allow-unscanned",
        action="store_true",
        help="exit 0 even when some files could not be scanned (unreadable, "
        "truncated or invalid ELF); without it they make the exit status 3",
    )
    parser.epilog = (
        "exit status: 0 no hit outside the allow-list, 1 a hit not allowed, "
        "2 bad usage, 3 some files could not be scanned (see --allow-unscanned)"
    )


def run(args: argparse.Namespace) -> int:
    from paracell.isolation.allowlist import AllowList
    from paracell.isolation.scanner import ElfScanner

    for path in args.paths:
        try:
            path.lstat()
        except FileNotFoundError:
            raise ParacellError(
                f"{path}: no such file or directory", hint="check the PATH"
            ) from None
        except OSError:
            # A path below a directory without search permission, for
            # example. The scanner records it as a file it could not scan.
            pass
    allow = AllowList.load(args.allow) if args.allow else AllowList()
    report = ElfScanner(context_instructions=args.context).scan_paths(args.paths)
    for hit in report.hits:
        hit.allowed = allow.allows(hit.file, hit.offset, hit.symbol)
    rejected = [hit for hit in report.hits if not hit.allowed]
    unscanned = report.files_unscanned()
    # A file named on the command line and skipped is likely a wrong path,
    # so it is named even without --list-skipped.
    named = {str(p) for p in args.paths if not p.is_dir()}
    for skipped in report.files_skipped:
        if skipped.path in named:
            message = f"paracell: skipped {skipped.path}: {skipped.reason}"
            print(message, file=sys.stderr)
    if report.files_scanned == 0 and not unscanned:
        raise ParacellError(
            f"no x86 ELF file found in {', '.join(str(p) for p in args.paths)}; "
            "nothing was scanned",
            hint="give x86 ELF files or directories that contain them",
        )
    if args.json:
        print_json(
            {
                "files_scanned": report.files_scanned,
                "files_skipped": [
                    {"path": s.path, "reason": s.reason, "unscanned": s.unscanned}
                    for s in report.files_skipped
                ],
                "skipped_by_reason": report.skipped_by_reason(),
                "files_unscanned": len(unscanned),
                "bytes_scanned": report.bytes_scanned,
                "elapsed_s": round(report.elapsed_s, 3),
                "hits": [hit.to_json() for hit in report.hits],
                "hits_not_allowed": len(rejected),
            }
        )
    else:
        _print_text(report, rejected, args.list_skipped, args.allow_unscanned)
    if rejected:
        return EXIT_HITS
    if unscanned and not args.allow_unscanned:
        return EXIT_UNSCANNED
    return 0


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def _print_text(
    report: ScanReport,
    rejected: list[ScanHit],
    list_skipped: bool,
    allow_unscanned: bool,
) -> None:
    out = sys.stdout
    megabytes = report.bytes_scanned / 1e6
    rate = megabytes / report.elapsed_s if report.elapsed_s > 0 else 0.0
    reasons = ", ".join(
        f"{count} {reason}" for reason, count in report.skipped_by_reason().items()
    )
    out.write(
        f"{_count(report.files_scanned, 'ELF file')} scanned ({megabytes:.1f} MB of "
        f"executable segments in {report.elapsed_s:.2f} s, {rate:.0f} MB/s); "
        f"{len(report.files_skipped)} skipped{': ' + reasons if reasons else ''}\n"
    )
    # Files that could not be scanned decide the exit status, so they are
    # always listed; the others only on request.
    for skipped in report.files_skipped:
        if skipped.unscanned:
            out.write(f"  not scanned {skipped.path}: {skipped.reason}\n")
        elif list_skipped:
            out.write(f"  skipped {skipped.path}: {skipped.reason}\n")
    for hit in report.hits:
        where = hit.section or "no section"
        if not hit.in_segment:
            where += ", page padding outside the segment"
        if hit.arch != "x86-64":
            where += f", {hit.arch}"
        symbol = ""
        if hit.symbol_demangled:
            symbol = f" in {hit.symbol_demangled} (symbol {hit.symbol})"
        elif hit.symbol:
            symbol = f" in {hit.symbol}"
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
        f"\n{_count(len(report.hits), 'hit')}: {allowed} allowed, "
        f"{len(rejected)} not allowed\n"
    )
    unscanned = len(report.files_unscanned())
    if unscanned:
        verdict = (
            "accepted with --allow-unscanned"
            if allow_unscanned
            else "exit status 3 unless --allow-unscanned is given"
        )
        out.write(
            f"{_count(unscanned, 'file')} could not be scanned ({verdict}); "
            "run as a user who can read them, or repair them\n"
        )
