"""Cost profiles: TOML files that override parameters of the default table.

A profile looks like this::

    [meta]
    description = "measured on build host"

    [params]
    "memory.populate_write_per_page" = "0.84 us"   # every deployment

    [params.nested]
    "runv.exit" = { value = 29.3, unit = "us", source = "PVM23" }

Values carry their unit; a unit of the wrong kind, an unknown name or an
unknown deployment is an error that names the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import tomli_w

from paracell.costs.sources import SOURCES
from paracell.costs.table import ANY, DEPLOYMENTS, CostTable, Param
from paracell.costs.units import convert, parse_quantity
from paracell.errors import ProfileError
from paracell.tomlfile import read_toml


def apply_profile(table: CostTable, path: Path) -> CostTable:
    """Return ``table`` with the overrides of the profile at ``path``."""
    document = read_toml(
        path,
        ProfileError,
        "profile",
        "a cost profile is a TOML file, as `paracell calibrate -o` writes",
    )
    params = document.get("params", {})
    if not isinstance(params, dict):
        raise ProfileError(f"{path}: [params] must be a table")
    unknown_top = set(document) - {"meta", "params"}
    if unknown_top:
        raise ProfileError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown_top))}; "
            "a profile has [meta] and [params]"
        )
    overrides: dict[tuple[str, str], tuple[float, str, str]] = {}
    for key, entry in params.items():
        if isinstance(entry, dict) and "value" not in entry and key not in table:
            # A sub-table that is not a parameter names a deployment.
            if key not in DEPLOYMENTS:
                raise ProfileError(
                    f"{path}: unknown deployment [params.{key}]; "
                    f"use {' or '.join(DEPLOYMENTS)}"
                )
            for name, value in entry.items():
                _collect(table, path, name, value, key, overrides)
        else:
            _collect(table, path, key, entry, None, overrides)
    updated = {k: p for k, p in ((p.key, p) for p in table)}
    for key, (value, source, note) in overrides.items():
        updated[key] = _with_value(updated[key], value, source, note)
    return CostTable(updated.values())


def _collect(
    table: CostTable,
    path: Path,
    name: str,
    entry: Any,
    deployment: str | None,
    out: dict[tuple[str, str], tuple[float, str, str]],
) -> None:
    keys = table.keys_for(name)
    if not keys:
        raise ProfileError(
            f"{path}: unknown parameter {name!r}",
            hint="`paracell costs` lists every parameter name",
        )
    if deployment is not None:
        keys = [k for k in keys if k[1] in (deployment, ANY)]
        if not keys:
            raise ProfileError(f"{path}: parameter {name!r} has no {deployment} value")
        if keys[0][1] == ANY:
            raise ProfileError(
                f"{path}: parameter {name!r} has one value for every deployment; "
                f"set it under [params], not [params.{deployment}]"
            )
    param = table.param(*keys[0])
    value, source, note = _parse_entry(path, name, entry, param.unit)
    _check_valid(path, param, value)
    for key in keys:
        out[key] = (value, source, note)


def _parse_entry(
    path: Path, name: str, entry: Any, canonical: str
) -> tuple[float, str, str]:
    source, note = "measured", ""
    if isinstance(entry, str):
        try:
            number, unit = parse_quantity(entry)
        except ValueError as exc:
            raise ProfileError(f"{path}: parameter {name!r}: {exc}") from None
    elif isinstance(entry, dict):
        if "value" not in entry or "unit" not in entry:
            raise ProfileError(f"{path}: parameter {name!r} needs 'value' and 'unit'")
        number, unit = entry["value"], entry["unit"]
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise ProfileError(
                f"{path}: parameter {name!r}: value {number!r} is not a number"
            )
        source = entry.get("source", source)
        note = str(entry.get("note", ""))
        if source not in SOURCES:
            raise ProfileError(
                f"{path}: parameter {name!r}: unknown source {source!r}; "
                f"use one of {', '.join(SOURCES)}"
            )
    elif isinstance(entry, (int, float)) and canonical in ("count", "ratio"):
        number, unit = entry, canonical
    else:
        raise ProfileError(
            f"{path}: parameter {name!r}: give a value with its unit, such as "
            f'"1.5 us" or {{ value = 1.5, unit = "us" }}'
        )
    try:
        value = convert(float(number), str(unit), canonical)
    except ValueError as exc:
        raise ProfileError(f"{path}: parameter {name!r}: {exc}") from None
    if not math.isfinite(value):
        raise ProfileError(f"{path}: parameter {name!r}: value {number} is not finite")
    if value < 0:
        raise ProfileError(f"{path}: parameter {name!r}: value {number} is negative")
    return value, source, note


def _check_valid(path: Path, param: Param, value: float) -> None:
    """Reject a value the models cannot use, whatever its source."""
    problem = param.invalid_reason(value)
    if problem:
        raise ProfileError(f"{path}: parameter {param.name!r}: {problem}")


def _with_value(param: Param, value: float, source: str, note: str) -> Param:
    # An overridden estimate is no longer an estimate unless the profile says so;
    # keep its range so the sensitivity table can still vary it.
    return Param(
        name=param.name,
        value=value,
        unit=param.unit,
        source=source,
        description=param.description,
        deployment=param.deployment,
        low=param.low,
        high=param.high,
        reasoning=param.reasoning if source == "estimate" else "",
        note=note
        or f"set by profile (default {param.value:g} {param.unit}, {param.source})",
    )


def write_profile(
    path: Path, meta: dict[str, str], entries: list[dict[str, Any]]
) -> None:
    """Write a profile atomically.

    Each entry has name, value, unit, source, note and an optional deployment.
    """
    params: dict[str, Any] = {}
    for e in entries:
        target = (
            params
            if e.get("deployment", ANY) == ANY
            else params.setdefault(e["deployment"], {})
        )
        target[e["name"]] = {
            "value": e["value"],
            "unit": e["unit"],
            "source": e.get("source", "measured"),
            "note": e.get("note", ""),
        }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(tomli_w.dumps({"meta": meta, "params": params}))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
