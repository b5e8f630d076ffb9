"""Parameter sweeps: a grid of independent cells, run on a process pool or Dask.

A cell is one model evaluation: one trace, one runtime and deployment (a
latency cell) or one memory policy and placement (a memory cell), under one
point of the parameter grid. Its id is a SHA-256 over the trace's content
hash, the cell's axes, every cost value that differs from the defaults and
the tool version, so the same inputs always give the same id. Finished cells
are in the results store under that id, and a rerun skips them.

The specification format is described in docs/reports.md; an example is
examples/sweep.toml.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

from paracell import __version__
from paracell.costs.table import ANY, DEPLOYMENTS
from paracell.costs.units import convert, parse_quantity
from paracell.errors import ResultsError
from paracell.reports.store import ResultsStore, RunRecord, to_json
from paracell.tomlfile import read_toml

log = logging.getLogger("paracell.reports")

# Names of the runtimes and policies the models are specified with. A spec is
# checked before any cell runs, against the lists the model modules export
# (see _model_choices) or these when a model module is not installed.
RUNTIMES = ("runc", "runv", "pvm", "paracell")
POLICIES = ("static", "thp", "fpr", "balloon", "damon", "hyperalloc", "pager")
# "default" runs each policy on the guest allocator of its real system
# (HyperAlloc on LLFree, the others on the buddy allocator).
PLACEMENTS = ("default", "buddy", "llfree", "trace")

# Completed cells are written to the store in one transaction per batch: at
# most this many cells, or whatever finished within FLUSH_INTERVAL_S.
FLUSH_BATCH = 64
FLUSH_INTERVAL_S = 0.5


class LinearValues(Sequence[float]):
    """``num`` evenly spaced values from ``start`` to ``stop``, both included.

    Values are computed on access, because a ``range`` axis can ask for more
    values than fit in memory and the grid size is checked before any value
    is made. It compares equal to any sequence with the same values.
    """

    def __init__(self, start: float, stop: float, num: int) -> None:
        self.start = start
        self.stop = stop
        self.num = num
        self.step = 0.0 if num == 1 else (stop - start) / (num - 1)

    def __len__(self) -> int:
        return self.num

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> list[float]: ...

    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.num))]
        if index < 0:
            index += self.num
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} values")
        return self.start + index * self.step

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(other) == self.num and all(
            a == b for a, b in zip(self, other, strict=True)
        )

    def __hash__(self) -> int:
        return hash((self.start, self.stop, self.num))

    def __repr__(self) -> str:
        return f"LinearValues(start={self.start!r}, stop={self.stop!r}, num={self.num})"


@dataclass(frozen=True)
class ParamAxis:
    """One swept cost parameter: its name, the table keys it sets and its values."""

    name: str
    keys: tuple[tuple[str, str], ...]
    values: Sequence[float]


@dataclass(frozen=True)
class SweepTrace:
    """A trace of the grid, identified by its content hash."""

    path: Path
    content_hash: str
    name: str


@dataclass(frozen=True)
class Cell:
    """One independent evaluation of the grid; plain data so it pickles cheaply."""

    cell_id: str
    kind: str
    trace_path: str
    trace_hash: str
    trace_name: str
    runtime: str | None
    deployment: str | None
    policy: str | None
    placement: str | None
    profile: str | None
    # (name, deployment, value in the canonical unit) set on top of the profile.
    values: tuple[tuple[str, str, float], ...]

    def axes(self) -> dict[str, Any]:
        """Return the cell's coordinates as stored in ``params_json``."""
        document = asdict(self)
        for key in ("cell_id", "trace_path", "trace_hash", "trace_name"):
            document.pop(key)
        document["values"] = [list(v) for v in self.values]
        return {k: v for k, v in document.items() if v is not None}

    def describe(self) -> str:
        """Return a short human-readable name of the cell for messages."""
        if self.kind == "latency":
            where = f"{self.runtime}/{self.deployment}"
        else:
            where = f"{self.policy}/{self.placement}"
        point = ", ".join(f"{n}[{d}]={v:g}" for n, d, v in self.values)
        return f"{self.trace_name} {self.kind} {where}" + (
            f" ({point})" if point else ""
        )


