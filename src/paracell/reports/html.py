"""The self-contained HTML report: one page, images inlined, no scripts.

Per trace it shows the footprint over time of every memory policy, the
modelled latency per runtime and deployment stacked by event class, the
savings matrix, and the comparison with the published claims. The page
ends with every cost parameter and its source. Images are base64 PNG in
``data:`` URLs and the CSS is inline, so the page needs no network.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paracell import __version__
from paracell.costs import CostTable
from paracell.costs.sources import SOURCES
from paracell.errors import ModelError
from paracell.reports import plots

log = logging.getLogger("paracell.reports")

# Published memory results of ParaCell, from PC26 ("up to" over agent
# workloads; waste averaged over them).
MEMORY_CLAIM_SAVING_VS_HYPERALLOC_PERCENT = 35.6
MEMORY_CLAIM_WASTE_PERCENT = 0.4
# Published latency reductions of ParaCell, from PC26, used when the latency
# model does not export its own copy.
LATENCY_CLAIMS_PERCENT = {
    ("pvm", "bare-metal"): 57.0,
    ("pvm", "nested"): 79.0,
    ("runv", "bare-metal"): 33.0,
    ("runv", "nested"): 88.0,
}
# Sources whose values were measured rather than published or estimated.
MEASURED_SOURCES = ("HERE", "measured")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 75em;
       color: #1d1d1f; line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.notice { background: #fff6d5; border-left: 5px solid #e0b000; padding: 0.6em 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; }
figcaption { font-size: 0.85em; color: #555; max-width: 40em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: left;
         vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.estimate td { background: #fdf1f1; }
tr.measured td { background: #eef8ee; }
.tag { font-size: 0.75em; padding: 0 0.35em; border-radius: 3px; }
.tag.estimate { background: #c62828; color: white; }
.tag.measured { background: #2e7d32; color: white; }
.tag.published { background: #1565c0; color: white; }
.muted { color: #666; font-size: 0.85em; }
"""


@dataclass
class TraceSection:
    """Everything the report shows about one trace."""

    trace: Any
    trace_hash: str
    latency: dict[str, Any] | None = None
    latency_error: str | None = None
    memory: Any | None = None
    memory_error: str | None = None
    classes: Sequence[str] = field(default_factory=tuple)
    # Page counts the latency model took from the memory model (None: the
    # latency model's own count of distinct allocated frames).
    first_touch_pages: int | None = None
    pager_bound_pages: int | None = None
    # Results of `paracell live --save` on this trace, newest per policy.
    live: list[dict[str, Any]] = field(default_factory=list)


def stored_live_runs(results_dir: Path, trace_hash: str) -> list[dict[str, Any]]:
    """Return the newest stored live run per policy and placement for a trace."""
    import json

    from paracell.reports.store import DB_NAME, ResultsStore

    if not (results_dir / DB_NAME).exists():
        return []
    with ResultsStore(results_dir, create=False) as store:
        _, rows = store.query(
            "SELECT run_id, created_at, result_json FROM runs "
            "WHERE command = 'live' AND trace_hash = ? ORDER BY created_at DESC",
            (trace_hash,),
        )
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for run_id, created_at, result_json in rows:
        result = json.loads(result_json)
        key = (str(result.get("policy")), str(result.get("placement")))
        if key not in newest:
            newest[key] = {"run_id": run_id, "created_at": created_at, **result}
    return sorted(newest.values(), key=lambda r: (r["policy"], r["placement"]))


