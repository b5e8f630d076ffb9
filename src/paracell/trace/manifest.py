"""The ``manifest.json`` of a trace: what was traced, where, and what was lost."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paracell.errors import TraceFormatError

FORMAT_NAME = "paracell-trace"
FORMAT_VERSION = 1
WORKLOAD_KINDS = ("server", "agent")
CLOCKS = ("mono", "wall")
SOURCES = ("tracefs", "strace")


@dataclass
class Workload:
    """The traced program: a name, whether it serves requests or works in bursts."""

    name: str
    kind: str
    command: list[str]
    # Operations the workload performed (requests of a benchmark), when known,
    # so the latency model can report time per operation.
    operations: int | None = None
    operation_unit: str | None = None
    # Script, relative to the repository, that recreates a shipped trace.
    recreate: str | None = None


@dataclass
class Manifest:
    """Everything about a trace except the events themselves."""

    workload: Workload
    kernel_release: str
    cpu_count: int
    page_size: int
    memory_bytes: int
    start_time: str
    start_ts_ns: int
    end_ts_ns: int
    clock: str
    source: str
    event_kinds: list[str]
    event_counts: dict[str, int]
    lost_events: dict[str, int]
    tool_version: str
    exit_status: int | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    notes: list[str] = field(default_factory=list)

    @property
    def duration_ns(self) -> int:
        return self.end_ts_ns - self.start_ts_ns

    @property
    def lost_total(self) -> int:
        return int(self.lost_events.get("total", 0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read and validate a manifest, raising :class:`TraceFormatError`."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TraceFormatError(
                path,
                "manifest is missing",
                hint="a trace directory needs manifest.json",
            ) from None
        except OSError as exc:
            raise TraceFormatError(
                path, f"cannot read the manifest ({exc.strerror})"
            ) from None
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TraceFormatError(path, f"manifest is not valid JSON: {exc}") from None
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: Any, path: Path) -> Manifest:
        if not isinstance(raw, dict):
            raise TraceFormatError(path, "manifest must be a JSON object")
        v = _Validator(raw, path)
        if v.get("format", str) != FORMAT_NAME:
            raise TraceFormatError(
                path, f"field 'format' must be {FORMAT_NAME!r}", value=raw.get("format")
            )
        if v.get("format_version", int) != FORMAT_VERSION:
            raise TraceFormatError(
                path,
                f"field 'format_version' must be {FORMAT_VERSION}; "
                "this paracell cannot read other versions",
                value=raw.get("format_version"),
            )
        w = _Validator(v.get("workload", dict), path, prefix="workload.")
        workload = Workload(
            name=w.get("name", str),
            kind=w.choice("kind", WORKLOAD_KINDS),
            command=w.get("command", list),
            operations=w.optional_count("operations"),
            operation_unit=w.optional("operation_unit", str),
            recreate=w.optional("recreate", str),
        )
        from paracell.trace.schema import KINDS

        kinds = v.get("event_kinds", list)
        for kind in kinds:
            if kind not in KINDS:
                raise TraceFormatError(
                    path,
                    "field 'event_kinds' names unknown kind; "
                    f"known: {', '.join(KINDS)}",
                    value=kind,
                )
        manifest = cls(
            workload=workload,
            kernel_release=v.get("kernel_release", str),
            cpu_count=v.positive("cpu_count"),
            page_size=v.positive("page_size"),
            memory_bytes=v.positive("memory_bytes"),
            start_time=v.get("start_time", str),
            start_ts_ns=v.get("start_ts_ns", int),
            end_ts_ns=v.get("end_ts_ns", int),
            clock=v.choice("clock", CLOCKS),
            source=v.choice("source", SOURCES),
            event_kinds=kinds,
            event_counts=v.counts("event_counts"),
            lost_events=v.counts("lost_events"),
            tool_version=v.get("tool_version", str),
            exit_status=v.optional("exit_status", int),
            notes=v.optional("notes", list) or [],
        )
        if manifest.end_ts_ns < manifest.start_ts_ns:
            raise TraceFormatError(
                path,
                "field 'end_ts_ns' is before 'start_ts_ns'",
                value=manifest.end_ts_ns,
            )
        return manifest


class _Validator:
    """Typed field access on a JSON object, raising errors that name the field."""

    def __init__(self, raw: dict[str, Any], path: Path, prefix: str = "") -> None:
        self.raw = raw
        self.path = path
        self.prefix = prefix

    def _fail(self, key: str, reason: str, value: object = None) -> TraceFormatError:
        return TraceFormatError(
            self.path, f"field '{self.prefix}{key}' {reason}", value=value
        )

    def get(self, key: str, kind: type) -> Any:
        if key not in self.raw:
            raise self._fail(key, "is missing")
        value = self.raw[key]
        # bool is a subclass of int in Python; a JSON true is not a count.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, f"must be of type {kind.__name__}", value)
        return value

    def optional(self, key: str, kind: type) -> Any:
        if self.raw.get(key) is None:
            return None
        return self.get(key, kind)

    def optional_count(self, key: str) -> int | None:
        value = self.optional(key, int)
        if value is not None and value < 0:
            raise self._fail(key, "must not be negative", value)
        return value

    def positive(self, key: str) -> int:
        value = self.get(key, int)
        if value <= 0:
            raise self._fail(key, "must be positive", value)
        return int(value)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str)
        if value not in choices:
            raise self._fail(key, f"must be one of {', '.join(choices)}", value)
        return str(value)

    def counts(self, key: str) -> dict[str, int]:
        value = self.get(key, dict)
        for name, count in value.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise self._fail(
                    f"{key}.{name}", "must be a non-negative integer", count
                )
        return dict(value)
