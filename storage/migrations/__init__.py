"""Alembic migrations of the ecard schema (plain SQL through op.execute)."""
