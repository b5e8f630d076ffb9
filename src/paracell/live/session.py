"""``run_live``: one policy's op stream on real memory, beside the model's prediction.

The memory model replays the trace through the policy and returns its op
stream and metrics. The live replay executes that same stream on a region
of real anonymous memory and measures what the kernel does. Nothing is
mapped before the memory budget check passes, and every region is unmapped
before ``run_live`` returns or raises.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paracell.costs import CostTable
from paracell.errors import LiveError
from paracell.live import kernel
from paracell.live.region import GuestRegion, signals_raise
from paracell.live.stream import (
    LiveLimits,
    LiveOptions,
    StreamMeasurement,
    execute_stream,
    stream_page_range,
    stream_uses_huge_pages,
)
from paracell.models.memory import POLICIES, AllocatorEvents, CostModel, PolicyRun
from paracell.models.memory import ops as opcodes
from paracell.models.memory.replay import ReplayConfig
from paracell.trace import Trace

log = logging.getLogger("paracell.live")

_MIB = 1 << 20

# Policies whose real systems back guest memory with 2 MiB host pages.
HUGE_PAGE_POLICIES = frozenset({"thp", "hyperalloc"})

# Default --max-rss as a share of MemAvailable when the run starts.
DEFAULT_RSS_FRACTION = 0.5
# MemAvailable that must stay free for the rest of the machine.
SAFETY_MARGIN_BYTES = 512 * _MIB
# Margin added to the model's peak footprint for the replay's buffers and
# Python heap. With agent-build and the Pager the process grew by 26 MiB
# beyond the region. Page tables are added apart: 8 bytes per resident
# 4 KiB page is 1/512, rounded up to 1/256 for the upper levels.
FIXED_MARGIN_BYTES = 64 * _MIB
PAGE_TABLE_SHARE = 1 / 256
# Share of resident memory below which a 2 MiB policy's run is reported as
# not backed by huge pages.
HUGE_PAGE_SHARE_MIN = 0.9

# Cost parameter that predicts each measured timing class, and the unit it counts.
_PREDICTIONS = {
    "touch_fault": ("memory.first_touch_bound", "page"),
    "bind": ("memory.populate_write_per_page", "page"),
    "unbind": ("memory.dontneed_per_page", "page"),
    "fault_2m": ("memory.thp_fault", "operation"),
    "install_2m": ("memory.hyperalloc.install", "frame"),
    "reclaim_2m": ("memory.hyperalloc.reclaim", "frame"),
}


@dataclass(frozen=True)
class MemoryBudget:
    """The memory a live run expects to need, and what it may use."""

    model_peak_bytes: int
    margin_bytes: int
    max_rss_bytes: int
    mem_available_bytes: int
    safety_margin_bytes: int
    # Resident memory of this process before the region is mapped: code,
    # libraries and the model's data. Already in use, so not counted.
    process_rss_bytes: int = 0

    @property
    def needed_bytes(self) -> int:
        """Memory the replay adds to the process: region, page tables, buffers."""
        return self.model_peak_bytes + self.margin_bytes

    def check(self, run_name: str) -> None:
        """Raise LiveError if the run does not fit --max-rss or MemAvailable."""
        need = self.needed_bytes
        detail = (
            f"{run_name} needs about {_ceil_mib(need)} MiB more memory (the model's "
            f"peak footprint of {_ceil_mib(self.model_peak_bytes)} MiB for the region "
            f"plus {_ceil_mib(self.margin_bytes)} MiB for page tables and buffers; "
            f"the {_ceil_mib(self.process_rss_bytes)} MiB this process already uses "
            "are not counted)"
        )
        if need > self.max_rss_bytes:
            raise LiveError(
                f"{detail}, more than --max-rss allows "
                f"({_max_rss_text(self.max_rss_bytes)}); nothing was mapped",
                hint=f"use --max-rss {_round_mib(need)}MiB or more",
            )
        room = self.mem_available_bytes - self.safety_margin_bytes
        if need > room:
            raise LiveError(
                f"{detail}, but MemAvailable is "
                f"{self.mem_available_bytes / _MIB:.0f} MiB and "
                f"{self.safety_margin_bytes / _MIB:.0f} MiB must stay free; "
                "nothing was mapped"
            )

    def to_dict(self) -> dict[str, int]:
        return {
            "model_peak_bytes": self.model_peak_bytes,
            "margin_bytes": self.margin_bytes,
            "needed_bytes": self.needed_bytes,
            "max_rss_bytes": self.max_rss_bytes,
            "mem_available_bytes": self.mem_available_bytes,
            "safety_margin_bytes": self.safety_margin_bytes,
            "process_rss_bytes": self.process_rss_bytes,
        }


def _max_rss_text(nbytes: int) -> str:
    # A limit below 1 MiB would read as "0 MiB"; give it in bytes.
    return f"{nbytes} bytes" if nbytes < _MIB else f"{nbytes / _MIB:.0f} MiB"


def _ceil_mib(nbytes: int) -> int:
    return -(-nbytes // _MIB)


def _round_mib(nbytes: int) -> int:
    return -(-nbytes // (64 * _MIB)) * 64


def plan_budget(
    model_peak_bytes: int, region_pages: int, max_rss_bytes: int | None
) -> MemoryBudget:
    """Return the budget of a run; ``max_rss_bytes`` None means half of MemAvailable."""
    available = kernel.mem_available_bytes()
    # Two bytes per region page: the executor's residency bitmap and mincore vector.
    margin = (
        FIXED_MARGIN_BYTES + 2 * region_pages + int(model_peak_bytes * PAGE_TABLE_SHARE)
    )
    limit = (
        max_rss_bytes
        if max_rss_bytes is not None
        else int(available * DEFAULT_RSS_FRACTION)
    )
    return MemoryBudget(
        model_peak_bytes=model_peak_bytes,
        margin_bytes=margin,
        max_rss_bytes=limit,
        mem_available_bytes=available,
        safety_margin_bytes=SAFETY_MARGIN_BYTES,
        process_rss_bytes=kernel.process_rss_bytes(),
    )


@dataclass
class FaultOffset:
    """Faults of dry runs: the replay machinery without the operations' effects."""

    trap_before: int | None
    trap_after: int | None
    rusage_before: int
    rusage_after: int

    @property
    def trap(self) -> int | None:
        if self.trap_before is None or self.trap_after is None:
            return None
        return round((self.trap_before + self.trap_after) / 2)

    @property
    def rusage(self) -> int:
        return round((self.rusage_before + self.rusage_after) / 2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "minor_faults": self.trap,
            "minor_faults_dry_before": self.trap_before,
            "minor_faults_dry_after": self.trap_after,
            "minor_faults_rusage": self.rusage,
            "minor_faults_rusage_dry_before": self.rusage_before,
            "minor_faults_rusage_dry_after": self.rusage_after,
        }


