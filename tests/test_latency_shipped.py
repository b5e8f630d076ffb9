"""The latency model on the shipped real traces, with the default parameters.

These orderings follow from the sourced parameters; they are not tuning
targets. If one fails after a parameter change, the change is what to
explain, not a value to adjust until the test passes.
"""

from __future__ import annotations

import pytest

from paracell.cli import main
from paracell.costs import default_costs
from paracell.models.latency import evaluate
from paracell.trace import load_trace
from paracell.trace.shipped import SHIPPED_DIR

TRACES = sorted(p for p in SHIPPED_DIR.glob("*") if (p / "manifest.json").is_file())
COSTS = default_costs()

pytestmark = pytest.mark.skipif(
    not TRACES, reason=f"no shipped traces under {SHIPPED_DIR} in this checkout"
)


@pytest.fixture(scope="module", params=TRACES, ids=lambda p: p.name)
def report(request):
    return evaluate(load_trace(request.param), COSTS)


def total(report, runtime, deployment):
    return report.result(runtime, deployment).total_ns


def test_nested_runv_slower_than_bare_metal(report):
    assert total(report, "runv", "nested") > total(report, "runv", "bare-metal")


@pytest.mark.parametrize("deployment", ["bare-metal", "nested"])
def test_paracell_faster_than_pvm(report, deployment):
    assert total(report, "paracell", deployment) < total(report, "pvm", deployment)


def test_paracell_faster_than_nested_runv(report):
    assert total(report, "paracell", "nested") < total(report, "runv", "nested")


def test_every_runtime_at_least_native(report):
    for by_deployment in report.results.values():
        for result in by_deployment.values():
            assert result.total_ns >= result.native_ns > 0


def test_latency_without_arguments_uses_shipped_traces(capsys):
    assert main(["latency", "--runtime", "pvm", "--deployment", "nested"]) == 0
    out = capsys.readouterr().out
    for path in TRACES:
        assert load_trace(path).name in out
