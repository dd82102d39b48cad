"""Schema migrations through Alembic: ``upgrade(dsn)`` brings a database to head."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.config import Config

_HERE = Path(__file__).resolve().parent


def sqlalchemy_url(dsn: str) -> str:
    """An asyncpg DSN (postgresql://...) as SQLAlchemy's asyncpg URL."""
    parts = urlsplit(dsn)
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Blocking: run it before the event loop starts or in a worker thread."""
    command.upgrade(alembic_config(dsn), revision)
