"""The results store: one SQLite database under a results directory.

Each saved run is one row of ``runs``: command, trace name and content
hash, parameters, tool version, time and the full result as JSON. Each
numeric leaf of the result is also one row of ``metrics``, so results can
be compared with plain SQL. A run and its metrics are written in one
transaction, so a writer killed at any point leaves either the whole run
or nothing.

SQLite rather than DuckDB: DuckDB 1.x lets only one process open a database
file while any process writes to it. A second process, even a read-only
one, gets "Could not set lock". So ``paracell results`` could not read
during a sweep, and two ``--save`` runs at once would fail. SQLite in WAL
mode lets readers run beside one writer and queues writers on its file lock
(``busy_timeout``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paracell import __version__
from paracell.errors import ResultsError

log = logging.getLogger("paracell.reports")

DB_NAME = "paracell.sqlite"
RESULTS_ENV = "PARACELL_RESULTS"
SCHEMA_VERSION = 1
# Writers wait this long for another writer's transaction before giving up.
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    created_at   TEXT NOT NULL,
    command      TEXT NOT NULL,
    tool_version TEXT NOT NULL,
    trace_name   TEXT,
    trace_hash   TEXT,
    trace_path   TEXT,
    params_json  TEXT NOT NULL,
    result_json  TEXT NOT NULL,
    nr_metrics   INTEGER NOT NULL,
    sweep_id     TEXT,
    cell_id      TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS runs_by_trace ON runs (trace_hash, command);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs (sweep_id);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  REAL NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id     TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    spec_path    TEXT NOT NULL,
    spec_json    TEXT NOT NULL,
    nr_cells     INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    tool_version TEXT NOT NULL
);
"""


# Pragmas that only describe the schema or the file. A query may run them
# with an argument (a table or index name).
_READ_PRAGMAS = frozenset(
    {
        "collation_list",
        "compile_options",
        "database_list",
        "foreign_key_list",
        "function_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "module_list",
        "pragma_list",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
# Pragmas that set a value when given an argument, so a query may only read
# them, without one.
_VALUE_PRAGMAS = frozenset(
    {
        "application_id",
        "data_version",
        "encoding",
        "freelist_count",
        "journal_mode",
        "page_count",
        "page_size",
        "schema_version",
        "user_version",
    }
)
# Authorizer action codes of a statement that only reads.
_READ_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
    }
)
# Authorizer action codes by name, for error messages. Python's sqlite3
# module defines each action code as SQLITE_<NAME>.
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ")
    for name in (
        "CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX CREATE_TEMP_TABLE "
        "CREATE_TEMP_TRIGGER CREATE_TEMP_VIEW CREATE_TRIGGER CREATE_VIEW DELETE "
        "DROP_INDEX DROP_TABLE DROP_TEMP_INDEX DROP_TEMP_TABLE DROP_TEMP_TRIGGER "
        "DROP_TEMP_VIEW DROP_TRIGGER DROP_VIEW INSERT PRAGMA READ SELECT "
        "TRANSACTION UPDATE ATTACH DETACH ALTER_TABLE REINDEX ANALYZE "
        "CREATE_VTABLE DROP_VTABLE FUNCTION SAVEPOINT RECURSIVE"
    ).split()
}


class _ReadOnlyAuthorizer:
    """SQLite authorizer that denies every action except reads.

    It denies ATTACH (and so VACUUM INTO, which attaches its output file),
    DETACH, transactions, every write including to temporary tables, and
    pragmas other than the reading ones. ``denied`` keeps the first denied
    action for the error message.
    """

    def __init__(self) -> None:
        self.denied: str | None = None

    def __call__(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        database: str | None,
        trigger: str | None,
    ) -> int:
        if action in _READ_ACTIONS and not (
            action == sqlite3.SQLITE_FUNCTION and arg2 == "load_extension"
        ):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (
            arg1 in _READ_PRAGMAS or (arg1 in _VALUE_PRAGMAS and arg2 is None)
        ):
            return sqlite3.SQLITE_OK
        if self.denied is None:
            self.denied = _describe_action(action, arg1, arg2)
        return sqlite3.SQLITE_DENY


def _describe_action(action: int, arg1: str | None, arg2: str | None) -> str:
    name = _ACTION_NAMES.get(action, f"action {action}")
    if action == sqlite3.SQLITE_PRAGMA:
        return f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
    if action == sqlite3.SQLITE_ATTACH:
        return f"ATTACH of {arg1!r} (also used by VACUUM INTO)"
    if action == sqlite3.SQLITE_FUNCTION:
        return f"function {arg2}()"
    if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
        return f"{arg1} (a transaction)"
    if action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE):
        return f"{name} on {arg1}"
    return name