@dataclass
class SweepSpec:
    """A parsed sweep specification with every path resolved."""

    path: Path
    name: str
    trace_paths: list[Path]
    profile: Path | None
    runtimes: list[str] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    placements: list[str] = field(default_factory=list)
    axes: list[ParamAxis] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSummary:
    """Counts of a sweep run: all cells, cells already stored, cells computed now."""

    sweep_id: str
    nr_cells: int
    nr_skipped: int
    nr_computed: int
    elapsed_s: float


def read_spec(path: Path) -> SweepSpec:
    """Parse and check a sweep specification; raise ResultsError naming the field."""
    document = read_toml(
        path,
        ResultsError,
        "sweep specification",
        "a sweep specification is a TOML file like examples/sweep.toml",
    )
    return parse_spec(document, path)


def _model_choices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return the runtimes and policies that the installed models accept."""
    runtimes: tuple[str, ...] = RUNTIMES
    policies: tuple[str, ...] = POLICIES
    try:
        from paracell.models import latency

        runtimes = tuple(latency.RUNTIMES)
    except ImportError:
        pass
    try:
        from paracell.models import memory

        policies = tuple(memory.ALL)
    except ImportError:
        pass
    return runtimes, policies


def parse_spec(document: Mapping[str, Any], path: Path) -> SweepSpec:
    """Check a specification already read from TOML; ``path`` locates relative paths."""
    allowed = {"name", "traces", "profile", "latency", "memory", "params"}
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise ResultsError(
            f"{path}: unknown field(s) {', '.join(unknown)}",
            hint=f"a sweep has {', '.join(sorted(allowed))}",
        )
    base = path.parent
    spec = SweepSpec(
        path=path,
        name=str(document.get("name") or path.stem),
        trace_paths=_trace_paths(path, document.get("traces", ["shipped"])),
        profile=None,
        document=dict(document),
    )

    profile = document.get("profile")
    if profile is not None:
        spec.profile = (base / _string(path, "profile", profile)).resolve()
        if not spec.profile.is_file():
            raise ResultsError(f"{path}: field 'profile': {spec.profile} not found")

    latency = _table(path, "latency", document.get("latency"))
    memory = _table(path, "memory", document.get("memory"))
    if latency is None and memory is None:
        raise ResultsError(
            f"{path}: neither [latency] nor [memory] is given",
            hint="add at least one of them; an empty table selects every choice",
        )

    runtimes, policies = _model_choices()
    if latency is not None:
        _reject_unknown(path, "latency", latency, {"runtimes", "deployments"})
        spec.runtimes = _choices(
            path, "latency.runtimes", latency, "runtimes", runtimes
        )
        spec.deployments = _choices(
            path, "latency.deployments", latency, "deployments", DEPLOYMENTS
        )
    if memory is not None:
        _reject_unknown(path, "memory", memory, {"policies", "placements"})
        spec.policies = _choices(path, "memory.policies", memory, "policies", policies)
        spec.placements = _choices(
            path, "memory.placements", memory, "placements", PLACEMENTS, ["default"]
        )

    spec.axes = _param_axes(path, document.get("params", []), spec.profile)
    return spec


def _trace_paths(path: Path, entries: Any) -> list[Path]:
    from paracell.trace import shipped_trace_paths

    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ResultsError(
            f"{path}: field 'traces' must be a non-empty list of trace directories",
            hint='use ["shipped"] for the traces shipped with paracell',
        )
    found: list[Path] = []
    for i, entry in enumerate(entries):
        entry = _string(path, f"traces[{i}]", entry)
        if entry == "shipped":
            found.extend(shipped_trace_paths())
            continue
        pattern = entry if os.path.isabs(entry) else str(path.parent / entry)
        matches = sorted(Path(p) for p in _glob(pattern))
        if not matches:
            raise ResultsError(
                f"{path}: field 'traces[{i}]': no trace matches {entry!r}"
            )
        found.extend(m.resolve() for m in matches)
    unique: list[Path] = []
    for p in found:
        if p not in unique:
            unique.append(p)
    return unique


def _glob(pattern: str) -> list[str]:
    import glob

    if glob.has_magic(pattern):
        return glob.glob(pattern)
    return [pattern] if os.path.exists(pattern) else []


def _string(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ResultsError(f"{path}: field {where!r}: expected a string, got {value!r}")
    return value


def _table(path: Path, where: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ResultsError(f"{path}: field {where!r} must be a table ([{where}])")
    return value


def _reject_unknown(
    path: Path, where: str, table: Mapping[str, Any], known: set[str]
) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ResultsError(
            f"{path}: [{where}]: unknown field(s) {', '.join(unknown)}",
            hint=f"[{where}] has {', '.join(sorted(known))}",
        )


def _choices(
    path: Path,
    where: str,
    table: Mapping[str, Any],
    key: str,
    known: Sequence[str],
    default: Sequence[str] | None = None,
) -> list[str]:
    if key not in table:
        return list(default if default is not None else known)
    values = table[key]
    if not isinstance(values, list) or not values:
        raise ResultsError(f"{path}: field {where!r} must be a non-empty list")
    for value in values:
        if value not in known:
            raise ResultsError(
                f"{path}: field {where!r}: unknown value {value!r}",
                hint=f"use one of {', '.join(known)}",
            )
    return list(dict.fromkeys(values))


def _param_axes(path: Path, entries: Any, profile: Path | None) -> list[ParamAxis]:
    from paracell.costs import load_costs

    if not isinstance(entries, list):
        raise ResultsError(f"{path}: 'params' must be an array of tables ([[params]])")
    if not entries:
        return []
    table = load_costs(profile)
    axes: list[ParamAxis] = []
    owner: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(entries):
        where = f"params[{i}]"
        if not isinstance(entry, dict):
            raise ResultsError(f"{path}: {where} must be a table")
        _reject_unknown(path, where, entry, {"name", "deployment", "values", "range"})
        name = _string(path, f"{where}.name", entry.get("name"))
        keys = table.keys_for(name)
        if not keys:
            raise ResultsError(
                f"{path}: {where}.name: unknown parameter {name!r}",
                hint="`paracell costs` lists every parameter name",
            )
        deployment = entry.get("deployment")
        if deployment is not None:
            keys = [k for k in keys if k[1] in (deployment, ANY)]
            if not keys:
                raise ResultsError(
                    f"{path}: {where}.deployment: parameter {name!r} has no "
                    f"{deployment!r} value"
                )
        # Two axes that set one value would override each other, so their
        # grid points would repeat cells.
        for key in keys:
            if key in owner:
                raise ResultsError(
                    f"{path}: {where}: {key[0]} [{key[1]}] is already set by "
                    f"params[{owner[key]}]",
                    hint="give each value one [[params]] entry, or set "
                    "'deployment' so the entries do not overlap",
                )
            owner[key] = i
        unit = table.param(*keys[0]).unit
        values = _axis_values(path, where, entry, unit)
        axes.append(ParamAxis(name=name, keys=tuple(sorted(keys)), values=values))
    return axes


def _axis_values(
    path: Path, where: str, entry: Mapping[str, Any], unit: str
) -> Sequence[float]:
    if ("values" in entry) == ("range" in entry):
        raise ResultsError(f"{path}: {where}: give exactly one of 'values' or 'range'")
    if "values" in entry:
        raw = entry["values"]
        if not isinstance(raw, list) or not raw:
            raise ResultsError(f"{path}: {where}.values must be a non-empty list")
        values = [
            _quantity(path, f"{where}.values[{j}]", v, unit) for j, v in enumerate(raw)
        ]
    else:
        spec = entry["range"]
        if not isinstance(spec, dict) or set(spec) != {"start", "stop", "num"}:
            raise ResultsError(
                f"{path}: {where}.range must be {{ start = ..., stop = ..., num = N }}"
            )
        start = _quantity(path, f"{where}.range.start", spec["start"], unit)
        stop = _quantity(path, f"{where}.range.stop", spec["stop"], unit)
        num = spec["num"]
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ResultsError(
                f"{path}: {where}.range.num: expected a count >= 1, got {num!r}"
            )
        if start == stop:
            return LinearValues(start, stop, 1)
        linear = LinearValues(start, stop, num)
        # Values closer than two units in the last place could round to the
        # same double, and two grid points would then be one cell.
        if num > 1 and abs(linear.step) < 2 * math.ulp(max(abs(start), abs(stop))):
            raise ResultsError(
                f"{path}: {where}.range.num: {num} values between {start:g} and "
                f"{stop:g} {unit} are closer than a double can tell apart",
                hint="use fewer values",
            )
        return linear
    return tuple(dict.fromkeys(values))


def _quantity(path: Path, where: str, value: Any, unit: str) -> float:
    try:
        if isinstance(value, str):
            number, given = parse_quantity(value)
            result = convert(number, given, unit)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            result = float(value)
        else:
            raise ValueError(
                f"expected a number or a quantity such as '40 ns', got {value!r}"
            )
    except ValueError as exc:
        raise ResultsError(f"{path}: {where}: {exc}") from None
    if not math.isfinite(result) or result < 0:
        raise ResultsError(f"{path}: {where}: value {value!r} must be finite and >= 0")
    return result


def cell_id_for(
    trace_hash: str,
    kind: str,
    axes: Mapping[str, str | None],
    effective_values: Iterable[tuple[str, str, float]],
    tool_version: str = __version__,
) -> str:
    """Return the stable id of a cell.

    ``effective_values`` are the cost values that differ from the default
    table after the profile and the grid point are applied, so a value set by
    a profile and the same value set by the grid give one id.
    """
    document = {
        "trace": trace_hash,
        "kind": kind,
        "axes": {k: v for k, v in sorted(axes.items()) if v is not None},
        "costs": sorted([n, d, float(v)] for n, d, v in effective_values),
        "version": tool_version,
    }
    return hashlib.sha256(to_json(document).encode()).hexdigest()


def load_sweep_traces(spec: SweepSpec) -> list[SweepTrace]:
    """Load the spec's traces once each; paths with the same content count once."""
    from paracell.trace import load_trace

    traces: dict[str, SweepTrace] = {}
    for trace_path in spec.trace_paths:
        trace = load_trace(trace_path)
        content_hash = trace.content_hash()
        if content_hash in traces:
            log.info(
                "%s: same content as %s, its cells are counted once",
                trace_path,
                traces[content_hash].path,
            )
            continue
        traces[content_hash] = SweepTrace(trace_path, content_hash, trace.name)
    return list(traces.values())


