"""Fleet fixtures: a registry on each backend (SQLite file, PostgreSQL schema of its own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.registry import PostgresRegistry, Registry, RegistryError, SqliteRegistry

POSTGRES_URL = os.environ.get("EDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A schema no other test uses, dropped afterwards; skips (fails under CI) without a server."""
    schema = f"fleet_test_{uuid.uuid4().hex[:10]}"
    try:
        PostgresRegistry(POSTGRES_URL, schema=schema).close()
    except RegistryError as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed: {err}", pytrace=False)
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {err}")
    yield schema
    drop_schema(schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(location, schema) of an empty registry on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db"), None
    schema: str = request.getfixturevalue("postgres_schema")
    return POSTGRES_URL, schema


@pytest.fixture
def registry(registry_location: tuple[str, str | None]) -> Iterator[Registry]:
    location, schema = registry_location
    opened: Registry = (
        PostgresRegistry(location, schema=schema)
        if schema is not None
        else SqliteRegistry(Path(location))
    )
    yield opened
    opened.close()
