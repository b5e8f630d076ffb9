"""Units of cost parameters and conversion of profile values to them."""

from __future__ import annotations

import re

# Canonical unit -> accepted spellings with their factor to the canonical unit.
UNITS: dict[str, dict[str, float]] = {
    "ns": {"ns": 1.0, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9},
    "cycles": {"cycles": 1.0},
    "pages": {"pages": 1.0, "page": 1.0},
    "bytes": {"B": 1.0, "bytes": 1.0, "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30},
    "count": {"count": 1.0, "": 1.0},
    "ratio": {"ratio": 1.0, "": 1.0, "%": 0.01},
    "GHz": {"GHz": 1.0, "MHz": 1e-3},
    "pages/s": {"pages/s": 1.0},
    "bytes/s": {"bytes/s": 1.0, "B/s": 1.0, "MiB/s": 2.0**20, "GiB/s": 2.0**30},
}

_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(\S*)\s*$")


def convert(value: float, unit: str, canonical: str) -> float:
    """Convert ``value`` given in ``unit`` to the canonical unit.

    Raises ValueError when ``unit`` measures another kind of quantity.
    """
    factors = UNITS[canonical]
    if unit not in factors:
        accepted = ", ".join(repr(u) for u in factors if u)
        raise ValueError(
            f"unit {unit!r} is not a {canonical} unit; use one of {accepted}"
        )
    return value * factors[unit]


def parse_quantity(text: str) -> tuple[float, str]:
    """Split a string such as ``"0.46 us"`` into its number and unit."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a number followed by a unit, such as '0.46 us'"
        )
    return float(match.group(1)), match.group(2)
