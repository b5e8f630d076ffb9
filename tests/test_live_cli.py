"""`paracell live` from the command line: output, limits, plot and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_live_session import generated_trace

from paracell.cli import main

PARACELL = [sys.executable, "-m", "paracell"]


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory) -> Path:
    return generated_trace(tmp_path_factory.mktemp("live-cli")).path


def test_json_holds_measured_and_model(trace_path, capsys):
    status = main(
        [
            "live",
            str(trace_path),
            "--policy",
            "static",
            "--json",
            "--guest-ram",
            "512MiB",
        ]
    )
    assert status == 0
    doc = json.loads(capsys.readouterr().out)
    for key in (
        "mean_resident_bytes",
        "minor_faults",
        "minor_faults_rusage",
        "fault_offset",
        "timeline",
    ):
        assert key in doc["measured"]
    for key in ("mean_footprint_bytes", "secondary_faults", "timeline"):
        assert key in doc["model"]
    assert doc["model"]["modelled"] is True
    assert abs(doc["relative_difference"]["mean_footprint"]) <= 0.01
    assert doc["measured"]["minor_faults"] >= doc["model"]["secondary_faults"]
    assert doc["policy"] == "static"


def test_table_output_names_measured_and_modelled(trace_path, capsys):
    assert main(["live", str(trace_path), "--policy", "pager"]) == 0
    out = capsys.readouterr().out
    assert "Measured:" in out
    assert "Modelled:" in out
    assert "mean footprint" in out
    assert "bind" in out


def test_plot_written(trace_path, tmp_path, capsys):
    plot = tmp_path / "live.png"
    assert (
        main(
            ["live", str(trace_path), "--policy", "fpr", "--plot", str(plot), "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_rss_too_small_exits_2(trace_path, capsys):
    assert main(["live", str(trace_path), "--max-rss", "1MiB"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err
    assert "nothing was mapped" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-rss", "lots"], "--max-rss 'lots' is not a size"),
        (["--sample-ms", "0"], "--sample-ms 0 is invalid"),
        (["--speed", "-1"], "--speed -1 is invalid"),
    ],
)
def test_bad_options_exit_2(trace_path, capsys, args, message):
    assert main(["live", str(trace_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_sigterm_exits_143(trace_path):
    child = subprocess.Popen(
        [
            *PARACELL,
            "--log-level",
            "INFO",
            "live",
            str(trace_path),
            "--policy",
            "static",
            "--speed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stderr is not None
        lines: list[str] = []
        while not any("replay run of static" in line for line in lines):
            lines.append(child.stderr.readline())
            assert lines[-1], "".join(lines)
        os.kill(child.pid, signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, err
    assert "stopped by SIGTERM" in err
    assert "unmapped" in err
