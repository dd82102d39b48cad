"""Alembic migrations of the ecard schema (plain SQL through op.execute)."""

from __future__ import annotations

import re

# A statement ends with ";" at the end of a line (a trailing "-- comment" allowed).
_STATEMENT_END = re.compile(r";[ \t]*(?:--[^\n]*)?\n")


def split_statements(sql: str) -> list[str]:
    """One command per item: the asyncpg driver prepares each statement separately."""
    return [statement.strip() for statement in _STATEMENT_END.split(sql + "\n") if statement and statement.strip()]
