"""Live replay against the memory model on the shipped agent traces.

For each agent trace (agent-build, agent-pip) and each of static, fpr,
hyperalloc and pager, the script runs ``run_live`` with the default costs:
the policy's op stream on a real anonymous region. It prints the relative
difference between the measured and the modelled mean footprint, and
between the hardware-trap minor faults (less the offset a dry replay
measures) and the faults the model predicts.

Then it compares the Pager with static on the same trace, within one run
of the script. It gives the ratio of their real faults, and the time per
page of the Pager's batched binds against the time per page of the
first-touch faults they replace. Every policy runs once per round, back to
back, and the time ratio is computed per round. The script prints the
median and the range over ``--repeats`` rounds.

Times are wall clock per operation. The time per page of a class is its
total time over its pages: what a page costs over the whole run, with each
call weighted by the pages it handles. Binds of many pages cost less per
page than binds of one or two, and the total counts them by their pages.
The script also prints the median over operations of each operation's time
per page. That figure weighs every call alike, so it shows the cost of
the small binds that make up most calls, and a preemption inside a few
long operations moves it far less than it moves a total. Footprints and
fault counts are the same in every round.

Run: ``.venv/bin/python benchmarks/bench_live.py [--repeats N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from paracell.costs import default_costs
from paracell.live import LiveReport, run_live
from paracell.trace import load_trace, shipped_trace_paths

TRACES = ("agent-build", "agent-pip")
POLICIES = ("static", "fpr", "hyperalloc", "pager")
MIB = float(1 << 20)


def _median(values: Sequence[float | None]) -> float | None:
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


def pager_vs_static(
    static: list[LiveReport], pager: list[LiveReport]
) -> dict[str, Any]:
    """Compare the Pager with static per round; a round runs both back to back."""
    rounds: list[dict[str, Any]] = []
    for s_report, p_report in zip(static, pager, strict=True):
        fault = s_report.measured.timing["touch_fault"]
        bind = p_report.measured.timing["bind"]
        fault_ns = fault.median_ns_per_missing_page or 0.0
        bind_ns = bind.median_ns_per_page or 0.0
        bind_mean_ns = bind.ns / bind.pages
        fault_mean_ns = fault.ns / fault.missing_pages
        rounds.append(
            {
                "fault_ns_per_page": fault_ns,
                "bind_ns_per_page": bind_ns,
                "fault_mean_ns_per_page": fault_mean_ns,
                "bind_mean_ns_per_page": bind_mean_ns,
                "median_ratio": bind_ns / fault_ns if fault_ns else None,
                "mean_ratio": bind_mean_ns / fault_mean_ns,
                "static_host_ns": sum(t.ns for t in s_report.measured.timing.values()),
                "pager_host_ns": sum(t.ns for t in p_report.measured.timing.values()),
            }
        )
    static_faults = static[0].corrected_trap_faults
    pager_faults = pager[0].corrected_trap_faults
    bind = pager[0].measured.timing["bind"]
    median_ratios: list[float] = [
        r["median_ratio"] for r in rounds if r["median_ratio"] is not None
    ]
    mean_ratios: list[float] = [r["mean_ratio"] for r in rounds]
    return {
        "static_faults": static_faults,
        "pager_faults": pager_faults,
        "fault_ratio": (
            pager_faults / static_faults
            if pager_faults is not None and static_faults
            else None
        ),
        "pages_per_bind": bind.pages / bind.ops,
        "fault_ns_per_page": _median([r["fault_ns_per_page"] for r in rounds]),
        "bind_ns_per_page": _median([r["bind_ns_per_page"] for r in rounds]),
        "fault_mean_ns_per_page": _median(
            [r["fault_mean_ns_per_page"] for r in rounds]
        ),
        "bind_mean_ns_per_page": _median([r["bind_mean_ns_per_page"] for r in rounds]),
        "bind_to_fault_time_ratio": _median(median_ratios),
        "bind_to_fault_time_ratio_range": [min(median_ratios), max(median_ratios)],
        "bind_to_fault_mean_time_ratio": _median(mean_ratios),
        "bind_to_fault_mean_time_ratio_range": [min(mean_ratios), max(mean_ratios)],
        "static_host_ns": _median([r["static_host_ns"] for r in rounds]),
        "pager_host_ns": _median([r["pager_host_ns"] for r in rounds]),
        "rounds": rounds,
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
    print("Pager against static on the same trace (live, ratios over rounds)")
    for trace, q in ratios.items():
        low, high = q["bind_to_fault_time_ratio_range"]
        mean_low, mean_high = q["bind_to_fault_mean_time_ratio_range"]
        print(
            f"{trace}: real faults {q['pager_faults']} vs {q['static_faults']} "
            f"(ratio {q['fault_ratio']:.4f})\n"
            f"  time per page (total / pages): bind "
            f"{q['bind_mean_ns_per_page']:.0f} ns ({q['pages_per_bind']:.1f} pages "
            f"per call) vs first-touch fault {q['fault_mean_ns_per_page']:.0f} ns, "
            f"ratio {q['bind_to_fault_mean_time_ratio']:.2f} "
            f"({mean_low:.2f}-{mean_high:.2f})\n"
            f"  median over operations: bind {q['bind_ns_per_page']:.0f} ns vs fault "
            f"{q['fault_ns_per_page']:.0f} ns per page, ratio "
            f"{q['bind_to_fault_time_ratio']:.2f} ({low:.2f}-{high:.2f})\n"
            f"  host time of all operations {q['pager_host_ns'] / 1e6:.0f} ms vs "
            f"{q['static_host_ns'] / 1e6:.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="rounds of every policy (default 5)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    costs = default_costs()
    paths = {p.name: p for p in shipped_trace_paths()}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    for name in TRACES:
        trace = load_trace(paths[name])
        reports: dict[str, list[LiveReport]] = {policy: [] for policy in POLICIES}
        # Rounds run every policy back to back, so the ratios of one round
        # compare runs that met about the same load on the machine.
        for round_index in range(args.repeats):
            for policy in POLICIES:
                print(
                    f"bench_live: {name} {policy} round {round_index + 1}",
                    file=sys.stderr,
                )
                reports[policy].append(run_live(trace, policy, costs))
        results[name] = {policy: summarise(reports[policy]) for policy in POLICIES}
        ratios[name] = pager_vs_static(reports["static"], reports["pager"])

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
