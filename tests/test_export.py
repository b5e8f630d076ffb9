"""Chrome trace-event export of the latency model's timeline."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paracell.cli import main
from paracell.costs import default_costs
from paracell.errors import ParacellError
from paracell.models import latency
from paracell.reports.chrome_trace import merge_windows, min_slices, prepare_slices
from paracell.trace import load_trace, shipped_trace_paths

# Each dur is dur_ns / 1000 rounded once to the nearest double (relative error
# at most 2**-53), and math.fsum adds the doubles without further rounding.
# So the sum in microseconds is within total_us * 2**-53 of the exact value;
# a few ulps more allow for the final multiplication by 1000.
SUM_RELATIVE_TOLERANCE = 2.0**-50


def _shipped(name: str) -> Path:
    for path in shipped_trace_paths():
        if path.name == name:
            return path
    pytest.fail(f"shipped trace {name!r} not found")


def _export(
    tmp_path: Path, trace: Path, runtime: str, deployment: str, *extra: str
) -> Any:
    out = tmp_path / f"{trace.name}-{runtime}-{deployment}.json"
    argv = ["export", str(trace), "--runtime", runtime, "--deployment", deployment]
    assert main([*argv, "--format", "chrome", "-o", str(out), *extra]) == 0
    with open(out) as f:
        return json.load(f)


def _check_schema(document: dict[str, Any]) -> list[dict[str, Any]]:
    assert isinstance(document["traceEvents"], list)
    metadata = [e for e in document["traceEvents"] if e["ph"] == "M"]
    slices = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert len(metadata) + len(slices) == len(document["traceEvents"])
    names = {e["name"] for e in metadata}
    assert names == {"process_name", "thread_name"}
    for event in metadata:
        assert isinstance(event["args"]["name"], str)
        assert isinstance(event["pid"], int)
    for event in slices:
        assert isinstance(event["name"], str)
        assert event["cat"] in ("native", "overhead")
        assert isinstance(event["ts"], float)
        assert isinstance(event["dur"], float)
        assert event["dur"] > 0
        assert isinstance(event["pid"], int)
        assert isinstance(event["tid"], int)
        assert isinstance(event["args"], dict)
    return slices


@pytest.mark.parametrize(
    ("trace_name", "runtime", "deployment"),
    [
        ("redis", "pvm", "nested"),
        ("redis", "paracell", "bare-metal"),
        ("agent-build", "runv", "nested"),
        ("nginx", "runc", "bare-metal"),
    ],
)
def test_export_sums_to_modelled_total(
    tmp_path: Path, trace_name: str, runtime: str, deployment: str
) -> None:
    trace_path = _shipped(trace_name)
    document = _export(tmp_path, trace_path, runtime, deployment)
    slices = _check_schema(document)
    report = latency.evaluate(
        load_trace(trace_path), default_costs(), [runtime], [deployment]
    )
    total_ns = report.to_dict()[runtime][deployment]["total_ns"]
    total_us = math.fsum(e["dur"] for e in slices)
    assert abs(total_us * 1000 - total_ns) <= total_ns * SUM_RELATIVE_TOLERANCE
    assert document["otherData"]["total_ns"] == total_ns
    assert document["otherData"]["modelled"] is True
    # The slices follow each other on one clock without gaps or overlaps.
    for before, after in zip(slices, slices[1:], strict=False):
        assert after["ts"] == pytest.approx(before["ts"] + before["dur"], abs=1e-6)
    assert slices[0]["ts"] == 0.0


def test_export_keeps_class_sums_when_merging(tmp_path: Path) -> None:
    trace_path = _shipped("agent-pip")
    timeline = latency.timeline(
        load_trace(trace_path), default_costs(), "pvm", "nested"
    )
    expected_ns: dict[str, int] = defaultdict(int)
    for class_id, dur in zip(
        timeline.class_id.tolist(), timeline.dur_ns.tolist(), strict=True
    ):
        expected_ns[timeline.class_names[class_id]] += dur
    exact = _check_schema(
        _export(tmp_path, trace_path, "pvm", "nested", "--max-events", "10000000")
    )
    merged_doc = _export(tmp_path, trace_path, "pvm", "nested", "--window-us", "1000")
    merged = _check_schema(merged_doc)
    assert len(exact) == len(timeline)
    assert len(merged) < len(exact) // 10
    assert merged_doc["otherData"]["merge_window_ns"] == 1_000_000
    assert any(e["args"].get("merged_slices", 1) > 1 for e in merged)
    for events in (exact, merged):
        got_us: dict[str, list[float]] = defaultdict(list)
        for event in events:
            got_us[event["name"]].append(event["dur"])
        assert set(got_us) == {k for k, v in expected_ns.items() if v > 0}
        for name, durs in got_us.items():
            assert math.fsum(durs) * 1000 == pytest.approx(
                expected_ns[name], rel=2.0**-50
            )


def test_export_bounds_event_count(tmp_path: Path) -> None:
    slices = _check_schema(
        _export(
            tmp_path, _shipped("nginx"), "paracell", "nested", "--max-events", "50000"
        )
    )
    assert len(slices) <= 50000


def test_merge_windows_exact_small_case() -> None:
    # native 10, syscall 3, native 5, syscall 2 | native 40 with 20 ns windows.
    start = np.array([0, 10, 13, 18, 20], dtype=np.int64)
    dur = np.array([10, 3, 5, 2, 40], dtype=np.int64)
    cls = np.array([0, 1, 0, 1, 0], dtype=np.int64)
    starts, durs, classes, nr_merged, _ = merge_windows(start, dur, cls, 20, 0)
    assert starts.tolist() == [0, 15, 20]
    assert durs.tolist() == [15, 5, 40]
    assert classes.tolist() == [0, 1, 0]
    assert nr_merged.tolist() == [2, 2, 1]


def test_export_unknown_runtime_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.json"
    status = main(
        ["export", str(_shipped("redis")), "--runtime", "xen", "-o", str(out)]
    )
    assert status == 2
    assert "xen" in capsys.readouterr().err
    assert not out.exists()


def test_max_events_is_exact_bound(tmp_path: Path) -> None:
    trace_path = _shipped("redis")
    timeline = latency.timeline(
        load_trace(trace_path), default_costs(), "pvm", "bare-metal"
    )
    nr_classes = min_slices(timeline)
    assert nr_classes > 1
    for max_events in (nr_classes, nr_classes + 1, 50, 1000):
        slices = _check_schema(
            _export(
                tmp_path,
                trace_path,
                "pvm",
                "bare-metal",
                "--max-events",
                str(max_events),
            )
        )
        assert len(slices) <= max_events, max_events
    assert len(slices) > 500


def test_max_events_below_class_count_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_path = _shipped("redis")
    timeline = latency.timeline(
        load_trace(trace_path), default_costs(), "pvm", "bare-metal"
    )
    nr_classes = min_slices(timeline)
    out = tmp_path / "x.json"
    argv = ["export", str(trace_path), "--runtime", "pvm", "-o", str(out)]
    assert main([*argv, "--max-events", str(nr_classes - 1)]) == 2
    err = capsys.readouterr().err
    assert f"the timeline has {nr_classes} event classes" in err
    assert f"give --max-events {nr_classes} or more" in err
    assert not out.exists()
    # A window too narrow for the bound is rejected rather than overrun.
    assert main([*argv, "--max-events", "1000", "--window-us", "1"]) == 2
    err = capsys.readouterr().err
    assert "more than the maximum of 1,000" in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_prepare_slices_rejects_too_few(tmp_path: Path) -> None:
    timeline = latency.timeline(
        load_trace(_shipped("redis")), default_costs(), "pvm", "bare-metal"
    )
    with pytest.raises(ParacellError, match="merging keeps one slice per event class"):
        prepare_slices(timeline, max_events=1)


def test_export_output_path_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", str(_shipped("redis")), "--runtime", "pvm", "-o"]
    assert main([*argv, str(tmp_path / "missing" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert f"directory {tmp_path / 'missing'} does not exist" in err
    assert main([*argv, str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