def evaluate_trace(
    trace: Any, costs: CostTable, results_dir: Path | None = None
) -> TraceSection:
    """Run the latency and memory models on one trace for the report.

    A model that rejects the trace (for example a trace without allocator
    events) leaves its part of the section empty with the reason. With
    ``results_dir``, the stored live runs of the trace are added.
    """
    from paracell.models import latency, memory

    section = TraceSection(trace=trace, trace_hash=trace.content_hash())
    if results_dir is not None:
        section.live = stored_live_runs(results_dir, section.trace_hash)
    section.classes = tuple(getattr(latency, "CLASSES", ()))
    # Only a model's own refusal leaves a gap in the page; a damaged trace
    # (TraceFormatError) fails the whole report, as it fails every command.
    first_touch = pager_bound = None
    try:
        section.memory = memory.evaluate(trace, costs)
    except ModelError as exc:
        section.memory_error = str(exc)
        log.warning("%s: memory model: %s", trace.name, exc)
    else:
        # The same link as `paracell compare`, so both show the same figures:
        # first touches from the static policy, the Pager's binds from its run.
        first_touch = int(section.memory.runs["static"].metrics["secondary_faults"])
        pager_bound = int(section.memory.runs["pager"].metrics["pages_bound"])
        section.first_touch_pages = first_touch
        section.pager_bound_pages = pager_bound
    try:
        section.latency = latency.evaluate(
            trace, costs, first_touch_pages=first_touch, pager_bound_pages=pager_bound
        ).to_dict()
    except ModelError as exc:
        section.latency_error = str(exc)
        log.warning("%s: latency model: %s", trace.name, exc)
    return section


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, plot: str, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img data-plot="{_e(plot)}" alt="{_e(alt)}" '
        f'src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def _trace_header(section: TraceSection) -> str:
    manifest = section.trace.manifest
    workload = manifest.workload
    duration_s = (manifest.end_ts_ns - manifest.start_ts_ns) / 1e9
    counts = ", ".join(f"{k} {v:,}" for k, v in manifest.event_counts.items())
    lost = sum(manifest.lost_events.values()) if manifest.lost_events else 0
    command = " ".join(workload.command) if workload.command else "(not recorded)"
    return (
        "<table>"
        f"<tr><th>command</th><td><code>{_e(command)}</code></td></tr>"
        f"<tr><th>captured</th><td>{_e(manifest.start_time)} "
        f"with {_e(manifest.source)} "
        f"on Linux {_e(manifest.kernel_release)}, {manifest.cpu_count} CPUs; "
        f"{duration_s:.2f} s; lost events: {lost}</td></tr>"
        f"<tr><th>events</th><td>{_e(counts)}</td></tr>"
        f"<tr><th>content hash</th><td><code>{_e(section.trace_hash)}</code></td></tr>"
        "</table>"
    )


def _memory_part(section: TraceSection) -> str:
    from paracell.models.memory.metrics import format_faults

    if section.memory is None:
        return f"<p class='muted'>Memory model not run: {_e(section.memory_error)}</p>"
    report = section.memory
    document = report.to_dict()
    policies = list(report.runs)
    manifest = section.trace.manifest
    start_ns, end_ns = manifest.start_ts_ns, manifest.end_ts_ns
    peak = max(
        max(float(run.metrics["peak_footprint_bytes"]) for run in report.runs.values()),
        max(
            float(run.metrics.get("peak_allocated_bytes", 0))
            for run in report.runs.values()
        ),
    )

    figures = []
    for policy in policies:
        run = report.runs[policy]
        if run.timeline is None:
            continue
        png = plots.footprint_png(
            policy,
            run.timeline,
            start_ns,
            end_ns,
            float(run.metrics["mean_footprint_bytes"]),
            peak,
        )
        figures.append(
            _img(
                png,
                f"footprint-{policy}",
                f"footprint over time, {policy}",
                f"{policy} on {run.placement} placement: bound host memory over time; "
                f"dashed: memory the guest has allocated. Each point is the maximum "
                f"over 1/{plots.MAX_PLOT_POINTS} of the trace.",
            )
        )

    rows = []
    for policy in policies:
        entry = document[policy]
        rows.append(
            f"<tr><td>{_e(policy)}</td><td>{_e(entry['placement'])}</td>"
            f"<td class='num'>{_mib(entry['mean_footprint_bytes'])}</td>"
            f"<td class='num'>{_mib(entry['peak_footprint_bytes'])}</td>"
            f"<td class='num'>{entry['gib_seconds']:.3f}</td>"
            f"<td class='num'>{100 * entry['waste_fraction']:.2f}</td>"
            f"<td class='num'>{format_faults(entry)}</td>"
            f"<td class='num'>{int(entry['hypercalls']):,}</td>"
            f"<td class='num'>{entry['overhead_ns'] / 1e6:.2f}</td></tr>"
        )
    table = (
        "<table><tr><th>policy</th><th>placement</th><th>mean MiB</th>"
        "<th>peak MiB</th><th>GiB&#215;s</th><th>waste %</th><th>secondary faults</th>"
        "<th>hypercalls</th><th>time overhead ms</th></tr>" + "".join(rows) + "</table>"
    )

    savings = document["savings"]
    matrix = _img(
        plots.savings_png(savings, policies),
        "savings",
        "savings matrix",
        "Row policy's saving of mean footprint against the column policy, in percent "
        "of the column's mean (negative: the row uses more).",
    )
    return (
        "<h3>Footprint over time</h3>"
        f"<div class='grid'>{''.join(figures)}</div>"
        f"{table}{_live_part(section)}<h3>Savings matrix</h3>{matrix}"
    )


