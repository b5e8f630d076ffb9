"""ParaCell: what secure-container designs cost on a real workload.

The package captures traces of real programs (:mod:`paracell.capture`),
stores them in a validated Parquet format (:mod:`paracell.trace`), replays
them through latency and memory models of runc, RunV, PVM and ParaCell
(:mod:`paracell.models`), runs the memory replay on real host memory
(:mod:`paracell.live`), models XGate isolation (:mod:`paracell.isolation`)
and renders reports (:mod:`paracell.reports`).
"""

__version__ = "0.1.0"