def cells_per_point(spec: SweepSpec) -> int:
    """Return the model cells at one grid point of one trace."""
    return len(spec.runtimes) * len(spec.deployments) + len(spec.policies) * len(
        spec.placements
    )


def count_cells(spec: SweepSpec, traces: Sequence[SweepTrace]) -> int:
    """Return the number of cells of the grid, computed without building it."""
    return (
        len(traces)
        * math.prod(len(a.values) for a in spec.axes)
        * cells_per_point(spec)
    )


def describe_grid_size(spec: SweepSpec, traces: Sequence[SweepTrace]) -> str:
    """Return the factors of the grid size, for messages."""
    nr_points = math.prod(len(a.values) for a in spec.axes)
    return (
        f"{len(traces)} trace{'s' if len(traces) != 1 else ''} x {nr_points:,} "
        f"grid point{'s' if nr_points != 1 else ''} x {cells_per_point(spec)} "
        "model cells per point"
    )


def check_grid_size(
    spec: SweepSpec, traces: Sequence[SweepTrace], max_cells: int
) -> int:
    """Return the number of cells; raise ResultsError when it exceeds ``max_cells``."""
    nr_cells = count_cells(spec, traces)
    if nr_cells > max_cells:
        raise ResultsError(
            f"{spec.path}: the grid has {nr_cells:,} cells "
            f"({describe_grid_size(spec, traces)}), more than the maximum of "
            f"{max_cells:,}",
            hint="use fewer values, traces, runtimes or policies, or raise --max-cells",
        )
    return nr_cells


