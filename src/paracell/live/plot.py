"""Measured against modelled footprint over trace time, as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paracell.errors import LiveError
from paracell.live.session import LiveReport

_MIB = float(1 << 20)


def plot_live(report: LiveReport, path: Path) -> Path:
    """Draw the modelled footprint and the measured samples into ``path``; return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report.measured
    timeline = report.model.timeline
    if timeline is None:
        raise LiveError("the model run has no footprint timeline to plot")
    start = m.start_ts_ns
    fig, ax = plt.subplots(figsize=(9, 4.5))
    model_s = (np.asarray(timeline.ts_ns) - start) / 1e9
    ax.step(
        model_s,
        np.asarray(timeline.bound_bytes) / _MIB,
        where="post",
        label="modelled footprint (bound pages)",
        color="tab:blue",
        linewidth=1.2,
    )
    ax.plot(
        (m.sample_ts_ns - start) / 1e9,
        m.sample_resident_bytes / _MIB,
        "o",
        markersize=3,
        color="tab:red",
        label="measured resident (mincore, every sample)",
    )
    rel = report.relative_difference()["mean_footprint"]
    rel_text = f"{rel:+.2%}" if rel is not None else "n/a"
    ax.set_title(
        f"{report.trace_name}: {report.policy} on {report.placement} placement "
        f"(mean footprint measured vs modelled {rel_text})"
    )
    ax.set_xlabel("trace time (s)")
    ax.set_ylabel("footprint (MiB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise LiveError(f"{path}: cannot write the plot ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return path