@dataclass
class LiveReport:
    """A live run of one policy on one trace, with the model's prediction beside it."""

    trace_name: str
    policy: str
    placement: str
    measured: StreamMeasurement
    offset: FaultOffset | None
    model: PolicyRun
    costs: CostTable
    budget: MemoryBudget
    region_first_pfn: int
    thp_mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def model_expected_trap_faults(self) -> int:
        """Hardware faults the stream implies: 4 KiB secondary and 2 MiB faults."""
        metrics = self.model.metrics
        faults = int(metrics["secondary_faults"])  # type: ignore[call-overload]
        return faults + int(metrics["faults_2m"])  # type: ignore[call-overload]

    @property
    def corrected_trap_faults(self) -> int | None:
        trap = self.measured.trap_faults
        if trap is None:
            return None
        offset = self.offset.trap if self.offset else 0
        return trap - (offset or 0)

    def model_sampled_bytes(self) -> np.ndarray:
        """Return the model's footprint at the live run's sample times."""
        timeline = self.model.timeline
        assert timeline is not None
        index = (
            np.searchsorted(timeline.ts_ns, self.measured.sample_ts_ns, side="right")
            - 1
        )
        index = np.clip(index, 0, timeline.ts_ns.size - 1)
        return np.asarray(timeline.bound_bytes)[index]

    def huge_page_share(self) -> float | None:
        """Return AnonHugePages / resident at the fullest sample of a 2 MiB region."""
        m = self.measured
        if not m.huge or m.sample_resident_bytes.size == 0:
            return None
        fullest = int(np.argmax(m.sample_resident_bytes))
        resident = int(m.sample_resident_bytes[fullest])
        if resident == 0:
            return None
        return float(m.sample_anon_huge_bytes[fullest]) / resident

    def relative_difference(self) -> dict[str, float | int | None]:
        """Return (measured - modelled) / modelled for each compared quantity."""
        metrics = self.model.metrics
        m = self.measured
        sampled_model = float(self.model_sampled_bytes().mean())
        corrected = self.corrected_trap_faults
        expected = self.model_expected_trap_faults
        return {
            "mean_footprint": _relative(
                m.mean_resident_bytes, metrics["mean_footprint_bytes"]
            ),
            "peak_footprint": _relative(
                m.peak_resident_bytes, metrics["peak_footprint_bytes"]
            ),
            "sampled_mean_footprint": _relative(
                m.sampled_mean_resident_bytes, sampled_model
            ),
            "minor_faults": _relative(corrected, expected)
            if corrected is not None
            else None,
            "minor_faults_absolute": (corrected - expected)
            if corrected is not None
            else None,
        }

    def timing_comparison(self) -> dict[str, dict[str, Any]]:
        """Return the measured time per page or frame beside the cost table's value."""
        out: dict[str, dict[str, Any]] = {}
        for name, timing in self.measured.timing.items():
            if timing.ops == 0:
                continue
            entry: dict[str, Any] = {"measured": timing.to_dict()}
            if name == "touch_fault" and timing.missing_pages:
                entry["measured"]["ns_per_faulted_page"] = (
                    timing.ns / timing.missing_pages
                )
            prediction = _PREDICTIONS.get(name)
            if prediction is not None:
                param, unit = prediction
                value = self.costs.get(param)
                measured = _measured_per(timing, unit)
                entry["model"] = {
                    "parameter": param,
                    "ns_per_" + unit: value,
                    "source": self.costs.param(param).source,
                }
                entry["relative_difference"] = _relative(measured, value)
            out[name] = entry
        return out

    def to_dict(self, timeline: bool = True) -> dict[str, Any]:
        metrics = self.model.metrics
        measured = self.measured.to_dict(timeline=timeline)
        measured["fault_offset"] = self.offset.to_dict() if self.offset else None
        measured["minor_faults_corrected"] = self.corrected_trap_faults
        measured["huge_page_share_at_peak"] = self.huge_page_share()
        model: dict[str, Any] = {
            "mean_footprint_bytes": metrics["mean_footprint_bytes"],
            "peak_footprint_bytes": metrics["peak_footprint_bytes"],
            "sampled_mean_footprint_bytes": float(self.model_sampled_bytes().mean()),
            "secondary_faults": metrics["secondary_faults"],
            "faults_2m": metrics["faults_2m"],
            "expected_minor_faults": self.model_expected_trap_faults,
            "pages_bound": metrics["pages_bound"],
            "pages_unbound": metrics["pages_unbound"],
            "operations": metrics["operations"],
            "guest_bytes": metrics["guest_bytes"],
            "modelled": True,
        }
        if timeline:
            # At the live samples' times, not at every operation: the full
            # modelled timeline has a point per operation (hundreds of thousands).
            model["timeline"] = {
                "ts_ns": self.measured.sample_ts_ns,
                "bound_bytes": self.model_sampled_bytes(),
            }
        return {
            "trace": self.trace_name,
            "policy": self.policy,
            "placement": self.placement,
            "duration_ns": self.measured.end_ts_ns - self.measured.start_ts_ns,
            "measured": measured,
            "model": model,
            "relative_difference": self.relative_difference(),
            "time_per_page": self.timing_comparison(),
            "budget": self.budget.to_dict(),
            "host": {
                "kernel_release": platform.release(),
                "thp_enabled": self.thp_mode,
                "region_first_pfn": self.region_first_pfn,
            },
            "notes": self.notes + self.measured.notes,
        }


