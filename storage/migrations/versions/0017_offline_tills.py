"""Offline tills with bounded risk: what a school's tills may sell alone when they cannot reach
the gateway (docs/building.md, docs/protocol.md 4.16 and 10.14).

- school_policies.offline_floor_kopecks: the most one pupil may spend offline in total, over
  every till of the school (0: the school's tills sell nothing offline; the default).
- school_policies.offline_sales_per_card_max: consecutive offline sales one card may make
  before it must be seen online again.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

from storage.migrations import split_statements

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UP = """
ALTER TABLE school_policies ADD COLUMN offline_floor_kopecks bigint NOT NULL DEFAULT 0
    CHECK (offline_floor_kopecks BETWEEN 0 AND 4294967295);
ALTER TABLE school_policies ADD COLUMN offline_sales_per_card_max integer NOT NULL DEFAULT 0
    CHECK (offline_sales_per_card_max BETWEEN 0 AND 255);
"""

DOWN = """
ALTER TABLE school_policies DROP COLUMN offline_sales_per_card_max;
ALTER TABLE school_policies DROP COLUMN offline_floor_kopecks;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
