"""Figures of the memory model: footprint over time, and the Pager sweep.

matplotlib is imported inside the functions, with the Agg backend, so
importing the model stays fast and works without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paracell.models.memory import MemoryReport
from paracell.models.memory.sweep import SweepPoint

_MIB = float(1 << 20)
# Many thousand steps per second would draw as a solid band; keeping the
# maximum of each bin keeps every peak visible.
_MAX_POINTS = 3000

# One colour and dash pattern per policy, so lines stay apart in print too.
_STYLE = {
    "static": ("#7f7f7f", (0, (1, 1))),
    "thp": ("#8c564b", (0, (3, 1, 1, 1))),
    "fpr": ("#1f77b4", (0, (5, 2))),
    "balloon": ("#9467bd", (0, (2, 2))),
    "damon": ("#bcbd22", (0, (4, 1, 1, 1, 1, 1))),
    "hyperalloc": ("#ff7f0e", (0, (6, 2, 2, 2))),
    "pager": ("#2ca02c", "solid"),
}


def _downsample(
    ts_s: np.ndarray, values: np.ndarray, span_s: float
) -> tuple[np.ndarray, np.ndarray]:
    if ts_s.size <= _MAX_POINTS or span_s <= 0:
        return ts_s, values
    bins = np.minimum(
        ((ts_s - ts_s[0]) / span_s * _MAX_POINTS).astype(np.int64), _MAX_POINTS - 1
    )
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    return ts_s[starts], np.maximum.reduceat(values, starts)


def plot_footprints(report: MemoryReport, path: Path) -> Path:
    """Draw every policy's bound memory over time, with the guest's allocated memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = report.events.start_ts_ns
    span_s = report.duration_ns / 1e9
    fig, ax = plt.subplots(figsize=(11, 6), dpi=120)
    reference = None
    for name, run in report.runs.items():
        timeline = run.timeline
        if timeline is None:
            continue
        ts_s = (timeline.ts_ns - start) / 1e9
        if reference is None:
            reference = _downsample(ts_s, timeline.allocated_bytes / _MIB, span_s)
        color, dashes = _STYLE.get(name, ("#17becf", "solid"))
        t, v = _downsample(ts_s, timeline.bound_bytes / _MIB, span_s)
        mean = float(run.metrics["mean_footprint_bytes"]) / _MIB
        ax.step(
            t,
            v,
            where="post",
            color=color,
            linestyle=dashes,
            linewidth=2.4 if name == "pager" else 1.6,
            label=f"{name} on {run.placement} (mean {mean:.0f} MiB)",
        )
    if reference is not None:
        # Drawn last and thin so it stays visible on top of the closest policy.
        ax.step(
            *reference,
            where="post",
            color="black",
            linewidth=0.9,
            zorder=10,
            label="allocated by the guest (reference)",
        )
    ax.set_xlabel("time since trace start (s)")
    ax.set_ylabel("host memory bound to the guest (MiB)")
    ax.set_title(f"Modelled guest memory footprint: {report.trace_name}")
    ax.set_xlim(0, max(span_s, 1e-9))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(points: Sequence[SweepPoint], trace_name: str, path: Path) -> Path:
    """Draw waste against hypercalls for every Pager setting of a sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    delays = sorted({p.unbind_delay_ns for p in points})
    reserves = sorted({p.reserve for p in points})
    markers = ["o", "s", "^", "D", "v", "P"]
    cmap = plt.get_cmap("viridis", max(len(delays), 2))
    for p in points:
        colour = cmap(delays.index(p.unbind_delay_ns))
        marker = markers[reserves.index(p.reserve) % len(markers)]
        size = 30 + 10 * np.log2(max(p.unbind_batch, 1))
        ax.scatter(
            p.hypercalls,
            p.waste_fraction * 100,
            color=colour,
            marker=marker,
            s=size,
            edgecolors="black" if p.is_default else "none",
            linewidths=1.5,
        )
    for i, delay in enumerate(delays):
        ax.scatter([], [], color=cmap(i), marker="o", label=f"delay {delay / 1e6:g} ms")
    for i, reserve in enumerate(reserves):
        ax.scatter(
            [],
            [],
            color="grey",
            marker=markers[i % len(markers)],
            label=f"reserve {reserve} pages",
        )
    ax.scatter([], [], facecolors="none", edgecolors="black", label="default setting")
    ax.set_xscale("log")
    ax.set_xlabel("hypercalls (bind and unbind calls)")
    ax.set_ylabel("waste (% of footprint, time-weighted)")
    ax.set_title(
        f"Pager parameters, modelled: {trace_name} (marker size: unbind batch)"
    )
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