def _relative(measured: float | int | None, modelled: object) -> float | None:
    if measured is None:
        return None
    reference = float(modelled)  # type: ignore[arg-type]
    if reference == 0:
        return 0.0 if measured == 0 else None
    return (float(measured) - reference) / reference


def _measured_per(timing: Any, unit: str) -> float | None:
    if unit == "operation":
        return timing.ns_per_op
    if unit == "frame":
        frames = timing.pages / opcodes.HUGE_PAGES
        return timing.ns / frames if frames else None
    return timing.ns_per_page


def warm_up() -> None:
    """Compile the executor's loops on a small stream, outside any measurement."""
    rows = [
        (0, opcodes.TOUCH, 0, 2),
        (1, opcodes.BIND, 2, 2),
        (2, opcodes.UNBIND, 0, 4),
        (3, opcodes.FAULT_2M, 0, opcodes.HUGE_PAGES),
        (4, opcodes.FREE, 0, 1),
        (5, opcodes.CALL, 0, 1),
    ]
    stream = opcodes.OpStream(
        ts_ns=np.array([r[0] for r in rows], dtype=np.int64),
        op=np.array([r[1] for r in rows], dtype=np.uint8),
        pfn=np.array([r[2] for r in rows], dtype=np.int64),
        nr_pages=np.array([r[3] for r in rows], dtype=np.int64),
        arg=np.zeros(len(rows), dtype=np.int32),
        nr_guest_pages=opcodes.HUGE_PAGES,
    )
    limits = LiveLimits(max_rss_bytes=64 * _MIB, min_available_bytes=0)
    for dry in (True, False):
        with GuestRegion(opcodes.HUGE_PAGES) as region:
            execute_stream(
                stream, 0, 6, region, limits, LiveOptions(sample_ns=2), dry=dry
            )


