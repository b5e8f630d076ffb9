"""ParaCell: what secure-container designs cost on a real workload.

The package captures traces of real programs (:mod:`paracell.capture`),
stores them in a validated Parquet format (:mod:`paracell.trace`), replays
them through latency and memory models of runc, RunV, PVM and ParaCell
(:mod:`paracell.models`), runs the memory replay on real host memory
(:mod:`paracell.live`), models XGate isolation (:mod:`paracell.isolation`)
and renders reports (:mod:`paracell.reports`).
"""

__version__ = "0.1.0"


def _choose_numba_cache_dir() -> None:
    """Point numba's on-disk cache somewhere writable before any kernel is compiled.

    numba caches next to the sources, else under the home directory; when a
    service account runs a root-installed paracell, both are read-only and
    numba raises instead of compiling. Fall back to a per-user temporary
    directory then.
    """
    import os
    import tempfile
    from pathlib import Path

    if "NUMBA_CACHE_DIR" in os.environ:
        return
    package = Path(__file__).resolve().parent
    cache = package / "models" / "memory" / "__pycache__"
    if os.access(cache if cache.is_dir() else package, os.W_OK):
        return
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    if os.access(home_cache if home_cache.is_dir() else Path.home(), os.W_OK):
        return
    fallback = Path(tempfile.gettempdir()) / f"paracell-numba-{os.getuid()}"
    os.environ["NUMBA_CACHE_DIR"] = str(fallback)


_choose_numba_cache_dir()
