"""`paracell costs`: print every cost parameter with its value and source."""

from __future__ import annotations

import argparse
from typing import Any

from paracell.cli._common import add_json_argument, add_profile_argument, print_json
from paracell.costs import SOURCES, CostTable, Param, load_costs
from paracell.errors import ParacellError

# Times are stored in ns; microseconds read better for most of them.
_TIME_UNITS = (("ms", 1e6), ("us", 1e3), ("ns", 1.0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    add_json_argument(parser)
    parser.add_argument(
        "--name",
        metavar="PREFIX",
        help="show only parameters whose name starts with PREFIX (for example pvm.)",
    )


def display_unit(param: Param) -> tuple[str, float]:
    """Return the unit to show a parameter in, and its factor from the stored unit."""
    if param.unit != "ns":
        return param.unit, 1.0
    largest = max(abs(v) for v in (param.value, param.low or 0.0, param.high or 0.0))
    for name, factor in _TIME_UNITS:
        if largest >= factor:
            return name, factor
    return "ns", 1.0


def _row(param: Param) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": param.name,
        "deployment": param.deployment,
        "value": param.value,
        "unit": param.unit,
        "source": param.source,
        "description": param.description,
    }
    if param.low is not None and param.high is not None:
        row["low"], row["high"] = param.low, param.high
    if param.reasoning:
        row["reasoning"] = param.reasoning
    if param.note:
        row["note"] = param.note
    return row


def _selected(table: CostTable, prefix: str | None) -> list[Param]:
    params = [p for p in table if prefix is None or p.name.startswith(prefix)]
    if not params:
        groups = sorted({p.name.split(".")[0] + "." for p in table})
        raise ParacellError(
            f"--name {prefix!r}: no parameter name starts with it",
            hint=f"parameter names start with {', '.join(groups)}",
        )
    return sorted(params, key=lambda p: (p.name, p.deployment))


def run(args: argparse.Namespace) -> int:
    table = load_costs(args.profile)
    params = _selected(table, args.name)
    used_sources = sorted({p.source for p in params})
    if args.json:
        print_json(
            {
                "parameters": [_row(p) for p in params],
                "sources": {key: SOURCES[key] for key in used_sources},
            }
        )
        return 0
    _print_table(params, used_sources)
    return 0


def _print_table(params: list[Param], used_sources: list[str]) -> None:
    from rich.table import Table
    from rich.text import Text

    from paracell.cli._common import make_console

    console = make_console()
    table = Table(title="Cost parameters", title_justify="left", show_lines=False)
    # Names are what a profile must spell exactly, so they never wrap.
    table.add_column("name", no_wrap=True)
    for column in ("deployment", "value", "unit", "source", "description"):
        table.add_column(column, overflow="fold")
    for p in params:
        unit, factor = display_unit(p)
        value = f"{p.value / factor:.4g}"
        source = p.source
        description = p.description
        if p.is_estimate and p.low is not None and p.high is not None:
            value += f"\n[{p.low / factor:.4g} .. {p.high / factor:.4g}]"
            description += f"\nwhy: {p.reasoning}"
        if p.note:
            description += f"\nnote: {p.note}"
        # Text cells, so brackets in values and descriptions are not markup.
        cells = (p.name, p.deployment, value, unit, source, description)
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)
    console.print(
        "Estimates show their range in brackets; `paracell latency --sensitivity` "
        "varies each one over it."
    )
    console.print()
    console.print("Sources:")
    for key in used_sources:
        console.print(f"  {key}: {SOURCES[key]}", highlight=False)
