"""The fleet's registry: devices, models, rollouts with per-device progress, drift summaries.

One small interface (:class:`Registry`) over SQL that SQLite and PostgreSQL both speak
(``INSERT ... ON CONFLICT``); each backend only supplies its connection, its placeholder and its
schema. SQLite goes through sqlite-utils and is the default; a ``postgresql://`` URL selects
PostgreSQL for sites where several ``fleet serve`` workers share one registry.

Every method is synchronous, commits before it returns, and may be called from one thread at a
time per instance. Several processes may share one registry: progress changes that must happen
once (a stage advancing, a device being sent its desired state) are compare-and-set updates that
say whether this caller won.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "DeviceRecord",
    "DriftRecord",
    "ModelRecord",
    "PostgresRegistry",
    "RawJson",
    "Registry",
    "RegistryError",
    "RolloutDevice",
    "RolloutRecord",
    "SqliteRegistry",
    "open_registry",
]


class RegistryError(Exception):
    """The registry cannot be opened or refuses a change (the message says which and why)."""


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    site: str
    state: str = "unknown"  # online, stopped, offline (from the retained status), or unknown
    line: str | None = None
    tags: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    agent_version: str | None = None
    model: str | None = None
    model_version: str | None = None
    desired_model: str | None = None
    desired_version: str | None = None
    last_seen: float | None = None
    health: dict[str, float] = field(default_factory=dict)  # the last heartbeat's counters


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    sha256: str
    size: int
    path: str  # where the manager keeps the bundle file
    manifest: dict[str, Any]
    baseline: dict[str, Any] | None = None
    signed: bool = False
    published: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    model: str
    version: str
    selector: str
    stages: list[str]  # stage names in order, e.g. ["canary", "wave 10%", "wave 100%"]
    gates: dict[str, float]  # see fleet.rollouts.Gates
    timeout_s: float
    state: str = "running"  # running, paused, halted, aborted, rolled_back, completed
    stage: int = 0
    reason: str | None = None
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class RolloutDevice:
    rollout_id: str
    device: str
    site: str
    stage: int
    state: str = "pending"  # see fleet.rollouts.DeviceState
    step: str | None = None  # the last lifecycle step acknowledged
    reason: str | None = None
    previous_version: str | None = None
    sent_at: float | None = None
    updated: float = 0.0


@dataclass(frozen=True)
class DriftRecord:
    device: str
    seq: int
    site: str
    model: str
    model_version: str
    window_start: float
    window_end: float
    # name -> FeatureSummary fields; RawJson when written straight from a payload
    features: dict[str, Any] | RawJson
    outputs: dict[str, Any] | RawJson = field(default_factory=dict)
    received: float = 0.0


_JSON_COLUMNS = {"tags", "labels", "health", "manifest", "baseline", "stages", "gates"}
_JSON_COLUMNS |= {"features", "outputs"}

# Column types per table, in a portable spelling; each backend maps them.
_SCHEMA: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "devices": (
        {
            "id": "text",
            "site": "text",
            "state": "text",
            "line": "text",
            "tags": "text",
            "labels": "text",
            "agent_version": "text",
            "model": "text",
            "model_version": "text",
            "desired_model": "text",
            "desired_version": "text",
            "last_seen": "float",
            "health": "text",
        },
        ("id",),
    ),
    "models": (
        {
            "name": "text",
            "version": "text",
            "sha256": "text",
            "size": "int",
            "path": "text",
            "manifest": "text",
            "baseline": "text",
            "signed": "int",
            "published": "float",
        },
        ("name", "version"),
    ),
    "rollouts": (
        {
            "id": "text",
            "model": "text",
            "version": "text",
            "selector": "text",
            "stages": "text",
            "gates": "text",
            "timeout_s": "float",
            "state": "text",
            "stage": "int",
            "reason": "text",
            "created": "float",
            "updated": "float",
        },
        ("id",),
    ),
    "rollout_devices": (
        {
            "rollout_id": "text",
            "device": "text",
            "site": "text",
            "stage": "int",
            "state": "text",
            "step": "text",
            "reason": "text",
            "previous_version": "text",
            "sent_at": "float",
            "updated": "float",
        },
        ("rollout_id", "device"),
    ),
    "drift": (
        {
            "device": "text",
            "seq": "int",
            "site": "text",
            "model": "text",
            "model_version": "text",
            "window_start": "float",
            "window_end": "float",
            "features": "text",
            "outputs": "text",
            "received": "float",
        },
        ("device", "seq"),
    ),
}
_INDEXES = (
    ("drift", ("model", "window_end")),
    ("rollout_devices", ("device",)),
)


class RawJson(str):
    """A value already encoded as JSON (by pydantic, which is faster), stored as it is."""

    __slots__ = ()


def _encode(column: str, value: object) -> object:
    if column in _JSON_COLUMNS:
        if value is None or isinstance(value, RawJson):
            return value
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    return value


def _decode_row(cls: type[Any], row: dict[str, Any]) -> Any:
    values = {}
    for item in fields(cls):
        value = row.get(item.name)
        if item.name in _JSON_COLUMNS and isinstance(value, str):
            value = json.loads(value)
        if item.name == "signed":
            value = bool(value)
        if value is None and item.name in {"tags", "labels", "health", "outputs"}:
            continue  # keep the dataclass default
        values[item.name] = value
    return cls(**values)


class Registry(ABC):
    """The registry interface, written once in portable SQL; backends supply the connection."""

    placeholder = "?"

    # ---------------------------------------------------------------------- backend hooks

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    @abstractmethod
    def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """Run one statement once per row of parameters; return the rows it changed."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        """Run one query; return its rows as dicts."""

    @abstractmethod
    def transaction(self) -> Any:
        """A context manager: everything inside commits together or not at all."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection. The registry cannot be used afterwards."""

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _upsert(self, table: str, row: dict[str, object], *, update: bool = True) -> int:
        names = [name for name in row if name in _SCHEMA[table][0]]
        sql = self._upsert_sql(table, names, update=update)
        return self._execute(sql, [_encode(name, row[name]) for name in names])

    def _upsert_sql(self, table: str, names: list[str], *, update: bool) -> str:
        _columns, keys = _SCHEMA[table]
        marks = ", ".join("?" for _ in names)
        conflict = ", ".join(keys)
        changes = ", ".join(f"{name} = excluded.{name}" for name in names if name not in keys)
        action = f"DO UPDATE SET {changes}" if update and changes else "DO NOTHING"
        # Table and column names come from _SCHEMA only; every value is a bound parameter.
        sql = (
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT ({conflict}) {action}"
        )
        return self._sql(sql)

    def _update(
        self,
        table: str,
        where: dict[str, object],
        changes: dict[str, object],
        expect: dict[str, object] | None = None,
    ) -> bool:
        columns, _keys = _SCHEMA[table]
        unknown = sorted(set(changes) - set(columns))
        if unknown:
            raise RegistryError(f"{table} has no column {', '.join(unknown)}")
        conditions = {**where, **(expect or {})}
        sets = ", ".join(f"{name} = ?" for name in changes)
        clauses = " AND ".join(f"{name} = ?" for name in conditions)
        params = [_encode(k, v) for k, v in changes.items()]
        params += [_encode(k, v) for k, v in conditions.items()]
        sql = f"UPDATE {table} SET {sets} WHERE {clauses}"  # noqa: S608 (names from _SCHEMA)
        return self._execute(self._sql(sql), params) > 0

    # ---------------------------------------------------------------------------- devices

    def record_status(
        self,
        device: str,
        site: str,
        *,
        state: str,
        ts: float,
        agent_version: str | None,
        model: str | None,
        model_version: str | None,
        labels: dict[str, str],
    ) -> None:
        """A device's retained status arrived: create or update its row."""
        tags = [tag.strip() for tag in labels.get("tags", "").split(",") if tag.strip()]
        self._upsert(
            "devices",
            {
                "id": device,
                "site": site,
                "state": state,
                "line": labels.get("line"),
                "tags": tags,
                "labels": labels,
                "agent_version": agent_version,
                "model": model,
                "model_version": model_version,
                "last_seen": ts,
            },
        )

    def record_heartbeat(
        self,
        device: str,
        site: str,
        *,
        ts: float,
        model: str | None,
        model_version: str | None,
        health: dict[str, float],
    ) -> None:
        """A heartbeat arrived: the device is alive and runs ``model_version``."""
        changed = self._update(
            "devices",
            {"id": device},
            {
                "last_seen": ts,
                "model": model,
                "model_version": model_version,
                "health": health,
                "state": "online",
            },
        )
        if not changed:
            self._upsert(
                "devices",
                {
                    "id": device,
                    "site": site,
                    "state": "online",
                    "model": model,
                    "model_version": model_version,
                    "last_seen": ts,
                    "health": health,
                },
            )

    def set_desired(self, device: str, model: str | None, version: str | None) -> None:
        self._update(
            "devices", {"id": device}, {"desired_model": model, "desired_version": version}
        )

    def device(self, device: str) -> DeviceRecord | None:
        rows = self._query(self._sql("SELECT * FROM devices WHERE id = ?"), [device])
        return _decode_row(DeviceRecord, rows[0]) if rows else None

    def devices(
        self, *, site: str | None = None, line: str | None = None, tag: str | None = None
    ) -> list[DeviceRecord]:
        """Devices matching every filter given, by site then id."""
        clauses, params = [], []
        if site is not None:
            clauses.append("site = ?")
            params.append(site)
        if line is not None:
            clauses.append("line = ?")
            params.append(line)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM devices{where} ORDER BY site, id"  # noqa: S608 (fixed clauses)
        rows = self._query(self._sql(sql), params)
        found: list[DeviceRecord] = [_decode_row(DeviceRecord, row) for row in rows]
        return [d for d in found if tag is None or tag in d.tags]

    # ----------------------------------------------------------------------------- models

    def add_model(self, model: ModelRecord) -> None:
        """Register a published bundle. The same version with other contents is refused."""
        existing = self.model(model.name, model.version)
        if existing is not None:
            if existing.sha256 != model.sha256:
                raise RegistryError(
                    f"{model.label} is already published with other contents (sha256 "
                    f"{existing.sha256[:12]}...); publish it under a new version"
                )
            return
        row = {item.name: getattr(model, item.name) for item in fields(model)}
        self._upsert("models", row, update=False)

    def model(self, name: str, version: str) -> ModelRecord | None:
        rows = self._query(
            self._sql("SELECT * FROM models WHERE name = ? AND version = ?"), [name, version]
        )
        return _decode_row(ModelRecord, rows[0]) if rows else None

    def models(self, name: str | None = None) -> list[ModelRecord]:
        where, params = (" WHERE name = ?", [name]) if name is not None else ("", [])
        sql = f"SELECT * FROM models{where} ORDER BY name, published"  # noqa: S608 (fixed clauses)
        rows = self._query(self._sql(sql), params)
        return [_decode_row(ModelRecord, row) for row in rows]

    # --------------------------------------------------------------------------- rollouts

    def create_rollout(self, rollout: RolloutRecord, devices: list[RolloutDevice]) -> None:
        with self.transaction():
            self._upsert(
                "rollouts",
                {item.name: getattr(rollout, item.name) for item in fields(rollout)},
                update=False,
            )
            for device in devices:
                self._upsert(
                    "rollout_devices",
                    {item.name: getattr(device, item.name) for item in fields(device)},
                    update=False,
                )

    def rollout(self, rollout_id: str) -> RolloutRecord | None:
        rows = self._query(self._sql("SELECT * FROM rollouts WHERE id = ?"), [rollout_id])
        return _decode_row(RolloutRecord, rows[0]) if rows else None

    def rollouts(self, states: Sequence[str] | None = None) -> list[RolloutRecord]:
        rows = self._query("SELECT * FROM rollouts ORDER BY created")
        found: list[RolloutRecord] = [_decode_row(RolloutRecord, row) for row in rows]
        return [r for r in found if states is None or r.state in states]

    def update_rollout(
        self, rollout_id: str, *, expect: dict[str, object] | None = None, **changes: object
    ) -> bool:
        """Change a rollout; with ``expect``, only if those columns still hold those values."""
        changes.setdefault("updated", time.time())
        return self._update("rollouts", {"id": rollout_id}, changes, expect)

    def rollout_devices(
        self, rollout_id: str | None = None, *, device: str | None = None
    ) -> list[RolloutDevice]:
        clauses, params = [], []
        if rollout_id is not None:
            clauses.append("rollout_id = ?")
            params.append(rollout_id)
        if device is not None:
            clauses.append("device = ?")
            params.append(device)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM rollout_devices{where} ORDER BY stage, device"  # noqa: S608
        rows = self._query(self._sql(sql), params)
        return [_decode_row(RolloutDevice, row) for row in rows]

    def update_rollout_device(
        self,
        rollout_id: str,
        device: str,
        *,
        expect: dict[str, object] | None = None,
        **changes: object,
    ) -> bool:
        """Change one device's progress; with ``expect``, only if it still matches (CAS)."""
        changes.setdefault("updated", time.time())
        return self._update(
            "rollout_devices", {"rollout_id": rollout_id, "device": device}, changes, expect
        )

    # ------------------------------------------------------------------------------ drift

    def add_drift(self, records: Sequence[DriftRecord]) -> int:
        """Store summaries; one already stored (same device and seq) is skipped. Returns how
        many were new."""
        if not records:
            return 0
        names = list(_SCHEMA["drift"][0])
        sql = self._upsert_sql("drift", names, update=False)
        # One key order for every writer: two workers storing copies of the same summaries
        # then wait for each other instead of deadlocking.
        ordered = sorted(records, key=lambda record: (record.device, record.seq))
        rows = [[_encode(name, getattr(record, name)) for name in names] for record in ordered]
        with self.transaction():
            return self._execute_many(sql, rows)

    def drift_count(self) -> int:
        """How many summaries are stored."""
        rows = self._query("SELECT COUNT(*) AS n FROM drift")
        return int(rows[0]["n"])

    def drift(
        self,
        *,
        model: str | None = None,
        version: str | None = None,
        site: str | None = None,
        since: float | None = None,
        devices: Sequence[str] | None = None,
    ) -> list[DriftRecord]:
        """Stored summaries matching every filter, oldest first."""
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("model", model), ("model_version", version), ("site", site)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("window_end >= ?")
            params.append(since)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM drift{where} ORDER BY window_end"  # noqa: S608 (fixed clauses)
        rows = self._query(self._sql(sql), params)
        records: list[DriftRecord] = [_decode_row(DriftRecord, row) for row in rows]
        if devices is not None:
            wanted = set(devices)
            records = [r for r in records if r.device in wanted]
        return records

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _switch_to_wal(conn: sqlite3.Connection, *, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while another connection holds the file.

    Switching a new file to WAL needs it alone, and SQLite may answer "database is locked" at
    once there instead of waiting out the busy timeout: workers starting together on a new
    registry would otherwise see some of them exit.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SqliteRegistry(Registry):
    """The default registry: one SQLite file (WAL, so readers never wait for the writer)."""

    def __init__(self, path: Path) -> None:
        import sqlite_utils

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: each statement commits unless transaction() groups them.
            self._conn = sqlite3.connect(
                path, isolation_level=None, timeout=30, check_same_thread=False
            )
            _switch_to_wal(self._conn, timeout=30)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._db = sqlite_utils.Database(self._conn)
            # One write transaction, its lock taken first: a schema read before another worker
            # changed it could not be written after (SQLite says "locked" at once, not waiting).
            with self.transaction():
                for table, (columns, keys) in _SCHEMA.items():
                    types = {name: float if kind == "float" else int if kind == "int" else str
                             for name, kind in columns.items()}  # fmt: skip
                    self._db[table].create(types, pk=keys, if_not_exists=True)  # type: ignore[union-attr]
                for table, columns_ in _INDEXES:
                    self._db[table].create_index(columns_, if_not_exists=True)  # type: ignore[union-attr]
        except (OSError, sqlite3.Error) as err:
            raise RegistryError(f"cannot open the registry {path}: {err}") from err
        self.path = path

    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        try:
            return self._conn.execute(sql, tuple(params)).rowcount
        except sqlite3.Error as err:
            raise RegistryError(f"registry {self.path}: {err}") from err

    def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        try:
            return self._conn.executemany(sql, [tuple(row) for row in rows]).rowcount
        except sqlite3.Error as err:
            raise RegistryError(f"registry {self.path}: {err}") from err

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        try:
            return list(self._db.query(sql, tuple(params)))
        except sqlite3.Error as err:
            raise RegistryError(f"registry {self.path}: {err}") from err

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


_PG_TYPES = {"text": "TEXT", "int": "BIGINT", "float": "DOUBLE PRECISION"}
# The advisory lock that serializes creating the registry's schema and tables.
_SCHEMA_LOCK = 0x666C656574  # "fleet"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


class PostgresRegistry(Registry):
    """The registry in PostgreSQL, for sites where several manager workers share it.

    ``schema`` keeps this registry's tables in their own schema (created if missing).
    """

    placeholder = "%s"

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        import psycopg
        from psycopg.rows import dict_row

        if schema is not None and not _IDENTIFIER.match(schema):
            raise RegistryError(f"schema {schema!r} must be a lowercase SQL identifier")
        self._errors: type[Exception] = psycopg.Error
        try:
            self._conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        except psycopg.Error as err:
            raise RegistryError(f"cannot connect to the registry database: {err}") from err
        self.url = url
        if schema is not None:
            self._execute(f"SET search_path TO {schema}")
        # Only missing tables are created: DDL on a live table takes locks that would make the
        # workers' writes wait each time a CLI command opens the registry. (Before its schema
        # exists, current_schema() is NULL, so every table counts as missing.)
        if self._missing_tables():
            with self.transaction():
                # Workers starting together on a new database would collide in the catalog
                # ("duplicate key ... pg_namespace"), IF NOT EXISTS or not: one at a time.
                self._query("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                if schema is not None:
                    self._execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                self._create_tables(self._missing_tables())

    def _missing_tables(self) -> list[str]:
        present = {
            row["name"]
            for row in self._query(
                "SELECT table_name AS name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        }
        return [table for table in _SCHEMA if table not in present]

    def _create_tables(self, tables: list[str]) -> None:
        for table in tables:
            columns, keys = _SCHEMA[table]
            spec = ", ".join(f"{name} {_PG_TYPES[kind]}" for name, kind in columns.items())
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {table} ({spec}, PRIMARY KEY ({', '.join(keys)}))"
            )
            for indexed, columns_ in _INDEXES:
                if indexed == table:
                    name = f"idx_{table}_{'_'.join(columns_)}"
                    self._execute(
                        f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(columns_)})"
                    )

    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        try:
            cursor = self._conn.execute(sql.encode(), tuple(params))
        except self._errors as err:
            raise RegistryError(f"registry database: {err}") from err
        return max(cursor.rowcount, 0)

    def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        # One statement per row keeps rowcount exact (executemany reports only the last).
        return sum(self._execute(sql, row) for row in rows)

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = self._conn.execute(sql.encode(), tuple(params)).fetchall()
        except self._errors as err:
            raise RegistryError(f"registry database: {err}") from err
        return rows

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            with self._conn.transaction():
                yield
        except self._errors as err:
            raise RegistryError(f"registry database: {err}") from err

    def close(self) -> None:
        self._conn.close()


def open_registry(location: str, *, schema: str | None = None) -> Registry:
    """``postgresql://...`` (or ``postgres://``) opens PostgreSQL; anything else is a SQLite
    file path (``sqlite:///path`` also works)."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresRegistry(location, schema=schema)
    if location.startswith("sqlite:///"):
        location = location[len("sqlite:///") :]
    return SqliteRegistry(Path(location))
