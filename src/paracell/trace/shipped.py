"""Location of the real traces that ship inside the package."""

from __future__ import annotations

from pathlib import Path

from paracell.errors import TraceFormatError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "traces"


def shipped_trace_paths() -> list[Path]:
    """Return the shipped trace directories, sorted by name."""
    paths = sorted(p for p in SHIPPED_DIR.glob("*") if (p / "manifest.json").is_file())
    if not paths:
        raise TraceFormatError(
            SHIPPED_DIR,
            "no shipped traces found",
            hint="reinstall paracell, or give trace directories on the command line",
        )
    return paths
