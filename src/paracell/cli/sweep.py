"""`paracell sweep`: evaluate a grid of traces, runtimes, policies and parameters."""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from paracell.cli._common import add_json_argument, print_json, progress_bar

#: Largest grid run without --max-cells. A cell takes from a few ms to about
#: a second, and every cell is held in memory while the sweep runs.
DEFAULT_MAX_CELLS = 100_000
#: Cells listed by --dry-run.
DRY_RUN_CELLS = 5


def _cell_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid cell count {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"cell count {value} is less than 1")
    return value


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
        "tcp://127.0.0.1:8786 (default: a local process pool)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes of the local pool (default: one per CPU; "
        "ignored with --scheduler, where the cluster's workers run the cells)",
    )
    parser.add_argument(
        "--max-cells",
        type=_cell_count,
        default=DEFAULT_MAX_CELLS,
        metavar="N",
        help="reject a grid of more than N cells before running any "
        f"(default: {DEFAULT_MAX_CELLS:,}); --dry-run still prints its size",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many cells the grid has, the first few, and how many are "
        "stored, then exit",
    )
    add_json_argument(parser)
    add_results_argument(parser)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C: finished cells are written to the
    # store and the workers are stopped, so a rerun resumes from there.
    from paracell.errors import Interrupted

    raise Interrupted(signum)


def run(args: argparse.Namespace) -> int:
    from paracell.errors import ResultsError
    from paracell.reports.saving import results_dir
    from paracell.reports.store import ResultsStore
    from paracell.reports.sweep import (
        check_grid_size,
        check_scheduler_address,
        expand_cells,
        load_sweep_traces,
        read_spec,
        run_sweep,
    )

    if args.workers is not None and args.workers < 1:
        raise ResultsError(f"--workers {args.workers}: expected at least 1")
    if args.scheduler:
        check_scheduler_address(args.scheduler)
    spec = read_spec(args.spec)
    traces = load_sweep_traces(spec)
    directory = results_dir(args)
    if args.dry_run:
        return _dry_run(args, spec, traces, directory)
    check_grid_size(spec, traces, args.max_cells)
    cells = expand_cells(spec, traces)
    with ResultsStore(directory) as store:
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


def _dry_run(
    args: argparse.Namespace, spec: Any, traces: list[Any], directory: Path
) -> int:
    """Print the grid size, the first cells and how many are stored.

    The cells are generated one by one and not kept, so a large grid costs
    time but no memory. Above --max-cells the stored cells are not counted,
    and the command fails as a run would.
    """
    from paracell.reports.store import DB_NAME, ResultsStore
    from paracell.reports.sweep import (
        check_grid_size,
        count_cells,
        describe_grid_size,
        iter_cells,
    )

    nr_cells = count_cells(spec, traces)
    first = list(itertools.islice(iter_cells(spec, traces), DRY_RUN_CELLS))
    nr_stored: int | None = None
    if nr_cells <= args.max_cells:
        nr_stored = 0
        if (directory / DB_NAME).exists():
            with ResultsStore(directory, readonly=True) as store:
                stored = store.cell_ids()
            nr_stored = sum(c.cell_id in stored for c in iter_cells(spec, traces))
    if args.json:
        print_json(
            {
                "name": spec.name,
                "nr_cells": nr_cells,
                "nr_stored": nr_stored,
                "max_cells": args.max_cells,
                "first_cells": [
                    {"cell_id": c.cell_id, "trace": c.trace_name, **c.axes()}
                    for c in first
                ],
            }
        )
    else:
        stored_text = (
            f"{nr_stored:,} already stored"
            if nr_stored is not None
            else "stored cells not counted"
        )
        print(
            f"sweep {spec.name}: {nr_cells:,} cells "
            f"({describe_grid_size(spec, traces)}), {stored_text}"
        )
        for cell in first:
            print(f"  {cell.cell_id[:12]}  {cell.describe()}")
        if nr_cells > len(first):
            print(f"  ... and {nr_cells - len(first):,} more")
    check_grid_size(spec, traces, args.max_cells)
    return 0