def model_run(
    trace: Trace | AllocatorEvents,
    policy: str,
    costs: CostTable,
    placement: str | None = None,
    guest_ram_bytes: int | None = None,
) -> PolicyRun:
    """Run the memory model for one policy and return its op stream and metrics."""
    if policy not in POLICIES:
        raise LiveError(
            f"unknown memory policy {policy!r}; choose from {', '.join(POLICIES)}"
        )
    events = (
        trace
        if isinstance(trace, AllocatorEvents)
        else AllocatorEvents.from_trace(trace)
    )
    config = ReplayConfig.from_costs(costs, guest_ram_bytes=guest_ram_bytes)
    return (
        POLICIES[policy]
        .run(events, config, placement)
        .compute(CostModel.from_costs(costs))
    )


RegionHook = Callable[[GuestRegion, str], None]


def run_live(
    trace: Trace | AllocatorEvents,
    policy: str,
    costs: CostTable,
    placement: str | None = None,
    options: LiveOptions | None = None,
    max_rss_bytes: int | None = None,
    guest_ram_bytes: int | None = None,
    measure_offset: bool = True,
    on_region: RegionHook | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LiveReport:
    """Run ``policy``'s op stream for ``trace`` on real memory, beside the model.

    Raises LiveError before mapping anything when the model's peak plus the
    margin exceeds ``max_rss_bytes`` (default: half of MemAvailable) or
    MemAvailable minus the safety margin. ``on_region(region, phase)`` is
    called after each region is mapped, with phase ``dry-before``,
    ``replay`` or ``dry-after``.
    """
    options = options or LiveOptions()
    run = model_run(trace, policy, costs, placement, guest_ram_bytes)
    stream = run.ops
    first_pfn, end_pfn = stream_page_range(stream)
    region_pages = end_pfn - first_pfn
    huge = policy in HUGE_PAGE_POLICIES or stream_uses_huge_pages(stream)
    peak_bytes = int(run.metrics["peak_footprint_bytes"])  # type: ignore[call-overload]
    budget = plan_budget(peak_bytes, region_pages, max_rss_bytes)
    budget.check(f"trace {run.events.name!r} with policy {policy}")
    kernel.check_populate_write()
    thp_mode = kernel.thp_enabled_mode()
    notes: list[str] = []
    if huge and thp_mode not in ("always", "madvise"):
        notes.append(
            f"transparent huge pages are {thp_mode!r} on this host, so the 2 MiB "
            f"policy {policy} ran on 4 KiB pages"
        )
    limits = LiveLimits(
        max_rss_bytes=budget.max_rss_bytes,
        min_available_bytes=budget.safety_margin_bytes,
    )
    start_ts, end_ts = run.events.start_ts_ns, run.events.end_ts_ns

    # Dry runs are not paced: sleeping takes no page fault, and pacing would
    # triple the wall time of a --speed run.
    dry_options = dataclasses.replace(options, speed=None)

    def execute(phase: str, dry: bool) -> StreamMeasurement:
        with GuestRegion(region_pages, first_pfn=first_pfn, huge=huge) as region:
            log.info(
                "%s run of %s: %d operations on the region at %#x",
                phase,
                policy,
                len(stream),
                region.addr,
            )
            if on_region is not None:
                on_region(region, phase)
            return execute_stream(
                stream,
                start_ts,
                end_ts,
                region,
                limits,
                dry_options if dry else options,
                dry=dry,
                on_progress=on_progress if not dry else None,
            )

    with signals_raise():
        warm_up()
        before = execute("dry-before", True) if measure_offset else None
        measured = execute("replay", False)
        after = execute("dry-after", True) if measure_offset else None
    offset = None
    if before is not None and after is not None:
        offset = FaultOffset(
            trap_before=before.trap_faults,
            trap_after=after.trap_faults,
            rusage_before=before.rusage_faults,
            rusage_after=after.rusage_faults,
        )
    report = LiveReport(
        trace_name=run.events.name,
        policy=policy,
        placement=run.placement,
        measured=measured,
        offset=offset,
        model=run,
        costs=costs,
        budget=budget,
        region_first_pfn=first_pfn,
        thp_mode=thp_mode,
        notes=notes,
    )
    share = report.huge_page_share()
    if share is not None and share < HUGE_PAGE_SHARE_MIN:
        notes.append(
            f"only {share:.0%} of the resident memory at the peak was backed by "
            f"2 MiB pages (AnonHugePages in /proc/self/smaps); the kernel did not "
            "provide huge pages for the rest"
        )
    log.info(
        "%s on %s: measured mean %.1f MiB, model %.1f MiB",
        policy,
        run.events.name,
        measured.mean_resident_bytes / _MIB,
        float(run.metrics["mean_footprint_bytes"]) / _MIB,  # type: ignore[arg-type]
    )
    return report


__all__ = [
    "DEFAULT_RSS_FRACTION",
    "HUGE_PAGE_POLICIES",
    "SAFETY_MARGIN_BYTES",
    "LiveReport",
    "MemoryBudget",
    "model_run",
    "plan_budget",
    "run_live",
    "warm_up",
]
