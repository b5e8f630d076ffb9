"""HTML report: content, self-containment, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from paracell.cli import main
from paracell.costs import default_costs
from paracell.reports.browser import Chromium, find_chromium
from paracell.reports.html import (
    evaluate_trace,
    plot_names,
    render_report,
    write_report,
)
from paracell.trace import load_trace, shipped_trace_paths

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _PageScan(HTMLParser):
    """Collect the tags that could reach outside the page, and every image."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            target = values.get(key, "")
            if target and not target.startswith(("data:", "#")):
                self.external.append(f"<{tag} {key}={target[:80]}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the report of the shipped traces through the CLI once for all tests."""
    from paracell.models import memory

    out = tmp_path_factory.mktemp("report")
    empty_store = tmp_path_factory.mktemp("results")
    assert main(["report", "--out", str(out), "--results", str(empty_store)]) == 0
    # Every shipped trace has allocator events, so each gets every plot, in
    # page order: the policies' footprints, the savings matrix, the latency.
    per_trace = [f"footprint-{policy}" for policy in memory.ALL] + [
        "savings",
        "latency",
    ]
    expected = per_trace * len(shipped_trace_paths())
    return {"path": out / "index.html", "expected_plots": expected}


def test_report_is_self_contained(report: dict[str, Any]) -> None:
    page = report["path"].read_text()
    scan = _PageScan()
    scan.feed(page)
    assert scan.external == []
    assert scan.scripts == 0
    assert "@import" not in page
    assert "url(" not in page
    assert len(scan.images) == len(report["expected_plots"])
    for image in scan.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        width, height = _png_size(base64.b64decode(image["src"][len(prefix) :]))
        assert width > 100
        assert height > 100


def test_report_states_modelled_and_claims(report: dict[str, Any]) -> None:
    scan = _PageScan()
    scan.feed(report["path"].read_text())
    text = " ".join(scan.text)
    assert "These numbers are modelled, not measured." in text
    assert "Measured:" in text
    for claim in (
        "up to 57 %",
        "up to 79 %",
        "up to 33 %",
        "up to 88 %",
        "up to 35.6 %",
    ):
        assert claim in text
    assert "under 0.4 % on average" in text
    for trace in shipped_trace_paths():
        assert load_trace(trace).name in text
    assert "estimate" in text
    assert "PVM23" in text


def test_report_every_policy_plotted(report: dict[str, Any]) -> None:
    from paracell.models import memory

    scan = _PageScan()
    scan.feed(report["path"].read_text())
    plotted = [image["data-plot"] for image in scan.images]
    assert plotted == report["expected_plots"]
    for policy in memory.ALL:
        assert plotted.count(f"footprint-{policy}") == len(shipped_trace_paths())
    assert plotted.count("latency") == len(shipped_trace_paths())
    assert plotted.count("savings") == len(shipped_trace_paths())


def test_report_trace_without_allocator_events(tmp_path: Path) -> None:
    from paracell.trace.builder import TraceBuilder

    builder = TraceBuilder(name="syscalls-only")
    for i in range(50):
        builder.syscall(ts_ns=1_000 * (i + 1), nr=39, duration_ns=200)
    trace = builder.write(tmp_path / "trace")
    section = evaluate_trace(trace, default_costs())
    page = render_report([section], default_costs())
    assert "Memory model not run" in page
    assert plot_names([section]) == ["latency"]
    path = write_report(tmp_path / "out", page)
    assert path.read_text() == page


def test_report_shows_stored_live_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    redis = next(p for p in shipped_trace_paths() if p.name == "redis")
    results = tmp_path / "results"
    live = [sys.executable, "-m", "paracell", "live", str(redis), "--policy", "pager"]
    subprocess.run(
        [*live, "--json", "--save", "--results", str(results)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "out"
    assert (
        main(["report", str(redis), "--out", str(out), "--results", str(results)]) == 0
    )
    scan = _PageScan()
    scan.feed((out / "index.html").read_text())
    text = " ".join(scan.text)
    assert "Measured on real memory" in text
    assert "are shown as measured (1 here)" in text
    assert "measured mean MiB" in text


def test_report_bad_trace_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "trace not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "index.html").exists()


def test_report_damaged_trace_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import pyarrow.parquet as pq

    from paracell.trace import shipped_trace_paths

    damaged = tmp_path / "damaged"
    redis = next(p for p in shipped_trace_paths() if p.name == "redis")
    shutil.copytree(redis, damaged)
    table = pq.read_table(damaged / "mm_page_alloc.parquet")
    pq.write_table(table.drop(["migratetype"]), damaged / "mm_page_alloc.parquet")
    status = main(["report", str(damaged), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "column 'migratetype'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# Every image must be decoded with a non-zero natural size, and the page must
# have its title and notice; the expression returns what it found.
_PAGE_CHECK = """
(() => {
  const images = Array.from(document.images);
  return {
    title: document.title,
    notice: !!document.querySelector('.notice'),
    plots: images.map(i => i.dataset.plot),
    broken: images
      .filter(i => !i.complete || i.naturalWidth === 0 || i.naturalHeight === 0)
      .map(i => i.dataset.plot),
    sizes: images.map(i => [i.naturalWidth, i.naturalHeight]),
  };
})()
"""


@pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (scripts/run-tests installs Debian's chromium)",
)
def test_report_renders_in_chromium(report: dict[str, Any], tmp_path: Path) -> None:
    with Chromium(tmp_path / "profile") as browser:
        page = browser.load(report["path"].as_uri())
        found = browser.evaluate(_PAGE_CHECK)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report.png"
        width, height = browser.screenshot(shot)
        version = browser.version
    assert page.errors() == []
    assert found["title"].startswith("ParaCell report")
    assert found["notice"]
    assert found["plots"] == report["expected_plots"]
    assert found["broken"] == []
    assert all(w > 0 and h > 0 for w, h in found["sizes"])
    shot_width, shot_height = _png_size(shot.read_bytes())
    assert shot_width == width
    assert shot_height == height
    assert height > 2000, "the full page, not only the first screen, is captured"
    (ARTIFACTS / "chromium-version.txt").write_text(version + "\n")


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")
def test_chromium_reports_console_errors(tmp_path: Path) -> None:
    # The harness must see errors, or a clean report proves nothing.
    page_path = tmp_path / "bad.html"
    page_path.write_text(
        "<html><body><script>console.error('boom from test');"
        "undefinedFunction();</script></body></html>"
    )
    with Chromium(tmp_path / "profile") as browser:
        errors = browser.load(page_path.as_uri()).errors()
    assert any("boom from test" in line for line in errors)
    assert any("undefinedFunction" in line for line in errors)


def test_report_output_path_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = str(shipped_trace_paths()[0])
    taken = tmp_path / "taken"
    taken.write_text("not a directory\n")
    assert main(["report", trace, "--out", str(taken)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert main(["report", trace, "--out", str(taken / "sub")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert taken.read_text() == "not a directory\n"


def test_report_readonly_directory_exit_2(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    locked = tmp_path / "locked"
    locked.mkdir()
    command = [
        sys.executable,
        "-m",
        "paracell",
        "report",
        str(shipped_trace_paths()[0]),
        "--out",
        str(locked / "report"),
    ]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's write override")
        command = ["setpriv", "--bounding-set=-dac_override", *command]
    locked.chmod(0o555)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2
    assert f"no permission to write in {locked}" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(locked.iterdir()) == []
