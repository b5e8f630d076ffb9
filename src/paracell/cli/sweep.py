"""`paracell sweep`: evaluate a grid of traces, runtimes, policies and parameters."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from paracell.cli._common import add_json_argument, print_json, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from paracell.reports.saving import add_results_argument

    parser.add_argument(
        "spec",
        type=Path,
        metavar="SPEC.toml",
        help="sweep specification (docs/reports.md)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the cells on this dask.distributed scheduler, for example "
        "tcp://10.0.0.5:8786 (default: a local process pool)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes of the local pool (default: one per CPU; "
        "ignored with --scheduler, where the cluster's workers run the cells)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many cells the grid has and how many are stored, then exit",
    )
    add_json_argument(parser)
    add_results_argument(parser)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C: finished cells are written to the
    # store and the workers are stopped, so a rerun resumes from there.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from paracell.errors import ResultsError
    from paracell.reports.saving import results_dir
    from paracell.reports.store import ResultsStore
    from paracell.reports.sweep import expand_cells, read_spec, run_sweep

    if args.workers is not None and args.workers < 1:
        raise ResultsError(f"--workers {args.workers}: expected at least 1")
    spec = read_spec(args.spec)
    cells = expand_cells(spec)
    directory = results_dir(args)
    with ResultsStore(directory) as store:
        if args.dry_run:
            nr_stored = len(store.cell_ids(c.cell_id for c in cells))
            document = {
                "name": spec.name,
                "nr_cells": len(cells),
                "nr_stored": nr_stored,
            }
            if args.json:
                print_json(document)
            else:
                print(
                    f"sweep {spec.name}: {len(cells)} cells, {nr_stored} already stored"
                )
            return 0
        if args.scheduler and args.workers is not None:
            print("paracell: --workers is ignored with --scheduler", file=sys.stderr)

        def bar(items: Iterable[Any], total: int) -> Iterator[Any]:
            return progress_bar(items, total, f"sweep {spec.name}", quiet=args.quiet)

        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            summary = run_sweep(
                spec,
                store,
                scheduler=args.scheduler,
                workers=args.workers,
                progress=bar,
                cells=cells,
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
    if args.json:
        print_json({"name": spec.name, "results": str(directory), **vars(summary)})
    else:
        print(
            f"sweep {spec.name} ({summary.sweep_id}): {summary.nr_cells} cells, "
            f"{summary.nr_skipped} already stored, {summary.nr_computed} computed "
            f"in {summary.elapsed_s:.1f} s; results in {directory}"
        )
    return 0