def expand_cells(
    spec: SweepSpec, traces: Sequence[SweepTrace] | None = None
) -> list[Cell]:
    """Return every cell of the grid in a fixed order (see iter_cells)."""
    return list(iter_cells(spec, traces))


def iter_cells(
    spec: SweepSpec, traces: Sequence[SweepTrace] | None = None
) -> Iterator[Cell]:
    """Yield every cell of the grid once, in a fixed order, without keeping them.

    Cells are unique: traces with the same content are loaded once, the
    values of each axis are distinct, and no two axes set the same value.
    """
    from paracell.costs import default_costs, load_costs

    if traces is None:
        traces = load_sweep_traces(spec)
    defaults = {p.key: p.value for p in default_costs()}
    base = load_costs(spec.profile)
    profile_values = {p.key: p.value for p in base}
    profile = str(spec.profile) if spec.profile else None
    latency_axes = [
        {"runtime": r, "deployment": d, "policy": None, "placement": None}
        for r, d in itertools.product(spec.runtimes, spec.deployments)
    ]
    memory_axes = [
        {"runtime": None, "deployment": None, "policy": p, "placement": pl}
        for p, pl in itertools.product(spec.policies, spec.placements)
    ]
    for trace in traces:
        trace_hash = trace.content_hash
        for point in _grid_points(spec.axes):
            grid = tuple(
                (name, deployment, value)
                for axis, value in zip(spec.axes, point, strict=True)
                for name, deployment in axis.keys
            )
            effective = dict(profile_values)
            effective.update({(n, d): v for n, d, v in grid})
            changed = [
                (n, d, v)
                for (n, d), v in effective.items()
                if defaults.get((n, d)) != v
            ]
            for kind, axes_list in (("latency", latency_axes), ("memory", memory_axes)):
                for axes in axes_list:
                    yield Cell(
                        cell_id=cell_id_for(trace_hash, kind, axes, changed),
                        kind=kind,
                        trace_path=str(trace.path),
                        trace_hash=trace_hash,
                        trace_name=trace.name,
                        runtime=axes["runtime"],
                        deployment=axes["deployment"],
                        policy=axes["policy"],
                        placement=axes["placement"],
                        profile=profile,
                        values=grid,
                    )


