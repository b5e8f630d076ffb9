"""``--save`` for the commands that evaluate models.

A command module calls :func:`add_save_arguments` in its ``add_arguments``
and :func:`save_run` once per trace after computing the result::

    run_id = save_run(args, "latency", trace, {"runtimes": runtimes}, report.to_dict())

``save_run`` does nothing and returns ``None`` unless ``--save`` was given.
It records the command's options, the cost profile's overrides of the
default parameters, the trace's name and content hash, the tool version and
the time.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paracell.reports.store import (
    RESULTS_ENV,
    ResultsStore,
    RunRecord,
    default_results_dir,
)

# Options that only choose where output goes or how it looks, not what is computed.
_NOT_PARAMETERS = frozenset(
    {
        "func",
        "command",
        "save",
        "results",
        "json",
        "log_level",
        "quiet",
        "traces",
        "out",
    }
)


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--results DIR`` (the results directory)."""
    parser.add_argument(
        "--results",
        type=Path,
        metavar="DIR",
        default=None,
        help=f"results directory (default: ${RESULTS_ENV} or ./results)",
    )


def add_save_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--save`` and ``--results DIR`` to a command's parser."""
    parser.add_argument(
        "--save", action="store_true", help="record the result in the results store"
    )
    add_results_argument(parser)


def results_dir(args: argparse.Namespace) -> Path:
    """Return the results directory chosen by ``--results`` or the default."""
    chosen = getattr(args, "results", None)
    return Path(chosen) if chosen else default_results_dir()


def command_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the parsed options that affect a result, as JSON-ready values."""
    options: dict[str, Any] = {}
    for name, value in sorted(vars(args).items()):
        if name in _NOT_PARAMETERS or callable(value):
            continue
        options[name] = _plain(value)
    return options


def profile_overrides(profile: Path | None) -> list[dict[str, Any]]:
    """Return the parameters whose value or source the profile changes."""
    if profile is None:
        return []
    from paracell.costs import default_costs, load_costs

    defaults = {p.key: p for p in default_costs()}
    changed = []
    for param in load_costs(profile):
        base = defaults.get(param.key)
        if base is None or base.value != param.value or base.source != param.source:
            changed.append(
                {
                    "name": param.name,
                    "deployment": param.deployment,
                    "value": param.value,
                    "unit": param.unit,
                    "source": param.source,
                }
            )
    return sorted(changed, key=lambda e: (e["name"], e["deployment"]))


def save_run(
    args: argparse.Namespace,
    command: str,
    trace: Any | None,
    params: Mapping[str, Any] | None,
    result: Mapping[str, Any],
) -> str | None:
    """Record one result when ``--save`` was given; return its run id, else None.

    ``trace`` is a :class:`paracell.trace.Trace` (or None for a run not tied
    to one trace); ``params`` adds command-specific parameters to the options
    read from ``args``.
    """
    if not getattr(args, "save", False):
        return None
    profile = getattr(args, "profile", None)
    record_params: dict[str, Any] = {
        "options": command_options(args),
        "profile": str(profile) if profile else None,
        "overrides": profile_overrides(Path(profile) if profile else None),
    }
    if params:
        record_params.update({k: _plain(v) for k, v in params.items()})
    record = RunRecord(
        command=command,
        result=result,
        params=record_params,
        trace_name=trace.name if trace is not None else None,
        trace_hash=trace.content_hash() if trace is not None else None,
        trace_path=str(trace.path) if trace is not None else None,
    )
    with ResultsStore(results_dir(args)) as store:
        return store.add_run(record)


def check_save_target(args: argparse.Namespace) -> None:
    """Open (and create) the results store now when ``--save`` was given.

    Model commands call this before their work, so an unwritable results
    directory fails at once rather than after minutes of modelling.
    """
    if getattr(args, "save", False):
        with ResultsStore(results_dir(args)):
            pass


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
