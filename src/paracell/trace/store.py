"""Reading, validating and atomically writing trace directories."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from paracell.errors import TraceFormatError
from paracell.trace.manifest import FORMAT_NAME, Manifest
from paracell.trace.schema import KINDS, arrow_schema, parquet_name

log = logging.getLogger("paracell.trace")

MANIFEST_NAME = "manifest.json"
# Parquet settings: zstd keeps shipped traces at a few MB, and delta encoding
# stores sorted timestamps in a couple of bytes each.
_COMPRESSION = "zstd"


class Trace:
    """A validated trace directory; event tables are read and checked on first use."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._tables: dict[str, pa.Table] = {}

    def __repr__(self) -> str:
        return f"Trace({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.manifest.workload.name

    @property
    def kinds(self) -> list[str]:
        return list(self.manifest.event_kinds)

    def has(self, kind: str) -> bool:
        return kind in self.manifest.event_kinds

    def table(self, kind: str) -> pa.Table:
        """Return the table of one event kind; an empty table if it was not captured."""
        if kind not in KINDS:
            raise KeyError(f"unknown event kind {kind!r}")
        if kind not in self._tables:
            if self.has(kind):
                file = self.path / parquet_name(kind)
                table = read_table(file, kind)
                _check_count(file, table, self.manifest, kind)
                check_start(file, table, self.manifest)
            else:
                table = arrow_schema(kind).empty_table()
            self._tables[kind] = table
        return self._tables[kind]

    def column(self, kind: str, name: str) -> np.ndarray:
        """Return one column as a numpy array (zero-copy for numeric columns)."""
        return self.table(kind).column(name).to_numpy()

    def validate(self) -> None:
        """Read and check every table now instead of on first use."""
        for kind in self.kinds:
            self.table(kind)

    def content_hash(self) -> str:
        """Return a SHA-256 over the manifest and every event file, in a fixed order."""
        digest = hashlib.sha256()
        for name in [MANIFEST_NAME, *(parquet_name(k) for k in sorted(self.kinds))]:
            digest.update(name.encode())
            try:
                with open(self.path / name, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
            except OSError as exc:
                raise TraceFormatError(
                    self.path / name, f"cannot read ({exc.strerror})"
                ) from None
        return digest.hexdigest()


def load_trace(path: Path | str, validate: bool = False) -> Trace:
    """Open a trace directory, checking its manifest and that its files exist.

    Tables are validated when first read; pass ``validate=True`` to read them
    all now.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TraceFormatError(
            path, "trace not found", hint="give a trace directory"
        ) from None
    except OSError as exc:
        raise TraceFormatError(path, f"cannot read ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise TraceFormatError(
            path,
            "not a trace directory",
            hint="a trace is a directory with manifest.json",
        )
    try:
        entries = set(os.listdir(path))
    except OSError as exc:
        raise TraceFormatError(
            path, f"cannot read the trace directory ({exc.strerror})"
        ) from None
    manifest = Manifest.read(path / MANIFEST_NAME)
    for kind in manifest.event_kinds:
        file = path / parquet_name(kind)
        if file.name not in entries:
            raise TraceFormatError(
                file, f"event file is missing although the manifest lists kind {kind!r}"
            )
    trace = Trace(path, manifest)
    if validate:
        trace.validate()
    return trace


def read_table(file: Path, kind: str) -> pa.Table:
    """Read one Parquet event file and check schema, ordering and value ranges."""
    try:
        # Opened here first so that a permission or I/O error is reported
        # as such, not as a corrupt Parquet file.
        with open(file, "rb"):
            pass
    except OSError as exc:
        raise TraceFormatError(file, f"cannot read ({exc.strerror})") from None
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise TraceFormatError(
            file,
            f"not a readable Parquet file ({_first_line(exc)})",
            hint="the file is truncated or corrupt; capture the trace again",
        ) from None
    validate_table(file, kind, table)
    return table


def validate_table(file: Path, kind: str, table: pa.Table) -> None:
    """Raise :class:`TraceFormatError` naming the first bad column, row and value."""
    expected = {c.name: c for c in KINDS[kind]}
    for name in table.column_names:
        if name not in expected:
            raise TraceFormatError(
                file, f"unexpected column for kind {kind!r}", column=name
            )
    for name, col in expected.items():
        if name not in table.column_names:
            raise TraceFormatError(file, "column is missing", column=name)
        data = table.column(name)
        if data.type != col.type:
            raise TraceFormatError(
                file, f"has type {data.type}, expected {col.type}", column=name
            )
        if data.null_count:
            row = _first_true(pc.is_null(data))
            raise TraceFormatError(file, "value is null", column=name, row=row)
        _check_range(file, name, data, col.min, col.max)
    ts = table.column("ts_ns").to_numpy()
    if ts.size > 1:
        bad = np.flatnonzero(ts[1:] < ts[:-1])
        if bad.size:
            row = int(bad[0]) + 1
            raise TraceFormatError(
                file,
                f"timestamps are not sorted (previous row has {int(ts[row - 1])})",
                column="ts_ns",
                row=row,
                value=int(ts[row]),
            )


def _check_range(
    file: Path, name: str, data: pa.ChunkedArray, lo: int | None, hi: int | None
) -> None:
    if len(data) == 0 or (lo is None and hi is None):
        return
    values = data.to_numpy()
    bad_mask = np.zeros(values.shape, dtype=bool)
    if lo is not None:
        bad_mask |= values < lo
    if hi is not None:
        bad_mask |= values > hi
    if bad_mask.any():
        row = int(np.argmax(bad_mask))
        raise TraceFormatError(
            file,
            f"value outside the allowed range {_describe_range(lo, hi)}",
            column=name,
            row=row,
            value=values[row].item(),
        )


def _describe_range(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f"(at least {lo})"
    if lo is None:
        return f"(at most {hi})"
    return f"[{lo}, {hi}]"


def _check_count(file: Path, table: pa.Table, manifest: Manifest, kind: str) -> None:
    expected = manifest.event_counts.get(kind)
    if expected is not None and expected != table.num_rows:
        raise TraceFormatError(
            file,
            f"holds {table.num_rows} rows but the manifest's event_counts "
            f"says {expected}",
        )


def check_start(file: Path, table: pa.Table, manifest: Manifest) -> None:
    """Raise :class:`TraceFormatError` when an event precedes the trace's start."""
    if table.num_rows == 0:
        return
    first = int(table.column("ts_ns")[0].as_py())  # the table is sorted
    if first < manifest.start_ts_ns:
        raise TraceFormatError(
            file,
            f"event is before the manifest's start_ts_ns {manifest.start_ts_ns}",
            column="ts_ns",
            row=0,
            value=first,
        )


def _first_true(mask: pa.ChunkedArray) -> int:
    return int(np.argmax(mask.to_numpy(zero_copy_only=False)))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_output(path: Path | str, overwrite: bool) -> None:
    """Raise :class:`TraceFormatError` unless a trace can be written at ``path``.

    The target must not exist, or with ``overwrite`` be a trace directory or
    an empty directory. Its nearest existing ancestor must be a directory in
    which this process can create entries (checked by creating one). The
    trace replaces the target by rename, so the current directory, its
    ancestors and mount points are rejected, ``--force`` or not. Call this
    before long work whose result would be lost otherwise.
    """
    path = Path(path)
    _check_renamable(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # an ancestor that is no directory is reported below
    except OSError as exc:
        raise TraceFormatError(
            path, f"cannot check the output ({exc.strerror})"
        ) from None
    if st is not None:
        if not overwrite:
            raise TraceFormatError(
                path,
                "output already exists",
                hint="choose another -o, remove it, or pass --force to replace "
                "an earlier trace",
            )
        _check_replaceable(path, st)
    _check_creatable(path)


def _check_renamable(path: Path) -> None:
    """Reject targets rename(2) cannot replace: the cwd, its ancestors, mounts."""
    hint = "give a new directory name for the trace, for example -o ./trace"
    resolved = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(os.getcwd()))
    if resolved == cwd or resolved in cwd.parents:
        raise TraceFormatError(
            path,
            f"output resolves to {resolved}, the current directory or one of "
            "its ancestors",
            hint=hint,
        )
    # pathlib drops "." components, so only ".." and "/" are left to catch.
    if path.name in ("", ".."):
        raise TraceFormatError(
            path, "output must end in a directory name, not '..' or '/'", hint=hint
        )
    if os.path.ismount(path):
        raise TraceFormatError(path, "output is a mount point", hint=hint)


def _check_replaceable(path: Path, st: os.stat_result) -> None:
    """Allow replacing only a paracell trace directory or an empty directory."""
    rule = "--force replaces only a paracell trace directory or an empty directory"

    if stat.S_ISLNK(st.st_mode):
        raise TraceFormatError(path, "output is a symbolic link", hint=rule)
    if not stat.S_ISDIR(st.st_mode):
        raise TraceFormatError(path, "output exists and is not a directory", hint=rule)
    try:
        entries = set(os.listdir(path))
    except OSError as exc:
        raise TraceFormatError(
            path, f"cannot list the output directory ({exc.strerror})", hint=rule
        ) from None
    if not entries:
        return

    if MANIFEST_NAME not in entries:
        raise TraceFormatError(
            path, f"output directory is not empty and has no {MANIFEST_NAME}", hint=rule
        )
    try:
        raw = json.loads((path / MANIFEST_NAME).read_text())
    except OSError as exc:
        raise TraceFormatError(
            path / MANIFEST_NAME, f"cannot read ({exc.strerror})", hint=rule
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TraceFormatError(
            path / MANIFEST_NAME,
            "is not valid JSON, so the output is no trace",
            hint=rule,
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise TraceFormatError(
            path / MANIFEST_NAME,
            f'has no "format": "{FORMAT_NAME}", so the output is no trace',
            hint=rule,
        )

    # Files a trace never contains are someone else's: keep them.
    allowed = {MANIFEST_NAME, *(parquet_name(k) for k in KINDS)}
    extra = sorted(entries - allowed)
    if extra:
        raise TraceFormatError(
            path,
            f"output directory contains {extra[0]!r}, which is not part of a trace",
            hint=rule,
        )


def _check_creatable(path: Path) -> None:
    """Check that the nearest existing ancestor of ``path`` accepts new entries."""
    parent = path.parent
    while True:
        try:
            st = os.stat(parent)
            break
        except (FileNotFoundError, NotADirectoryError):
            if parent == parent.parent:
                raise TraceFormatError(path, "no ancestor directory exists") from None
            parent = parent.parent
        except OSError as exc:
            raise TraceFormatError(
                path, f"cannot check {parent} ({exc.strerror})"
            ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise TraceFormatError(path, f"{parent} is not a directory")
    probe = parent / f".paracell-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as exc:
        raise TraceFormatError(
            path,
            f"cannot create entries in {parent}: {exc.strerror}",
            hint="choose an output on a writable file system",
        ) from None
    probe.rmdir()


def write_trace(
    path: Path | str,
    manifest: Manifest,
    tables: Mapping[str, pa.Table],
    overwrite: bool = False,
) -> Trace:
    """Write a trace directory atomically and return it, loaded.

    Files go to a hidden sibling directory, the manifest last, and the
    directory is renamed into place only when complete, so an interrupted
    write never leaves a directory that looks like a trace. With
    ``overwrite``, only a trace directory or an empty directory is replaced
    (see :func:`check_output`). Every failure raises
    :class:`TraceFormatError` naming the path and the reason, and leaves no
    hidden directory behind.
    """
    path = Path(path)
    check_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TraceFormatError(
            path, f"cannot create the output's parent directory ({exc.strerror})"
        ) from None
    staging = path.parent / f".{path.name}.partial-{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            _write_files(staging, path, manifest, tables)
            _replace(staging, path)
        finally:
            # After a successful replace the staging directory is gone.
            if os.path.lexists(staging):
                shutil.rmtree(staging, ignore_errors=True)
        _fsync_dir(path.parent)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise TraceFormatError(
            path, f"cannot write the trace: {exc.strerror or exc}{where}"
        ) from None
    log.info("wrote trace %s (%s)", path, manifest.event_counts)
    return load_trace(path)


def _write_files(
    staging: Path, path: Path, manifest: Manifest, tables: Mapping[str, pa.Table]
) -> None:
    """Validate and write every table and the manifest into ``staging``.

    Errors name the file's final place below ``path``.
    """
    manifest.event_kinds = sorted(tables, key=list(KINDS).index)
    manifest.event_counts = {}
    for kind in manifest.event_kinds:
        table = tables[kind].cast(arrow_schema(kind))
        validate_table(path / parquet_name(kind), kind, table)
        check_start(path / parquet_name(kind), table, manifest)
        _write_parquet(staging / parquet_name(kind), table)
        manifest.event_counts[kind] = table.num_rows
    manifest.write(staging / MANIFEST_NAME)
    _fsync_dir(staging)


def _replace(staging: Path, path: Path) -> None:
    """Move ``staging`` to ``path``, replacing an earlier trace or empty directory."""
    if not os.path.lexists(path):
        staging.rename(path)
        return
    try:
        # rename(2) replaces an empty directory in one step.
        staging.rename(path)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    retired = path.parent / f".{path.name}.old-{os.getpid()}"
    path.rename(retired)
    try:
        staging.rename(path)
    except BaseException:
        retired.rename(path)
        raise
    errors: list[str] = []
    shutil.rmtree(retired, onerror=lambda _f, p, e: errors.append(f"{p}: {e[1]}"))
    if errors:
        raise TraceFormatError(
            retired,
            f"the new trace is at {path}, but removing the one it replaced "
            f"failed: {errors[0]}",
            hint="remove it by hand",
        )


def _write_parquet(file: Path, table: pa.Table) -> None:
    int_columns = [f.name for f in table.schema if pa.types.is_integer(f.type)]
    with open(file, "wb") as f:
        pq.write_table(
            table,
            f,
            compression=_COMPRESSION,
            use_dictionary=[f.name for f in table.schema if pa.types.is_string(f.type)],
            column_encoding={"ts_ns": "DELTA_BINARY_PACKED"}
            if "ts_ns" in int_columns
            else None,
        )
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