def default_results_dir() -> Path:
    """Return ``$PARACELL_RESULTS`` if set, else ``./results``."""
    return Path(os.environ.get(RESULTS_ENV) or "results")


def utc_now() -> str:
    """Return the current time as ISO 8601 in UTC with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class RunRecord:
    """One result to save: what ran, on which trace, with which parameters."""

    command: str
    result: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    trace_name: str | None = None
    trace_hash: str | None = None
    trace_path: str | None = None
    sweep_id: str | None = None
    cell_id: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=utc_now)
    tool_version: str = __version__


def flatten_metrics(
    result: Mapping[str, Any] | Sequence[Any], prefix: str = ""
) -> Iterator[tuple[str, float]]:
    """Yield ``(key, value)`` for every finite numeric leaf, keys joined by ``/``.

    Booleans, strings, NaN and infinities are left out of ``metrics``; they
    stay in the run's ``result_json``. List items get their index as key.
    """
    items: Iterable[tuple[Any, Any]]
    if isinstance(result, Mapping):
        items = result.items()
    else:
        items = enumerate(result)
    for name, value in items:
        key = f"{prefix}{name}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, Mapping) or (
            isinstance(value, (list, tuple)) and not isinstance(value, str)
        ):
            yield from flatten_metrics(value, key + "/")
        elif isinstance(value, (int, float)) or hasattr(value, "__float__"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                yield key, number


def to_json(document: Any) -> str:
    """Encode ``document`` as compact JSON with sorted keys (numpy values included)."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), default=_json_default
    )


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


