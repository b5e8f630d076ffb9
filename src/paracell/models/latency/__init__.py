"""Latency model: replay a trace through runc, RunV, PVM and ParaCell.

For every event class the model charges each runtime the steps of its path
(see :mod:`paracell.models.latency.paths`), each step a named cost parameter.
Total time is the trace's native wall time plus those overheads. The results
are modelled, not measured.

>>> from paracell.models.latency import evaluate
>>> report = evaluate(trace)                        # doctest: +SKIP
>>> report.result("pvm", "nested").relative_to_runc  # doctest: +SKIP
"""

from paracell.models.latency.events import (
    TraceEvents,
    classify,
    count_first_touches,
    first_touched_pages,
)
from paracell.models.latency.model import (
    CLAIMS,
    ClassResult,
    LatencyReport,
    Reduction,
    RuntimeResult,
    evaluate,
    evaluate_events,
)
from paracell.models.latency.paths import CLASSES, PATHS, RUNTIMES, SUBGROUPS, Step
from paracell.models.latency.sensitivity import SensitivityReport, sensitivity
from paracell.models.latency.timeline import SLICE_CLASSES, Timeline, timeline

__all__ = [
    "CLAIMS",
    "CLASSES",
    "PATHS",
    "RUNTIMES",
    "SLICE_CLASSES",
    "SUBGROUPS",
    "ClassResult",
    "LatencyReport",
    "Reduction",
    "RuntimeResult",
    "SensitivityReport",
    "Step",
    "Timeline",
    "TraceEvents",
    "classify",
    "count_first_touches",
    "evaluate",
    "evaluate_events",
    "first_touched_pages",
    "sensitivity",
    "timeline",
]
