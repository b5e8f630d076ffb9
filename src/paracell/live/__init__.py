"""The live replay: memory policies run on real host memory, and host calibration.

>>> from paracell.costs import default_costs
>>> from paracell.live import run_live
>>> report = run_live(trace, "pager", default_costs())    # doctest: +SKIP
>>> report.to_dict()["relative_difference"]["mean_footprint"]  # doctest: +SKIP

A private anonymous region serves as guest RAM. The op stream that the
memory model computes for a policy (``paracell.models.memory.ops``) is
executed on it: first touches fault for real, binds are
MADV_POPULATE_WRITE, unbinds MADV_DONTNEED. Resident memory, faults and time
are measured from the kernel; the model's numbers stand beside them.
"""

from paracell.live.calibrate import Calibration, Measurement, calibrate
from paracell.live.region import GuestRegion, LiveTerminated, open_region_count
from paracell.live.session import LiveReport, MemoryBudget, model_run, run_live
from paracell.live.stream import (
    LiveLimits,
    LiveOptions,
    StreamMeasurement,
    execute_stream,
)

__all__ = [
    "Calibration",
    "GuestRegion",
    "LiveLimits",
    "LiveOptions",
    "LiveReport",
    "LiveTerminated",
    "Measurement",
    "MemoryBudget",
    "StreamMeasurement",
    "calibrate",
    "execute_stream",
    "model_run",
    "open_region_count",
    "run_live",
]
