"""Matplotlib figures of the report, rendered to PNG bytes.

Every function draws on its own Figure with the Agg canvas (no display,
no global pyplot state), so reports can be built in worker processes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIB = 2**20
# Footprint curves are reduced to at most this many points per policy; each
# point is the maximum of its time bin, so peaks stay visible.
MAX_PLOT_POINTS = 2000
DPI = 100

POLICY_LABELS = {
    "static": "no reclaim, 4 KiB (static)",
    "thp": "no reclaim, 2 MiB (thp)",
    "fpr": "free page reporting (fpr)",
    "balloon": "balloon",
    "damon": "DAMON reclaim (damon)",
    "hyperalloc": "HyperAlloc",
    "pager": "ParaCell Pager",
}
RUNTIME_LABELS = {"runc": "runc", "runv": "RunV", "pvm": "PVM", "paracell": "ParaCell"}


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def binned_max(
    ts_ns: np.ndarray, values: np.ndarray, start_ns: int, end_ns: int, nr_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return bin start times and the maximum of a step function in each bin.

    ``values[i]`` is the value from ``ts_ns[i]`` until the next point; a bin with no
    point keeps the value reached before it.
    """
    if ts_ns.size == 0:
        return np.array([start_ns, end_ns], dtype=np.float64), np.zeros(2)
    span = max(end_ns - start_ns, 1)
    nr_bins = max(1, min(nr_bins, ts_ns.size))
    edges = start_ns + np.arange(nr_bins + 1) * (span / nr_bins)
    index = np.clip(((ts_ns - start_ns) * nr_bins) // span, 0, nr_bins - 1).astype(
        np.int64
    )
    peak = np.full(nr_bins, -1.0)
    np.maximum.at(peak, index, values.astype(np.float64))
    # The value carried into each bin from before it also counts.
    carried_index = np.searchsorted(ts_ns, edges[:-1], side="right") - 1
    carried = np.where(carried_index >= 0, values[np.maximum(carried_index, 0)], 0)
    peak = np.maximum(peak, carried)
    return edges[:-1], peak


def footprint_png(
    policy: str,
    timeline: Any,
    start_ns: int,
    end_ns: int,
    mean_bytes: float,
    ylim_bytes: float,
) -> bytes:
    """Plot one policy's bound memory over time against the guest's allocated memory."""
    ts_ns = np.asarray(timeline.ts_ns, dtype=np.int64)
    t_bound, bound = binned_max(
        ts_ns, np.asarray(timeline.bound_bytes), start_ns, end_ns, MAX_PLOT_POINTS
    )
    t_alloc, alloc = binned_max(
        ts_ns, np.asarray(timeline.allocated_bytes), start_ns, end_ns, MAX_PLOT_POINTS
    )

    figure = _figure(5.2, 2.6)
    axes = figure.add_subplot()
    axes.fill_between(
        (t_bound - start_ns) / 1e9,
        bound / MIB,
        step="post",
        alpha=0.35,
        color="tab:blue",
    )
    axes.step(
        (t_bound - start_ns) / 1e9,
        bound / MIB,
        where="post",
        color="tab:blue",
        label="bound host memory (footprint)",
    )
    axes.step(
        (t_alloc - start_ns) / 1e9,
        alloc / MIB,
        where="post",
        color="black",
        linestyle="--",
        linewidth=1,
        label="allocated by the guest",
    )

    axes.set_title(
        f"{POLICY_LABELS.get(policy, policy)}: mean {mean_bytes / MIB:.1f} MiB",
        fontsize=10,
    )
    axes.set_xlabel("time since trace start (s)")
    axes.set_ylabel("MiB")
    axes.set_xlim(0, max(end_ns - start_ns, 1) / 1e9)
    axes.set_ylim(0, ylim_bytes / MIB * 1.05 if ylim_bytes > 0 else 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    return _png(figure)


def latency_png(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    runtimes: Sequence[str],
    deployments: Sequence[str],
    classes: Sequence[str],
) -> bytes:
    """Draw stacked latency bars per runtime, one column of panels per deployment.

    The top row stacks native time and each class's overhead; the bottom row
    shows the overheads alone, which native time would otherwise dwarf.
    """
    from matplotlib import colormaps

    colours = colormaps["tab20"]
    figure = _figure(4.2 * len(deployments) + 1.8, 6.4)
    panels = figure.subplots(2, len(deployments), squeeze=False)
    shown = [
        c
        for c in classes
        if any(
            results[r][d]["by_class"].get(c, {}).get("overhead_ns", 0) > 0
            for r in runtimes
            for d in deployments
        )
    ]
    x = np.arange(len(runtimes))
    for column, deployment in enumerate(deployments):
        native = np.array([results[r][deployment]["native_ns"] / 1e6 for r in runtimes])
        for row, axes in enumerate(panels[:, column]):
            bottom = native.copy() if row == 0 else np.zeros(len(runtimes))
            if row == 0:
                axes.bar(x, native, color="0.75", label="native")
            for k, cls in enumerate(shown):
                heights = np.array(
                    [
                        results[r][deployment]["by_class"]
                        .get(cls, {})
                        .get("overhead_ns", 0)
                        / 1e6
                        for r in runtimes
                    ]
                )
                axes.bar(x, heights, bottom=bottom, color=colours(k % 20), label=cls)
                bottom = bottom + heights
            if row == 0:
                for i, runtime in enumerate(runtimes):
                    relative = results[runtime][deployment]["relative_to_runc"]
                    axes.annotate(
                        f"{relative:.2f}x",
                        (x[i], bottom[i]),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
                axes.set_title(f"{deployment}: total")
            else:
                axes.set_title(f"{deployment}: overhead only")
            axes.set_xticks(x, [RUNTIME_LABELS.get(r, r) for r in runtimes])
            axes.grid(axis="y", alpha=0.3)
            if column == 0:
                axes.set_ylabel("modelled time (ms)")
    handles, labels = panels[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=7)
    return _png(figure)


def savings_png(
    savings: Mapping[str, Mapping[str, float]], policies: Sequence[str]
) -> bytes:
    """Draw the savings matrix: the row policy's saving against the column's, in %."""
    matrix = np.array([[100.0 * savings[a][b] for b in policies] for a in policies])
    figure = _figure(1.0 + 0.85 * len(policies), 0.9 + 0.6 * len(policies))
    axes = figure.add_subplot()
    limit = max(1.0, float(np.nanmax(np.abs(matrix))))
    image = axes.imshow(matrix, cmap="RdYlGn", vmin=-limit, vmax=limit)
    for i in range(len(policies)):
        for j in range(len(policies)):
            axes.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7)
    axes.set_xticks(range(len(policies)), policies, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(policies)), policies, fontsize=8)
    axes.set_xlabel("against (column)")
    axes.set_ylabel("policy (row)")
    figure.colorbar(image, ax=axes, label="% of mean footprint saved")
    return _png(figure)
