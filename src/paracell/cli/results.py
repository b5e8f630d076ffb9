"""`paracell results`: list saved runs or query the results store with SQL."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from paracell.cli._common import add_json_argument, print_json
from paracell.errors import ResultsError


def _run_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid run count {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"run count {value} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from paracell.reports.saving import add_results_argument

    parser.add_argument(
        "--query",
        metavar="SQL",
        help="run one read-only SQL statement against the store "
        "(tables: runs, metrics, sweeps, meta)",
    )
    parser.add_argument(
        "--show",
        metavar="RUN_ID",
        help="print the parameters and result of one run (a unique prefix is enough)",
    )
    parser.add_argument(
        "--limit",
        type=_run_count,
        default=50,
        metavar="N",
        help="list at most N runs, newest first (default: 50; 0 lists all)",
    )
    add_json_argument(parser)
    add_results_argument(parser)


def record_run(
    args: argparse.Namespace,
    command: str,
    trace: Any | None,
    result: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
) -> str | None:
    """Save a result when ``--save`` was given and print its run id on standard error.

    For the model commands: call once per trace after computing its result.
    Standard output stays free for ``--json``. Return the run id or None.
    """
    from paracell.reports.saving import results_dir, save_run

    run_id = save_run(args, command, trace, params, result)
    if run_id is not None:
        where = f" for {trace.name}" if trace is not None else ""
        print(
            f"paracell: saved run {run_id}{where} in {results_dir(args)}",
            file=sys.stderr,
        )
    return run_id


def run(args: argparse.Namespace) -> int:
    from paracell.reports.saving import results_dir
    from paracell.reports.store import ResultsStore

    with ResultsStore(results_dir(args), readonly=True) as store:
        if args.show:
            return _show(store, args.show, args.json)
        if args.query is not None:
            if not args.query.strip():
                raise ResultsError(
                    "--query is empty",
                    hint='give one SQL statement, e.g. --query "SELECT * FROM runs"',
                )
            columns, rows = store.query(args.query)
        else:
            columns, rows = store.list_runs(limit=args.limit or None)
    if args.json:
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
    else:
        _print_table(columns, rows)
    return 0


def _show(store: Any, prefix: str, as_json: bool) -> int:
    columns, rows = store.query(
        "SELECT run_id, created_at, command, tool_version, trace_name, trace_hash, "
        "trace_path, sweep_id, cell_id, params_json, result_json FROM runs "
        "WHERE run_id LIKE ? || '%'",
        (prefix,),
    )
    if not rows:
        raise ResultsError(
            f"no run id starts with {prefix!r}", hint="`paracell results` lists them"
        )
    if len(rows) > 1:
        raise ResultsError(
            f"{len(rows)} run ids start with {prefix!r}", hint="give more digits"
        )

    document = dict(zip(columns, rows[0], strict=True))
    document["params"] = json.loads(document.pop("params_json"))
    document["result"] = json.loads(document.pop("result_json"))
    if as_json:
        print_json(document)
        return 0

    for key in (
        "run_id",
        "created_at",
        "command",
        "tool_version",
        "trace_name",
        "trace_hash",
        "trace_path",
        "sweep_id",
        "cell_id",
    ):
        if document[key] is not None:
            print(f"{key:13} {document[key]}")
    print("params:")
    print(json.dumps(document["params"], indent=2, sort_keys=True))
    print("result:")
    print(json.dumps(document["result"], indent=2, sort_keys=True))
    return 0


def _print_table(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    if not columns:
        return
    cells = [[_format(v) for v in row] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(no rows)")


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
