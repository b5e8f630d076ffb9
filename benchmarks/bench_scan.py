"""Measure `paracell scan` speed and write it into docs/benchmarks.md.

Usage: python benchmarks/bench_scan.py [TREE] [--runs N] [--no-write]

The tree (default /usr/lib/x86_64-linux-gnu) is scanned once to warm the page
cache and then ``--runs`` times. The median run gives the end-to-end rate in
MB of executable segments per second on one core. The pattern search alone is
then timed on the same executable bytes in memory, with the numpy search the
scanner uses and with a ``re`` version for comparison. The ratios show how
much of the time is search and how much is file handling.
"""

from __future__ import annotations

import argparse
import mmap
import platform
import re
import statistics
import sys
import time
from pathlib import Path

from paracell.isolation.patterns import find_pkru_writers
from paracell.isolation.scanner import (
    ElfScanner,
    _executable_segments,
    _identify_x86,
)

TARGET_MB_S = 100.0
SECTION = "## Scanner speed"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


# The scanner's byte rules as one regular expression. No match can contain a
# 0x0F after its first byte, so finditer's non-overlapping matches are all.
PATTERN = re.compile(
    rb"\x0f(?:\x01\xef|\xae[\x28-\x2f\x68-\x6f\xa8-\xaf]|\xc7[\x18-\x1f\x58-\x5f\x98-\x9f])"
)


def regex_search(data: bytes) -> int:
    """Count PKRU writers with ``re``, the alternative to the scanner's numpy search."""
    return sum(1 for _ in PATTERN.finditer(data))


def _executable_bytes(paths: list[str]) -> list[bytes]:
    """Return the executable segment bytes of ``paths``, as the scanner reads them."""
    chunks = []
    for name in paths:
        with open(name, "rb") as stream:
            size = Path(name).stat().st_size
            arch = _identify_x86(stream.read(20), size)
            if isinstance(arch, str):
                continue
            segments = _executable_segments(stream, size, arch)
            if isinstance(segments, str):
                continue
            with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for segment in segments:
                    chunks.append(bytes(data[segment.file_start : segment.file_end]))
    return chunks


def _time_search(chunks: list[bytes], search: object) -> float:
    started = time.perf_counter()
    for chunk in chunks:
        search(chunk)  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "tree", nargs="?", type=Path, default=Path("/usr/lib/x86_64-linux-gnu")
    )
    parser.add_argument("--runs", type=int, default=5, help="timed scans (default: 5)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if not args.tree.is_dir():
        print(f"bench_scan: {args.tree}: not a directory", file=sys.stderr)
        return 2

    warm = ElfScanner().scan_paths([args.tree])
    rates, times = [], []
    for _ in range(args.runs):
        report = ElfScanner().scan_paths([args.tree])
        times.append(report.elapsed_s)
        rates.append(report.bytes_scanned / 1e6 / report.elapsed_s)
    scanned_mb = warm.bytes_scanned / 1e6
    median_rate = statistics.median(rates)

    chunks = _executable_bytes(warm.scanned_paths)
    # Interleave the two searches so that drift in this shared machine's speed
    # affects both alike; separate blocks of runs gave ratios that disagreed.
    numpy_times, regex_times = [], []
    for _ in range(5):
        numpy_times.append(_time_search(chunks, find_pkru_writers))
        regex_times.append(_time_search(chunks, regex_search))
    numpy_s = statistics.median(numpy_times)
    regex_s = statistics.median(regex_times)
    in_memory_mb = sum(len(c) for c in chunks) / 1e6

    lines = [
        f"Tree: `{args.tree}`, {warm.files_scanned} ELF files scanned, "
        f"{len(warm.files_skipped)} skipped, {len(warm.hits)} hits, "
        f"{scanned_mb:.0f} MB of executable segments.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| end-to-end scan, median of {args.runs} warm runs | "
        f"{median_rate:.0f} MB/s ({statistics.median(times):.2f} s) |",
        f"| end-to-end rate / {TARGET_MB_S:.0f} MB/s target | "
        f"{median_rate / TARGET_MB_S:.1f}x |",
        f"| pattern search alone, numpy as the scanner uses it "
        f"({in_memory_mb:.0f} MB in memory) | {in_memory_mb / numpy_s:.0f} MB/s |",
        f"| pattern search alone, `re` alternative | "
        f"{in_memory_mb / regex_s:.0f} MB/s |",
        f"| numpy search speed / `re` search speed | {regex_s / numpy_s:.1f}x |",
        f"| search share of the end-to-end time | "
        f"{numpy_s / statistics.median(times) * 100:.0f} % |",
        "",
        "Measured by `benchmarks/bench_scan.py` on one core of this project's "
        f"machine ({platform.machine()}, Python {platform.python_version()}), page "
        "cache warm (one untimed scan first).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        _write_section(text)
        print(f"\nwrote the '{SECTION[3:]}' section of {DOCS}")
    return 0


def _write_section(text: str) -> None:
    doc = DOCS.read_text()
    start = doc.index(SECTION)
    body_start = start + len(SECTION)
    next_section = doc.find("\n## ", body_start)
    end = len(doc) if next_section < 0 else next_section + 1
    DOCS.write_text(doc[:body_start] + "\n\n" + text + "\n\n" + doc[end:].lstrip("\n"))


if __name__ == "__main__":
    sys.exit(main())
