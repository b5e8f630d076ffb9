"""run_live on real memory: a generated trace and a slice of a shipped agent trace.

The live replay executes the model's own op stream, so the measured mean
footprint and the hardware-trap faults (less the offset of a dry run) must
match the model. The tolerances below only absorb faults of the interpreter
that land in the counted window.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from paracell.costs import default_costs
from paracell.errors import LiveError
from paracell.live import LiveOptions, kernel, open_region_count, run_live
from paracell.models.memory import AllocatorEvents
from paracell.trace import load_trace, shipped_trace_paths
from paracell.trace.builder import TraceBuilder

S = 1_000_000_000
MIB = 1 << 20
COSTS = default_costs().replace_values({("memory.guest_ram", "any"): 512 * MIB})
FAULT_SLACK = 16


def generated_trace(tmp_path: Path, name: str = "generated", seconds: float = 3.0):
    """A bursty workload: 3000 allocations of order 0-2 living 5 ms to 1.5 s."""
    rng = random.Random(7)
    b = TraceBuilder(name=name, cpu_count=2)
    next_pfn = 0x10000
    for _ in range(3000):
        order = rng.choice((0, 0, 0, 1, 2))
        start = rng.uniform(0.05, seconds * 0.8)
        life = rng.choice((rng.uniform(0.005, 0.05), rng.uniform(0.2, 1.5)))
        next_pfn = (next_pfn + (1 << order) - 1) >> order << order
        cpu = rng.randrange(2)
        b.alloc(int(start * S), pfn=next_pfn, order=order, cpu=cpu)
        if start + life < seconds:
            b.free(int((start + life) * S), pfn=next_pfn, order=order, cpu=cpu)
        next_pfn += 1 << order
    path = tmp_path / name
    b.write(path, end_ts_ns=int(seconds * S))
    return load_trace(path)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return generated_trace(tmp_path_factory.mktemp("live"))


def _check_against_model(report) -> None:
    doc = report.to_dict(timeline=False)
    m, model, rel = doc["measured"], doc["model"], doc["relative_difference"]
    assert abs(rel["mean_footprint"]) <= 0.01, rel
    assert abs(rel["peak_footprint"]) <= 0.01, rel
    assert m["max_drift_pages"] == 0
    # The kernel's own count agrees with the per-operation mincore count.
    assert m["final_smaps_rss_bytes"] == m["final_resident_bytes"]
    assert m["minor_faults_corrected"] is not None
    assert abs(m["minor_faults_corrected"] - model["expected_minor_faults"]) <= max(
        FAULT_SLACK, 0.01 * model["expected_minor_faults"]
    )


@pytest.mark.parametrize("policy", ["static", "fpr", "pager", "hyperalloc", "thp"])
def test_generated_trace_matches_model(trace, policy):
    if policy in ("hyperalloc", "thp") and kernel.thp_enabled_mode() == "never":
        pytest.skip("transparent huge pages are disabled on this host")
    report = run_live(trace, policy, COSTS, options=LiveOptions(sample_ns=50_000_000))
    _check_against_model(report)
    assert open_region_count() == 0


def test_pager_binds_before_touch(trace):
    report = run_live(trace, "pager", COSTS)
    m = report.measured
    assert report.model.metrics["secondary_faults"] == 0
    assert m.timing["touch_fault"].ops == 0
    assert m.timing["bind"].pages > 0
    assert m.gup_faults is not None
    # Every page MADV_POPULATE_WRITE faulted in shows up in getrusage only.
    assert abs(m.gup_faults - m.timing["bind"].missing_pages) <= FAULT_SLACK


def test_samples_follow_model_timeline(trace):
    report = run_live(trace, "pager", COSTS, options=LiveOptions(sample_ns=20_000_000))
    measured = report.measured.sample_resident_bytes
    modelled = report.model_sampled_bytes()
    assert measured.size == modelled.size
    assert np.array_equal(measured, modelled)


def _agent_slice(seconds: float) -> AllocatorEvents:
    path = next(p for p in shipped_trace_paths() if p.name == "agent-pip")
    events = AllocatorEvents.from_trace(load_trace(path))
    end = events.start_ts_ns + int(seconds * S)
    keep = events.ts_ns <= end
    return dataclasses.replace(
        events,
        ts_ns=events.ts_ns[keep],
        kind=events.kind[keep],
        pfn=events.pfn[keep],
        order=events.order[keep],
        cpu=events.cpu[keep],
        end_ts_ns=end,
    )


@pytest.mark.parametrize("policy", ["static", "pager"])
def test_shipped_slice_matches_model(policy):
    events = _agent_slice(3.0)
    report = run_live(events, policy, default_costs())
    _check_against_model(report)
    assert report.measured.end_ts_ns - report.measured.start_ts_ns == 3 * S


def test_max_rss_rejected_before_mapping(trace, monkeypatch):
    def no_mmap(sz_bytes: int) -> int:
        raise AssertionError(f"mapped {sz_bytes} bytes despite the budget")

    monkeypatch.setattr(kernel, "mmap_anonymous", no_mmap)
    with pytest.raises(LiveError, match="needs about .* MiB") as info:
        run_live(trace, "static", COSTS, max_rss_bytes=1 * MIB)
    assert "nothing was mapped" in str(info.value)
    assert info.value.hint is not None
    assert re.fullmatch(r"use --max-rss \d+MiB or more", info.value.hint)


def test_unknown_policy_rejected(trace):
    with pytest.raises(LiveError, match="unknown memory policy"):
        run_live(trace, "swap", COSTS)


CHILD = textwrap.dedent(
    """
    import json, sys
    from paracell.costs import default_costs
    from paracell.live import LiveOptions, LiveTerminated, open_region_count, run_live
    from paracell.live import kernel
    from paracell.trace import load_trace

    trace = load_trace(sys.argv[1])
    seen = {}

    def overlapping(addr, size):
        return [r for r in kernel.mapped_ranges() if r[0] < addr + size and addr < r[1]]

    def on_region(region, phase):
        if phase == "replay":
            seen.update(addr=region.addr, size=region.sz_bytes,
                        during=overlapping(region.addr, region.sz_bytes))
            print("mapped", flush=True)

    try:
        run_live(trace, "static", default_costs(), options=LiveOptions(speed=1.0),
                 measure_offset=False, on_region=on_region)
        status = "finished"
    except LiveTerminated as exc:
        status = str(exc)
    print(json.dumps({
        "status": status,
        "during": seen["during"],
        "region": [seen["addr"], seen["addr"] + seen["size"]],
        "after": overlapping(seen["addr"], seen["size"]),
        "open_regions": open_region_count(),
    }), flush=True)
    """
)


def test_sigterm_leaves_no_mapping(trace, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(trace.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "mapped", child.stderr.read() if child.stderr else ""
        os.kill(child.pid, signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert "SIGTERM" in result["status"], err
    # The region was mapped while the replay ran, and nothing of it after.
    assert result["during"] == [result["region"]]
    assert result["after"] == []
    assert result["open_regions"] == 0


def test_budget_numbers():
    from paracell.live.session import plan_budget

    budget = plan_budget(100 * MIB, 25_600, None)
    assert budget.needed_bytes == 100 * MIB + budget.margin_bytes
    assert budget.margin_bytes >= 64 * MIB
    assert budget.max_rss_bytes == pytest.approx(
        budget.mem_available_bytes * 0.5, abs=1
    )
    explicit = plan_budget(100 * MIB, 25_600, 50 * MIB)
    with pytest.raises(LiveError, match="more than --max-rss allows"):
        explicit.check("test")
    # The need is printed rounded up, so passing the printed figure works.
    with pytest.raises(LiveError) as excinfo:
        explicit.check("test")
    printed = int(str(excinfo.value).split("needs about ")[1].split(" MiB")[0])
    plan_budget(100 * MIB, 25_600, printed * MIB).check("test")
    assert explicit.process_rss_bytes > 0
