"""The memory policies as objects: what the model and the live replay both run.

``POLICIES[name].run(events, config)`` replays a trace's allocator events on
the policy's placement and returns a :class:`PolicyRun` with the op stream.
The memory model computes its metrics from that stream; ``paracell live``
executes the same stream on real memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paracell.errors import ModelError
from paracell.models.memory.events import AllocatorEvents
from paracell.models.memory.kstate import POLICY_IDS
from paracell.models.memory.metrics import CostModel, Timeline, compute_metrics
from paracell.models.memory.ops import OpStream
from paracell.models.memory.replay import ReplayConfig, ReplayResult, run_replay
from paracell.models.memory.state import PLACEMENT_IDS

PLACEMENTS = tuple(PLACEMENT_IDS)


@dataclass(frozen=True)
class Policy:
    """A host memory policy and the guest allocator its real system uses."""

    name: str
    default_placement: str
    binds: str
    unbinds: str

    @property
    def policy_id(self) -> int:
        return POLICY_IDS[self.name]

    def run(
        self,
        events: AllocatorEvents,
        config: ReplayConfig,
        placement: str | None = None,
    ) -> PolicyRun:
        """Replay ``events`` and return the run with its op stream (metrics not yet computed)."""
        chosen = placement or self.default_placement
        if chosen not in PLACEMENT_IDS:
            raise ModelError(
                f"unknown placement {chosen!r}; choose one of {', '.join(PLACEMENTS)}"
            )
        result = run_replay(self.policy_id, PLACEMENT_IDS[chosen], events, config)
        return PolicyRun(policy=self.name, placement=chosen, events=events, replay=result)


@dataclass
class PolicyRun:
    """One policy replayed on one placement: the op stream, and metrics once computed."""

    policy: str
    placement: str
    events: AllocatorEvents
    replay: ReplayResult
    metrics: dict[str, object] = field(default_factory=dict)
    timeline: Timeline | None = None

    @property
    def ops(self) -> OpStream:
        return self.replay.ops

    def compute(self, costs: CostModel) -> PolicyRun:
        """Compute the metrics and footprint timeline from the op stream; return self."""
        metrics, timeline = compute_metrics(
            self.ops, self.events.start_ts_ns, self.events.end_ts_ns, costs
        )
        metrics["placement"] = self.placement
        metrics["guest_bytes"] = self.replay.nr_guest_pages * 4096
        metrics["vcpus"] = self.replay.nr_vcpus
        metrics["ignored_free_pages"] = self.replay.ignored_free_pages
        metrics["double_alloc_pages"] = self.replay.double_alloc_pages
        metrics["operations"] = len(self.ops)
        self.metrics = metrics
        self.timeline = timeline
        return self


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in [
        Policy("static", "buddy", "4 KiB on first touch (secondary fault)", "never"),
        Policy("thp", "buddy", "whole 2 MiB frame on first touch", "never"),
        Policy(
            "fpr",
            "buddy",
            "4 KiB on first touch",
            "free buddy blocks of order >= 9, reported every 2 s",
        ),
        Policy(
            "balloon",
            "buddy",
            "4 KiB on first touch",
            "balloon inflated to RAM - (allocated + headroom) at a limited rate",
        ),
        Policy(
            "damon",
            "buddy",
            "4 KiB on first touch",
            "host pages out regions not accessed for min_age",
        ),
        Policy(
            "hyperalloc",
            "llfree",
            "whole 2 MiB frame installed on use",
            "entirely free 2 MiB frames, every 5 s",
        ),
        Policy(
            "pager",
            "buddy",
            "ahead of use at the allocator hook, in batches",
            "freed pages in batches after a batch size or delay, keeping a reserve",
        ),
    ]
}

ALL_POLICIES = tuple(POLICIES)
