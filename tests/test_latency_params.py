"""The latency cost table: completeness, ranges and the arithmetic of derived values."""

from __future__ import annotations

import pytest

from paracell.costs import DEPLOYMENTS, SOURCES, default_costs
from paracell.costs.latency_params import LATENCY_PARAMS
from paracell.models.latency.paths import PATHS, parameters_used

COSTS = default_costs()
PREFIXES = ("cpu.", "host.", "runv.", "pvm.", "paracell.", "io.", "guest.")


def us(name: str, deployment: str) -> float:
    return COSTS.get(name, deployment) / 1e3


def test_every_path_parameter_exists_on_both_deployments():
    for name in parameters_used():
        for deployment in DEPLOYMENTS:
            param = COSTS.param(name, deployment)
            assert param.value >= 0, name


# Parameters the latency paths share with the memory model, which owns them.
SHARED_WITH_MEMORY = {"memory.populate_write_per_page"}


def test_every_latency_parameter_is_used():
    assert {p.name for p in LATENCY_PARAMS} | SHARED_WITH_MEMORY == parameters_used()


def test_split_parameters_cover_both_deployments():
    split = {p.name for p in LATENCY_PARAMS if p.deployment != "any"}
    for name in split:
        deployments = {p.deployment for p in LATENCY_PARAMS if p.name == name}
        assert deployments == set(DEPLOYMENTS), name


@pytest.mark.parametrize(
    "param", LATENCY_PARAMS, ids=lambda p: f"{p.name}@{p.deployment}"
)
def test_parameter_is_documented(param):
    assert param.name.startswith(PREFIXES)
    assert param.source in SOURCES
    assert len(param.description) > 20
    if param.is_estimate:
        assert param.low is not None and param.high is not None
        assert param.low <= param.value <= param.high
        assert len(param.reasoning) > 40


def test_gate_ranges_span_the_mpk_measurements():
    # UB20's 109-cycle and ISO20's 45-cycle MPK round trips bound entry + exit.
    entry = COSTS.param("paracell.gate_entry_cycles")
    exit_ = COSTS.param("paracell.gate_exit_cycles")
    assert entry.low + exit_.low == 50
    assert entry.high + exit_.high == 110
    assert 50 <= entry.value + exit_.value <= 110


@pytest.mark.parametrize(
    ("deployment", "port_io_hvm", "port_io_pvm"),
    [("bare-metal", 3.79, 4.91), ("nested", 29.34, 12.94)],
)
def test_notification_paths_add_up_to_port_io(deployment, port_io_hvm, port_io_pvm):
    # PVM23 Table 1 measures the whole port-I/O exit; the model splits it.
    runv = us("runv.exit", deployment) + us("runv.notify_device", deployment)
    pvm = us("pvm.hypercall", deployment) + us("pvm.notify_device", deployment)
    assert runv == pytest.approx(port_io_hvm)
    assert pvm == pytest.approx(port_io_pvm)


@pytest.mark.parametrize(
    ("deployment", "fork", "exec_"),
    [("bare-metal", 437, 1290), ("nested", 466, 1330)],
)
def test_shadow_work_adds_up_to_lmbench(deployment, fork, exec_):
    # PVM23 Table 3 against kvm-ept on bare metal (82 us fork, 422 us exec);
    # lmbench's fork includes the child's exit and its exec includes a fork.
    fork_extra = us("pvm.fork_shadow", deployment) + us(
        "pvm.exit_group_shadow", deployment
    )
    assert fork_extra == pytest.approx(fork - 82)
    assert fork_extra + us("pvm.exec_shadow", deployment) == pytest.approx(exec_ - 422)


def test_nested_runv_matches_lmbench():
    fork_extra = us("runv.fork_extra", "nested") + us("runv.exit_group_extra", "nested")
    assert fork_extra == pytest.approx(113 - 82)
    assert fork_extra + us("runv.exec_extra", "nested") == pytest.approx(726 - 422)


@pytest.mark.parametrize(
    ("deployment", "getpid"), [("bare-metal", 0.29), ("nested", 0.30)]
)
def test_switcher_adds_up_to_getpid(deployment, getpid):
    # getpid in an EPT guest with KPTI off takes 0.06 us (PVM23 Table 2).
    assert 0.06 + us("pvm.switcher_roundtrip", deployment) == pytest.approx(getpid)


def test_runc_has_no_path():
    assert PATHS["runc"] == {}
