"""Live replay against the memory model on the shipped agent traces.

For each agent trace (agent-build, agent-pip) and each of static, fpr,
hyperalloc and pager, the script runs ``run_live`` with the default costs:
the policy's op stream on a real anonymous region. It prints the relative
difference between the measured and the modelled mean footprint, and
between the hardware-trap minor faults (less the offset a dry replay
measures) and the faults the model predicts.

Then it compares the Pager with static on the same trace, within one run
of the script: the ratio of their real faults, and the time per page of
the Pager's batched binds against the time per page of the first-touch
faults they replace. Times are wall clock per operation; the per-page
figure of a class is the median over its operations, which a preemption
on these shared 2-vCPU machines moves far less than a sum would. Each
policy runs ``--repeats`` times and the time figures are medians over the
repeats; footprints and fault counts are the same in every repeat.

Run: ``.venv/bin/python benchmarks/bench_live.py [--repeats N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from paracell.costs import default_costs
from paracell.live import LiveReport, run_live
from paracell.trace import load_trace, shipped_trace_paths

TRACES = ("agent-build", "agent-pip")
POLICIES = ("static", "fpr", "hyperalloc", "pager")
MIB = float(1 << 20)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarise(reports: list[LiveReport]) -> dict[str, Any]:
    """Return the footprint and fault figures of the first run, times over all runs."""
    first = reports[0].to_dict(timeline=False)
    m, model, rel = first["measured"], first["model"], first["relative_difference"]
    for other in reports[1:]:
        # The stream is the same each time, so the kernel must agree each time.
        assert (
            other.measured.mean_resident_bytes
            == reports[0].measured.mean_resident_bytes
        )
    timing: dict[str, dict[str, float | None]] = {}
    for name in (
        "touch_fault",
        "touch_resident",
        "bind",
        "unbind",
        "install_2m",
        "reclaim_2m",
    ):
        classes = [r.measured.timing[name] for r in reports]
        if classes[0].ops == 0:
            continue
        timing[name] = {
            "operations": classes[0].ops,
            "pages": classes[0].pages,
            "median_ns_per_page": _median([c.median_ns_per_page for c in classes]),
            "median_ns_per_missing_page": _median(
                [c.median_ns_per_missing_page for c in classes]
            ),
            "mean_ns_per_page": _median([c.ns_per_page for c in classes]),
            "total_ns": _median([float(c.ns) for c in classes]),
        }
    return {
        "model_mean_bytes": model["mean_footprint_bytes"],
        "live_mean_bytes": m["mean_resident_bytes"],
        "mean_footprint_difference": rel["mean_footprint"],
        "model_peak_bytes": model["peak_footprint_bytes"],
        "live_peak_bytes": m["peak_resident_bytes"],
        "model_faults": model["expected_minor_faults"],
        "live_trap_faults": m["minor_faults"],
        "fault_offset": m["fault_offset"]["minor_faults"]
        if m["fault_offset"]
        else None,
        "live_faults_corrected": m["minor_faults_corrected"],
        "fault_difference": rel["minor_faults"],
        "fault_difference_absolute": rel["minor_faults_absolute"],
        "rusage_faults": m["minor_faults_rusage"],
        "huge_page_share": m["huge_page_share_at_peak"],
        "timing": timing,
        "wall_seconds": _median([r.measured.wall_ns / 1e9 for r in reports]),
    }


def pager_vs_static(static: dict[str, Any], pager: dict[str, Any]) -> dict[str, Any]:
    fault = static["timing"]["touch_fault"]
    bind = pager["timing"]["bind"]
    fault_ns = fault["median_ns_per_missing_page"]
    bind_ns = bind["median_ns_per_page"]
    static_total = sum(t["total_ns"] for t in static["timing"].values())
    pager_total = sum(t["total_ns"] for t in pager["timing"].values())
    return {
        "static_faults": static["live_faults_corrected"],
        "pager_faults": pager["live_faults_corrected"],
        "fault_ratio": (
            pager["live_faults_corrected"] / static["live_faults_corrected"]
            if static["live_faults_corrected"]
            else None
        ),
        "fault_ns_per_page": fault_ns,
        "bind_ns_per_page": bind_ns,
        "bind_to_fault_time_ratio": bind_ns / fault_ns if fault_ns else None,
        "fault_mean_ns_per_page": fault["total_ns"] / fault["pages"],
        "bind_mean_ns_per_page": bind["mean_ns_per_page"],
        "pages_per_bind": bind["pages"] / bind["operations"],
        "static_host_ns": static_total,
        "pager_host_ns": pager_total,
    }


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:+7.2%}"


def print_tables(
    results: dict[str, dict[str, dict[str, Any]]], ratios: dict[str, dict[str, Any]]
) -> None:
    print("Measured (live) against modelled, default costs")
    print(
        f"{'trace':<12} {'policy':<11} {'model MiB':>9} {'live MiB':>9} {'diff':>8}  "
        f"{'model flt':>9} {'live flt':>9} {'offset':>6} {'excess':>6} {'diff':>8} "
        f"{'rusage':>8}"
    )
    for trace, by_policy in results.items():
        for policy, r in by_policy.items():
            footprint = _pct(r["mean_footprint_difference"])
            print(
                f"{trace:<12} {policy:<11} {r['model_mean_bytes'] / MIB:9.1f} "
                f"{r['live_mean_bytes'] / MIB:9.1f} {footprint}  "
                f"{r['model_faults']:9d} {r['live_trap_faults']:9d} "
                f"{r['fault_offset']:6d} {r['fault_difference_absolute']:6d} "
                f"{_pct(r['fault_difference'])} {r['rusage_faults']:8d}"
            )
    print()
    print("Pager against static on the same trace (live)")
    for trace, q in ratios.items():
        print(
            f"{trace}: faults {q['pager_faults']} vs {q['static_faults']} "
            f"(ratio {q['fault_ratio']:.4f}); "
            f"bind {q['bind_ns_per_page']:.0f} ns/page (median, "
            f"{q['pages_per_bind']:.1f} pages per call) vs first-touch fault "
            f"{q['fault_ns_per_page']:.0f} ns/page: ratio "
            f"{q['bind_to_fault_time_ratio']:.2f}; means "
            f"{q['bind_mean_ns_per_page']:.0f} vs {q['fault_mean_ns_per_page']:.0f}; "
            f"host time of all operations {q['pager_host_ns'] / 1e6:.1f} ms vs "
            f"{q['static_host_ns'] / 1e6:.1f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per policy (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    costs = default_costs()
    paths = {p.name: p for p in shipped_trace_paths()}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    for name in TRACES:
        trace = load_trace(paths[name])
        results[name] = {}
        for policy in POLICIES:
            print(f"bench_live: {name} {policy}", file=sys.stderr)
            reports = [run_live(trace, policy, costs) for _ in range(args.repeats)]
            results[name][policy] = summarise(reports)
        ratios[name] = pager_vs_static(results[name]["static"], results[name]["pager"])
    load = os.getloadavg()[0]
    if args.json:
        json.dump(
            {
                "results": results,
                "pager_vs_static": ratios,
                "load_average": load,
                "repeats": args.repeats,
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print_tables(results, ratios)
        print(
            f"\nload average at the end: {load:.1f} (2 vCPUs); repeats {args.repeats}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