class ResultsStore:
    """The results database under a results directory.

    Open one per process; the connection is not shared between threads.
    With ``readonly`` the database is opened in SQLite's read-only mode and
    every statement goes through a read-only authorizer, so no statement
    can change the store or create a file. The store must exist then.
    """

    def __init__(
        self, results_dir: Path | str, create: bool = True, readonly: bool = False
    ) -> None:
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / DB_NAME
        self.readonly = readonly
        if not self.path.exists() and (readonly or not create):
            raise ResultsError(
                f"{self.path}: results store not found",
                hint="save a run with --save first, or give --results DIR",
            )
        if readonly:
            self._open_readonly()
            return
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            # Transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so turn off
            # the module's implicit BEGIN.
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL syncs the WAL on every commit, so a committed run survives a
            # power cut too, not only a killed process.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._init_schema()
        except sqlite3.OperationalError as exc:
            # Raised when SQLite cannot open, create or lock the file, as in a
            # directory without write permission.
            raise ResultsError(
                f"{self.path}: cannot open the results store ({exc})",
                hint=f"check that you can write to {self.results_dir}, "
                "or choose another --results",
            ) from None
        except sqlite3.DatabaseError as exc:
            raise ResultsError(
                f"{self.path}: cannot open the results store ({exc})",
                hint="it is not a paracell results database; choose another --results",
            ) from None
        except OSError as exc:
            raise ResultsError(
                f"{self.results_dir}: cannot create ({exc.strerror})"
            ) from None

    def _open_readonly(self) -> None:
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        wal = self.path.with_name(DB_NAME + "-wal")
        if not os.access(self.results_dir, os.W_OK) and not wal.exists():
            # SQLite reads a WAL database only when it can create the -shm file
            # beside it. Without a -wal file no connection is open, so read the
            # file as immutable, without locks. NOTE: a writer of another user
            # that starts during the query could change pages under it.
            uri += "&immutable=1"
            log.info("%s: read-only directory, reading the store as immutable", wal)
        try:
            self._conn = sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.OperationalError as exc:
            raise ResultsError(
                f"{self.path}: cannot open the results store read-only ({exc})",
                hint="SQLite needs to create the store's -shm file beside it, so "
                f"check that you can write to {self.results_dir}",
            ) from None
        except sqlite3.DatabaseError as exc:
            raise ResultsError(
                f"{self.path}: cannot open the results store read-only ({exc})",
                hint="it is not a paracell results database; choose another --results",
            ) from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            found = "no schema version" if row is None else f"schema version {row[0]}"
            raise ResultsError(
                f"{self.path}: {found}, this paracell reads version {SCHEMA_VERSION}",
                hint="use a results directory written by this paracell version",
            )
        self._conn.set_authorizer(_ReadOnlyAuthorizer())

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _init_schema(self) -> None:
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise ResultsError(
                    f"{self.path}: schema version {row[0]}, this paracell reads "
                    f"version {SCHEMA_VERSION}",
                    hint="use a new --results directory",
                )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at once, so two writers queue on the
        # busy timeout instead of failing later on a lock upgrade.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def add_run(self, record: RunRecord) -> str:
        """Write one run and its metrics atomically; return its run id."""
        self.add_runs([record])
        return record.run_id

    def add_runs(
        self, records: Sequence[RunRecord], skip_existing_cells: bool = False
    ) -> int:
        """Write runs in one transaction; return how many were written.

        With ``skip_existing_cells``, a record whose ``cell_id`` is already
        stored is left out instead of raising, so a resumed sweep that races a
        finished cell still stores it once.
        """
        written = 0
        try:
            with self._transaction() as conn:
                for record in records:
                    if skip_existing_cells and record.cell_id is not None:
                        found = conn.execute(
                            "SELECT 1 FROM runs WHERE cell_id = ?", (record.cell_id,)
                        ).fetchone()
                        if found:
                            continue
                    self._insert(conn, record)
                    written += 1
        except sqlite3.IntegrityError as exc:
            raise ResultsError(f"{self.path}: failed to save the run ({exc})") from None
        except sqlite3.OperationalError as exc:
            raise ResultsError(
                f"{self.path}: failed to save the run ({exc})",
                hint="another process holds the store's write lock; retry",
            ) from None
        return written

    def _insert(self, conn: sqlite3.Connection, record: RunRecord) -> None:
        metrics = list(flatten_metrics(record.result))
        conn.execute(
            "INSERT INTO runs (run_id, created_at, command, tool_version, trace_name, "
            "trace_hash, trace_path, params_json, result_json, nr_metrics, sweep_id, "
            "cell_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.run_id,
                record.created_at,
                record.command,
                record.tool_version,
                record.trace_name,
                record.trace_hash,
                record.trace_path,
                to_json(record.params),
                to_json(record.result),
                len(metrics),
                record.sweep_id,
                record.cell_id,
            ),
        )
        conn.executemany(
            "INSERT INTO metrics (run_id, key, value) VALUES (?, ?, ?)",
            ((record.run_id, key, value) for key, value in metrics),
        )

    def add_sweep(
        self,
        sweep_id: str,
        name: str,
        spec_path: str,
        spec: Mapping[str, Any],
        nr_cells: int,
    ) -> None:
        """Record a sweep's specification once; a resumed sweep keeps the first row."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO sweeps (sweep_id, name, spec_path, spec_json, "
                "nr_cells, created_at, tool_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    sweep_id,
                    name,
                    spec_path,
                    to_json(spec),
                    nr_cells,
                    utc_now(),
                    __version__,
                ),
            )

    def cell_ids(self, candidates: Iterable[str] | None = None) -> set[str]:
        """Return the stored cell ids, restricted to ``candidates`` when given."""
        rows = self._conn.execute("SELECT cell_id FROM runs WHERE cell_id IS NOT NULL")
        stored = {r[0] for r in rows}
        return stored if candidates is None else stored & set(candidates)

    def cell_result(self, cell_id: str) -> dict[str, Any] | None:
        """Return the stored result of one sweep cell, or None."""
        row = self._conn.execute(
            "SELECT result_json FROM runs WHERE cell_id = ?", (cell_id,)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def query(
        self, sql: str, parameters: Sequence[Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only SQL statement; return column names and rows.

        An authorizer denies everything but reads (no ATTACH, DETACH,
        VACUUM INTO, transaction, write or setting pragma), and a writable
        connection is also switched to ``query_only`` for the statement.
        Raise ResultsError naming the denied action or SQLite's error.
        """
        if not self.readonly:
            self._conn.execute("PRAGMA query_only = ON")
        authorizer = _ReadOnlyAuthorizer()
        self._conn.set_authorizer(authorizer)
        try:
            cursor = self._conn.execute(sql, parameters)
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            if authorizer.denied is not None:
                raise ResultsError(
                    "query failed: the statement does not only read "
                    f"(SQLite asked for {authorizer.denied})",
                    hint="queries may only read: SELECT, WITH, VALUES, EXPLAIN "
                    "and pragmas such as table_info",
                ) from None
            raise ResultsError(
                f"query failed: {exc}",
                hint="tables are runs, metrics, sweeps and meta; see docs/reports.md",
            ) from None
        finally:
            if not self.readonly:
                self._conn.set_authorizer(None)
                self._conn.execute("PRAGMA query_only = OFF")
        return columns, rows

    def list_runs(
        self, limit: int | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Return the newest runs first, without their JSON bodies."""
        sql = (
            "SELECT run_id, created_at, command, trace_name, substr(trace_hash, 1, 12) "
            "AS trace_hash, nr_metrics, sweep_id FROM runs ORDER BY created_at DESC"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql)

    def integrity_check(self) -> str:
        """Return SQLite's ``integrity_check`` verdict (``"ok"`` when sound)."""
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])