def _grid_points(axes: Sequence[ParamAxis]) -> Iterator[tuple[float, ...]]:
    """Yield the Cartesian product of the axes' values, the last axis fastest.

    itertools.product would first copy every axis's values into a tuple, so
    this counts through the grid with one index per axis instead.
    """
    counts = [len(axis.values) for axis in axes]
    if 0 in counts:
        return
    indices = [0] * len(axes)
    while True:
        yield tuple(axis.values[i] for axis, i in zip(axes, indices, strict=True))
        position = len(axes) - 1
        while position >= 0:
            indices[position] += 1
            if indices[position] < counts[position]:
                break
            indices[position] = 0
            position -= 1
        if position < 0:
            return


def sweep_id_for(spec: SweepSpec, cells: Sequence[Cell]) -> str:
    """Return the sweep's id, which depends on its name and the ids of its cells."""
    digest = hashlib.sha256()
    digest.update(spec.name.encode())
    for cell in cells:
        digest.update(cell.cell_id.encode())
    return digest.hexdigest()[:16]


# Per-process caches of the worker side: a pool process or Dask worker loads
# each trace and cost table once and reuses it for every cell it runs.
_TRACES: dict[str, Any] = {}
_COSTS: dict[tuple[str | None, tuple[tuple[str, str, float], ...]], Any] = {}
_EVENTS: dict[str, Any] = {}
_ALLOCATOR_EVENTS: dict[str, Any] = {}


def _cached_trace(cell: Cell) -> Any:
    from paracell.trace import load_trace

    entry = _TRACES.get(cell.trace_path)
    if entry is None:
        trace = load_trace(cell.trace_path)
        entry = _TRACES[cell.trace_path] = (trace, trace.content_hash())
    trace, trace_hash = entry
    if trace_hash != cell.trace_hash:
        # A Dask worker on another machine may see a different file at the path.
        raise ResultsError(
            f"{cell.trace_path}: content hash {trace_hash[:12]} differs from "
            f"{cell.trace_hash[:12]} seen when the sweep started",
            hint="every worker must see the same trace files at the same paths",
        )
    return trace


def _cached_events(cell: Cell, trace: Any) -> Any:
    # Classifying a trace's events takes most of a latency cell's time and
    # does not depend on the costs, so do it once per trace and process.
    from paracell.models import latency

    classify = getattr(latency, "classify", None)
    if classify is None:
        return trace
    events = _EVENTS.get(cell.trace_hash)
    if events is None:
        events = _EVENTS[cell.trace_hash] = classify(trace)
    return events


def _cached_allocator_events(cell: Cell, trace: Any) -> Any:
    # Same reasoning for the memory model's extraction of allocator events.
    from paracell.models import memory

    extract = getattr(getattr(memory, "AllocatorEvents", None), "from_trace", None)
    if extract is None:
        return trace
    events = _ALLOCATOR_EVENTS.get(cell.trace_hash)
    if events is None:
        events = _ALLOCATOR_EVENTS[cell.trace_hash] = extract(trace)
    return events