def _live_part(section: TraceSection) -> str:
    if not section.live:
        return ""
    rows = []
    for run in section.live:
        measured = run.get("measured", {})
        model = run.get("model", {})
        difference = run.get("relative_difference", {}).get("mean_footprint")
        rows.append(
            f"<tr class='measured'><td>{_e(run['policy'])}</td>"
            f"<td>{_e(run['placement'])}</td>"
            f"<td class='num'>{_mib(measured.get('mean_resident_bytes', 0))}</td>"
            f"<td class='num'>{_mib(measured.get('peak_resident_bytes', 0))}</td>"
            f"<td class='num'>{_mib(model.get('mean_footprint_bytes', 0))}</td>"
            f"<td class='num'>"
            f"{'-' if difference is None else f'{100 * difference:+.2f}'}</td>"
            f"<td>{_e(run['created_at'][:19])} <code>{_e(run['run_id'][:8])}</code>"
            "</td></tr>"
        )
    return (
        "<h3>Measured on real memory</h3><p>Stored runs of <code>paracell live</code> "
        "on this trace: the same op stream executed on a real anonymous mapping, "
        "resident memory measured with mincore. These footprints are measured.</p>"
        "<table><tr><th>policy</th><th>placement</th><th>measured mean MiB</th>"
        "<th>measured peak MiB</th><th>modelled mean MiB</th>"
        "<th>difference %</th><th>run</th></tr>" + "".join(rows) + "</table>"
    )


