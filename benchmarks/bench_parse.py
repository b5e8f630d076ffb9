"""Parse speed: ring-buffer records decoded per second, and Parquet load speed.

1. Captures a workload (a Python virtual-environment creation) with paracell,
   keeping the raw ring-buffer pages, then times decoding them (page walk and
   field gathering) and the whole post-processing (decoding, pairing system
   calls, the process-tree and page-ownership filters). Needs root; without
   it, synthetic pages of system-call-sized records are decoded instead.
2. Times ``load_trace(validate=True)`` of every shipped trace: reading the
   Parquet files and checking schema, ordering and value ranges.

    sudo .venv/bin/python benchmarks/bench_parse.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(reps: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def real_spool(work: Path):  # type: ignore[no-untyped-def]
    from paracell.capture.events import parse_event_selection
    from paracell.capture.record import CaptureOptions, capture

    spool = work / "spool"
    options = CaptureOptions(
        command=[sys.executable, "-m", "venv", str(work / "venv")],
        output=work / "trace",
        kinds=parse_event_selection(None),
        spool_dir=spool,
    )
    captured: dict[str, object] = {}

    import paracell.capture.record as record

    original = record.decode_spool

    def keep(files, page_size, layout, formats, roles):  # type: ignore[no-untyped-def]
        captured.update(
            files=files,
            page_size=page_size,
            layout=layout,
            formats=formats,
            roles=roles,
        )
        return original(files, page_size, layout, formats, roles)

    record.decode_spool = keep
    try:
        result = capture(options)
    finally:
        record.decode_spool = original
    return captured, result


def synthetic_pages(nr_pages: int) -> tuple[np.ndarray, int]:
    """Pages of 68-byte records (sys_enter size), each 100 ns after the last."""
    page = bytearray(4096)
    pos = 16
    count = 0
    while pos + 68 <= 4096:
        page[pos : pos + 4] = struct.pack("<I", (100 << 5) | 16)
        page[pos + 4 : pos + 6] = struct.pack("<H", 443)
        pos += 68
        count += 1
    page[0:16] = struct.pack("<Qq", 1_000_000, pos - 16)
    return np.frombuffer(
        bytes(page) * nr_pages, dtype=np.uint8
    ).copy(), count * nr_pages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps", type=int, default=5, help="timed repetitions (default 5)"
    )
    args = parser.parse_args()

    from paracell.capture.decode import decode_spool
    from paracell.capture.formats import PageLayout
    from paracell.capture.record import build_tables
    from paracell.capture.ringbuf import decode_pages

    with tempfile.TemporaryDirectory(prefix="paracell-bench-") as tmp:
        work = Path(tmp)
        if os.geteuid() == 0:
            captured, result = real_spool(work)
            files = captured["files"]
            nbytes = sum(p.stat().st_size for _, _, p in files)

            def decode():  # type: ignore[no-untyped-def]
                return decode_spool(
                    files,
                    captured["page_size"],
                    captured["layout"],
                    captured["formats"],
                    captured["roles"],
                )

            decoded = decode()
            records = decoded.records
            t_decode = best_of(args.reps, decode)
            manifest = result.trace.manifest
            kinds = manifest.event_kinds
            t_all = best_of(
                args.reps,
                lambda: build_tables(
                    decode(),
                    kinds,
                    result.root_pid,
                    manifest.start_ts_ns,
                    manifest.end_ts_ns,
                ),
            )
            print(
                f"real pages ({nbytes / 2**20:.1f} MiB, {records} records from "
                f"'python -m venv'):"
            )
            print(
                f"  decode (page walk + fields): {records / t_decode / 1e6:6.2f} M records/s"
                f"  ({t_decode:.3f} s)"
            )
            print(
                f"  decode + pair + filter:      {records / t_all / 1e6:6.2f} M records/s"
                f"  ({t_all:.3f} s)"
            )
        else:
            buf, records = synthetic_pages(20000)
            decode_pages(buf[: 4096 * 10], 4096, PageLayout())  # compile
            t = best_of(args.reps, lambda: decode_pages(buf, 4096, PageLayout()))
            print(
                f"synthetic pages (not root): page walk {records / t / 1e6:.2f} M records/s"
            )

    from paracell.trace import load_trace, shipped_trace_paths

    print("load_trace(validate=True) of the shipped traces:")
    for path in shipped_trace_paths():
        rows = sum(load_trace(path).manifest.event_counts.values())
        t = best_of(args.reps, lambda p=path: load_trace(p, validate=True))
        print(
            f"  {path.name:<12} {rows:>9} rows  {rows / t / 1e6:6.2f} M rows/s  ({t:.3f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
