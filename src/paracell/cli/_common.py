"""Options and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from paracell.trace import Trace

T = TypeVar("T")


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the positional TRACE list; with none given, the shipped traces are used."""
    parser.add_argument(
        "traces",
        nargs="*",
        metavar="TRACE",
        type=Path,
        help="trace directories (default: the traces shipped with paracell)",
    )


def add_trace_output_arguments(
    parser: argparse.ArgumentParser, name_default: str
) -> None:
    """Add -o DIR, --name, --kind and --force of the commands that write a trace."""
    from paracell.trace.manifest import WORKLOAD_KINDS

    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="trace directory to write (must not exist unless --force)",
    )
    parser.add_argument("--name", help=f"workload name (default: {name_default})")
    parser.add_argument(
        "--kind",
        choices=WORKLOAD_KINDS,
        default="agent",
        help="server (serves requests) or agent (works in bursts); default: agent",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace DIR if it is an earlier trace or an empty directory",
    )


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE.toml",
        help="cost profile whose values override the default parameters",
    )


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )


def load_traces(paths: list[Path]) -> list[Trace]:
    """Load the given traces, or every shipped trace when the list is empty."""
    # Imported here: pyarrow takes a third of a second, too long for --help.
    from paracell.trace import load_trace, shipped_trace_paths

    return [load_trace(p) for p in (paths or shipped_trace_paths())]


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays reach the JSON output from the models.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def progress_bar(
    items: Iterable[T], total: int | None, description: str, quiet: bool = False
) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar on standard error.

    The bar is drawn only when standard error is a terminal and ``quiet`` is
    false, so piped and logged output stays clean.
    """
    if quiet or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def announce_first_compile(*dispatchers: Any) -> None:
    """Tell the user when numba must compile the replay kernels before work starts.

    numba caches compiled code on disk, so only the first run after an
    install or an upgrade compiles; that run takes a minute or more on a
    2-core machine and would otherwise look hung.
    """
    if not all(_is_jit_cached(d) for d in dispatchers):
        print(
            "paracell: compiling the replay kernels with numba; the first run "
            "takes a minute or two, later runs reuse the compiled code",
            file=sys.stderr,
        )


def _is_jit_cached(dispatcher: Any) -> bool:
    # NOTE: this reads numba's private cache index (numba 0.59-0.68). If that
    # layout changes, assume the code is cached and say nothing.
    try:
        return bool(dispatcher._cache._cache_file._load_index())
    except Exception:  # noqa: BLE001 - any failure means "unknown"
        return True


def make_console(file: Any = None) -> Any:
    """Return a rich Console for tables on ``file`` (standard output by default).

    A terminal gets its own width. Piped output takes ``$COLUMNS`` when set,
    else 120 columns, so tables are not squeezed into 80 columns in a file.
    """
    import os

    from rich.console import Console

    file = file or sys.stdout
    width = None
    if not (hasattr(file, "isatty") and file.isatty()):
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else 120
    return Console(file=file, width=width, highlight=False)


def unique_labels(names: list[str]) -> list[str]:
    """Return the names with ``-2``, ``-3`` ... added to repeats so outputs differ."""
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return labels


# File suffixes matplotlib writes without extra packages.
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_plot_path(path: Path, option: str) -> None:
    """Raise ParacellError unless a plot can be written to ``path``.

    Checked before any work starts, so a long run does not fail at its end.
    """
    import os

    from paracell.errors import ParacellError

    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ParacellError(
            f"{option} {path}: unsupported plot format {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(PLOT_SUFFIXES)}"
        )
    parent = path.parent
    if not parent.is_dir():
        raise ParacellError(
            f"{option} {path}: directory {parent} does not exist",
            hint="create it first",
        )
    if not os.access(parent, os.W_OK):
        raise ParacellError(f"{option} {path}: directory {parent} is not writable")


def singular(unit: str | None) -> str:
    """Return the singular of a manifest's operation unit ("requests" -> "request")."""
    unit = unit or "operation"
    return unit[:-1] if unit.endswith("s") else unit


def parse_size(text: str, option: str) -> int:
    """Return the bytes of ``text``: a plain integer, or a number with a unit (MiB)."""
    from paracell.costs.units import convert, parse_quantity
    from paracell.errors import ParacellError

    try:
        value, unit = parse_quantity(text)
        nbytes = int(convert(value, unit or "B", "bytes"))
    except ValueError as exc:
        raise ParacellError(
            f"{option} {text!r} is not a size: {exc}",
            hint="write e.g. 1073741824 or 512MiB",
        ) from None
    if nbytes <= 0:
        raise ParacellError(f"{option} {text!r} must be a positive size")
    return nbytes