def _cached_costs(cell: Cell) -> Any:
    from paracell.costs import load_costs

    key = (cell.profile, cell.values)
    costs = _COSTS.get(key)
    if costs is None:
        costs = load_costs(Path(cell.profile) if cell.profile else None)
        if cell.values:
            costs = costs.replace_values({(n, d): v for n, d, v in cell.values})
        _COSTS[key] = costs
    return costs


def evaluate_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell and return its result as plain JSON-ready data.

    The result depends only on the cell's fields, so a cell run on a
    resumed sweep or directly gives the same result.
    """
    trace = _cached_trace(cell)
    costs = _cached_costs(cell)
    if cell.kind == "latency":
        from paracell.models import latency

        assert cell.runtime is not None and cell.deployment is not None
        latency_report = latency.evaluate(
            _cached_events(cell, trace), costs, [cell.runtime], [cell.deployment]
        )
        result = latency_report.to_dict()[cell.runtime][cell.deployment]
    elif cell.kind == "memory":
        from paracell.models import memory

        assert cell.policy is not None
        placement = None if cell.placement == "default" else cell.placement
        report = memory.evaluate(
            trace, costs, policies=[cell.policy], placement=placement
        )
        result = report.to_dict()[cell.policy]
    else:
        raise ResultsError(f"unknown cell kind {cell.kind!r}")
    # Round-trip through JSON so the caller gets plain floats and ints, the
    # same values the store returns later.
    import json

    return dict(json.loads(to_json(result)))


@dataclass
class _Pending:
    records: list[RunRecord] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)


def run_sweep(
    spec: SweepSpec,
    store: ResultsStore,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[Iterable[Cell], int], Iterable[Cell]] | None = None,
    cells: Sequence[Cell] | None = None,
) -> SweepSummary:
    """Run every cell of ``spec`` not yet in ``store``; return what was done.

    With ``scheduler`` (a dask.distributed address given by the user) the
    cells run on that cluster, otherwise on a local process pool of
    ``workers`` processes (default: one per CPU). Results are written by
    this process only, in batches, so a killed sweep loses at most the
    cells of one unwritten batch, and those are run again on resume.
    ``progress`` wraps the iterator of finished cells, for a progress bar.
    """
    started = time.monotonic()
    all_cells = list(cells) if cells is not None else expand_cells(spec)
    sweep_id = sweep_id_for(spec, all_cells)
    done = store.cell_ids(c.cell_id for c in all_cells)
    todo = [c for c in all_cells if c.cell_id not in done]
    store.add_sweep(sweep_id, spec.name, str(spec.path), spec.document, len(all_cells))
    log.info(
        "sweep %s: %d cells, %d already stored, %d to run",
        sweep_id,
        len(all_cells),
        len(all_cells) - len(todo),
        len(todo),
    )
    finished: Iterator[tuple[Cell, dict[str, Any] | None, str | None]]
    if not todo:
        finished = iter(())
    elif scheduler:
        finished = _run_dask(todo, scheduler)
    else:
        finished = _run_local(todo, workers)
    pending = _Pending()
    nr_computed = 0
    results: dict[str, dict[str, Any] | None] = {}
    failures: list[str] = []

    logged_errors: set[str] = set()

    def finished_cells() -> Iterator[Cell]:
        for cell, result, error in finished:
            if error is not None:
                # A model that rejects one cell's input should not stop the
                # other cells; the failed cell is not stored, so a rerun
                # tries it again. A damaged trace fails all its cells alike,
                # so each distinct error is logged once.
                if error not in logged_errors:
                    logged_errors.add(error)
                    log.error(
                        "cell %s (%s): %s", cell.cell_id[:12], cell.describe(), error
                    )
                else:
                    log.debug("cell %s: the same error", cell.cell_id[:12])
                failures.append(f"{cell.describe()}: {error}")
            results[cell.cell_id] = result
            yield cell

    iterator: Iterable[Cell] = finished_cells()
    if progress is not None:
        iterator = progress(iterator, len(todo))
    try:
        for cell in iterator:
            result = results.pop(cell.cell_id)
            if result is None:
                continue
            pending.records.append(_record(sweep_id, cell, result))
            nr_computed += 1
            if (
                len(pending.records) >= FLUSH_BATCH
                or time.monotonic() - pending.last_flush >= FLUSH_INTERVAL_S
            ):
                _flush(store, pending)
    finally:
        # Keep what finished even when interrupted, so a resume skips it.
        _flush(store, pending)
        close = getattr(finished, "close", None)
        if close is not None:
            close()
    if failures:
        raise ResultsError(
            f"{len(failures)} of {len(todo)} cells failed, for example {failures[0]}",
            hint=f"the other {nr_computed} computed cells are stored; fix the cause "
            "and run the sweep again to compute the failed ones",
        )
    return SweepSummary(
        sweep_id=sweep_id,
        nr_cells=len(all_cells),
        nr_skipped=len(all_cells) - len(todo),
        nr_computed=nr_computed,
        elapsed_s=time.monotonic() - started,
    )


def _record(sweep_id: str, cell: Cell, result: Mapping[str, Any]) -> RunRecord:
    return RunRecord(
        command="sweep",
        result=result,
        params=cell.axes(),
        trace_name=cell.trace_name,
        trace_hash=cell.trace_hash,
        trace_path=cell.trace_path,
        sweep_id=sweep_id,
        cell_id=cell.cell_id,
    )


def _flush(store: ResultsStore, pending: _Pending) -> None:
    if pending.records:
        store.add_runs(pending.records, skip_existing_cells=True)
        pending.records.clear()
    pending.last_flush = time.monotonic()


def _init_pool_worker(parent_pid: int) -> None:
    # Ask the kernel to kill this worker when the sweep process dies (even by
    # SIGKILL), so an interrupted sweep leaves no idle workers behind.
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _run_local(
    cells: Sequence[Cell], workers: int | None
) -> Iterator[tuple[Cell, dict[str, Any] | None, str | None]]:
    import concurrent.futures
    import multiprocessing

    nr_workers = max(1, min(workers or os.cpu_count() or 1, len(cells)))
    # spawn: each worker is a child of this process (so the parent-death
    # signal below refers to it) and inherits neither its threads nor its
    # open store connection.
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=nr_workers,
        mp_context=context,
        initializer=_init_pool_worker,
        initargs=(os.getpid(),),
    )
    try:
        futures = {pool.submit(evaluate_cell, cell): cell for cell in cells}
        for future in concurrent.futures.as_completed(futures):
            cell = futures[future]
            yield (cell, *_result_or_error(future.result))
    except BaseException:
        # Interrupted or failed: stop the running cells now instead of
        # waiting for them. NOTE: ProcessPoolExecutor has no public way to
        # kill its workers, so this reads its private process table.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def check_scheduler_address(address: str) -> None:
    """Raise ResultsError unless ``address`` parses as a dask.distributed address.

    Checked before anything runs, because a Client given an address without
    a port fails only after its connection timeout.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise ResultsError(
            f"--scheduler {address!r}: invalid address ({exc})",
            hint="give the scheduler's address as tcp://HOST:PORT",
        ) from None


def _run_dask(
    cells: Sequence[Cell], address: str
) -> Iterator[tuple[Cell, dict[str, Any] | None, str | None]]:
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ResultsError(
            f"cannot connect to the Dask scheduler at {address} ({exc})",
            hint="check the address, or leave out --scheduler to run locally",
        ) from None
    try:
        by_key = {}
        futures = []
        for cell in cells:
            # The key names the cell, so a cluster that still has the result
            # from an earlier connection of this sweep does not run it twice.
            future = client.submit(
                evaluate_cell, cell, key=f"paracell-cell-{cell.cell_id}"
            )
            by_key[future.key] = cell
            futures.append(future)
        for future in as_completed(futures, loop=client.loop):
            cell = by_key[future.key]
            yield (cell, *_result_or_error(future.result))
            future.release()
    finally:
        client.close()


def _result_or_error(
    get: Callable[[], dict[str, Any]],
) -> tuple[dict[str, Any] | None, str | None]:
    """Return (result, None), or (None, message) when the model rejected the cell.

    Only the library's typed errors count as a rejected cell; any other
    exception is a bug and propagates with its traceback.
    """
    from paracell.errors import ParacellError

    try:
        return get(), None
    except ParacellError as exc:
        return None, str(exc)