def _latency_part(section: TraceSection) -> str:
    if section.latency is None:
        return (
            f"<p class='muted'>Latency model not run: {_e(section.latency_error)}</p>"
        )
    document = section.latency
    runtimes = [r for r in document if r != "reductions"]
    deployments = list(document[runtimes[0]]) if runtimes else []
    classes = list(section.classes) or sorted(
        {c for r in runtimes for d in deployments for c in document[r][d]["by_class"]}
    )
    png = plots.latency_png(document, runtimes, deployments, classes)
    figure = _img(
        png,
        "latency",
        "modelled latency per runtime",
        "Modelled total time per runtime: native time (grey) plus the overhead of "
        "each event class, stacked; the label is the total relative to runc.",
    )
    rows = []
    for runtime in runtimes:
        for deployment in deployments:
            entry = document[runtime][deployment]
            top = sorted(
                entry["by_class"].items(),
                key=lambda kv: kv[1]["overhead_ns"],
                reverse=True,
            )[:3]
            breakdown = ", ".join(
                f"{name} {value['overhead_ns'] / 1e6:.2f} ms"
                for name, value in top
                if value["overhead_ns"] > 0
            )
            rows.append(
                f"<tr><td>{_e(runtime)}</td><td>{_e(deployment)}</td>"
                f"<td class='num'>{entry['total_ns'] / 1e6:,.2f}</td>"
                f"<td class='num'>{entry['overhead_ns'] / 1e6:,.2f}</td>"
                f"<td class='num'>{entry['relative_to_runc']:.3f}</td>"
                f"<td>{_e(breakdown or '-')}</td></tr>"
            )
    table = (
        "<table><tr><th>runtime</th><th>deployment</th><th>total ms</th>"
        "<th>overhead ms</th><th>relative to runc</th><th>largest overheads</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return f"{figure}{table}{_page_count_note(section)}"


def _page_count_note(section: TraceSection) -> str:
    """Say where the latency model's first touches and Pager binds came from."""
    if section.first_touch_pages is None:
        return (
            "<p class='muted'>First touches: the trace's distinct allocated page "
            "frames (the memory model did not run).</p>"
        )
    return (
        f"<p class='muted'>As in <code>paracell compare</code>, RunV and PVM take "
        f"{section.first_touch_pages:,} first-touch faults (the memory model's "
        f"static policy) and ParaCell's Pager binds {section.pager_bound_pages:,} "
        "pages (its pager policy). <code>paracell latency</code> alone counts the "
        "trace's distinct allocated frames, so its figures differ slightly.</p>"
    )


def claim_rows(section: TraceSection) -> list[dict[str, Any]]:
    """Return the published claims beside this trace's modelled values."""
    rows: list[dict[str, Any]] = []
    reductions = (section.latency or {}).get("reductions", {})
    for (baseline, deployment), claim in LATENCY_CLAIMS_PERCENT.items():
        entry = reductions.get(f"paracell_vs_{baseline}", {}).get(deployment)
        baseline_name = "PVM" if baseline == "pvm" else "RunV"
        rows.append(
            {
                "claim": f"ParaCell latency lower than {baseline_name}, {deployment}",
                "published": f"up to {entry['claim_percent'] if entry else claim:g} %",
                "modelled": f"{entry['model_percent']:.1f} %"
                if entry
                else "not modelled",
                "note": entry.get("reason", "")
                if entry
                else section.latency_error or "",
            }
        )
    memory_doc = section.memory.to_dict() if section.memory is not None else None
    if memory_doc and "pager" in memory_doc and "hyperalloc" in memory_doc:
        saving = 100 * memory_doc["savings"]["pager"]["hyperalloc"]
        modelled_saving = f"{saving:.1f} %"
        note = "mean footprint, each policy on its own guest allocator"
    else:
        modelled_saving = "not modelled"
        note = section.memory_error or "pager or hyperalloc not evaluated"
    rows.append(
        {
            "claim": "ParaCell memory below HyperAlloc",
            "published": f"up to {MEMORY_CLAIM_SAVING_VS_HYPERALLOC_PERCENT:g} %",
            "modelled": modelled_saving,
            "note": note,
        }
    )
    if memory_doc and "pager" in memory_doc:
        waste = f"{100 * memory_doc['pager']['waste_fraction']:.2f} %"
    else:
        waste = "not modelled"
    rows.append(
        {
            "claim": "ParaCell Pager memory waste",
            "published": f"under {MEMORY_CLAIM_WASTE_PERCENT:g} % on average",
            "modelled": waste,
            "note": "bound but not allocated by the guest, as a share of the footprint",
        }
    )
    return rows


def _claims_part(section: TraceSection) -> str:
    rows = "".join(
        f"<tr><td>{_e(r['claim'])}</td><td>{_e(r['published'])}</td>"
        f"<td>{_e(r['modelled'])}</td><td>{_e(r['note'])}</td></tr>"
        for r in claim_rows(section)
    )
    return (
        "<table><tr><th>claim (PC26)</th><th>published</th><th>modelled on this trace"
        "</th><th>explanation</th></tr>" + rows + "</table>"
    )


def _kind_of(source: str) -> str:
    if source == "estimate":
        return "estimate"
    if source in MEASURED_SOURCES:
        return "measured"
    return "published"


def _parameters_part(costs: CostTable) -> str:
    rows = []
    for param in sorted(costs, key=lambda p: (p.name, p.deployment)):
        kind = _kind_of(param.source)
        limits = (
            f"{param.low:g} .. {param.high:g}"
            if param.low is not None and param.high is not None
            else ""
        )
        detail = param.description
        if param.reasoning:
            detail = f"{detail.rstrip('.')}. Why: {param.reasoning}"
        if param.note:
            detail += f" ({param.note})"
        rows.append(
            f"<tr class='{kind}'><td><code>{_e(param.name)}</code></td>"
            f"<td>{_e(param.deployment)}</td>"
            f"<td class='num'>{param.value:.6g} {_e(param.unit)}</td>"
            f"<td>{_e(param.source)} <span class='tag {kind}'>{kind}</span></td>"
            f"<td class='num'>{_e(limits)}</td><td>{_e(detail)}</td></tr>"
        )
    used = sorted({p.source for p in costs})
    sources = "".join(
        f"<li><b>{_e(key)}</b>: {_e(SOURCES.get(key, key))}</li>" for key in used
    )
    nr_estimates = sum(1 for p in costs if p.is_estimate)
    return (
        f"<p>{len(costs)} parameters, {nr_estimates} of them estimates (marked red, "
        "with the range used for sensitivity); green rows were measured.</p>"
        "<table><tr><th>parameter</th><th>deployment</th><th>value</th><th>source</th>"
        "<th>range</th><th>meaning</th></tr>" + "".join(rows) + "</table>"
        f"<h3>Sources</h3><ul>{sources}</ul>"
    )


def render_report(
    sections: Sequence[TraceSection], costs: CostTable, profile: Path | None = None
) -> str:
    """Return the HTML page for the evaluated traces."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = [s.trace.name for s in sections]
    nr_live = sum(len(s.live) for s in sections)
    measured = sorted({p.name for p in costs if p.source in MEASURED_SOURCES})
    toc = "".join(
        f"<li><a href='#trace-{i}'>{_e(s.trace.name)}</a></li>"
        for i, s in enumerate(sections)
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>ParaCell report: {_e(', '.join(names))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>What secure-container designs cost on these traces</h1>",
        f"<p class='muted'>paracell {_e(__version__)}, generated {generated}; "
        f"cost profile: {_e(profile) if profile else 'defaults'}.</p>",
        "<div class='notice'><p><b>These numbers are modelled, not measured.</b> Every "
        "latency and memory figure on this page is computed by replaying the traces "
        "through models of the runtimes and memory policies with the cost parameters "
        "listed at the end; no container, VM or Pager ran to produce them.</p>"
        "<p><b>Measured:</b> the traces themselves (real programs recorded through "
        "tracefs or strace, as each trace's header says), and the cost parameters "
        "whose source is HERE or measured"
        + (f" ({_e(', '.join(measured))})" if measured else " (none in this profile)")
        + ". Footprints measured on real memory come from <code>paracell live</code>, "
        "which this page does not run; stored live runs of these traces, found in "
        f"the results store, are shown as measured ({nr_live} here).</p></div>",
        f"<h2>Traces</h2><ul>{toc}</ul>",
    ]
    for i, section in enumerate(sections):
        parts.append(f"<h2 id='trace-{i}'>{_e(section.trace.name)}</h2>")
        parts.append(_trace_header(section))
        parts.append("<h3>Memory</h3>")
        parts.append(_memory_part(section))
        parts.append("<h3>Latency</h3>")
        parts.append(_latency_part(section))
        parts.append("<h3>Against the published claims</h3>")
        parts.append(_claims_part(section))
    parts.append("<h2>Cost parameters and sources</h2>")
    parts.append(_parameters_part(costs))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out_dir: Path, page: str, name: str = "index.html") -> Path:
    """Write the page atomically into ``out_dir``; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def build_report(
    traces: Sequence[Any], costs: CostTable, out_dir: Path, profile: Path | None = None
) -> tuple[Path, list[TraceSection]]:
    """Evaluate the traces and write the report; return its path and the sections."""
    sections = [evaluate_trace(trace, costs) for trace in traces]
    page = render_report(sections, costs, profile)
    return write_report(out_dir, page), sections


def plot_names(sections: Sequence[TraceSection]) -> list[str]:
    """Return the ``data-plot`` names the page holds, per trace, for checks."""
    names = []
    for section in sections:
        if section.memory is not None:
            names += [
                f"footprint-{p}"
                for p, r in section.memory.runs.items()
                if r.timeline is not None
            ]
            names.append("savings")
        if section.latency is not None:
            names.append("latency")
    return names
