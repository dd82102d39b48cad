"""Kindergartens: trusted persons (a pupil's representatives) carry cards of their own to bring
and collect the child, and a school may require that a child never passes without one.

- trusted_cards: a representative's card (identifier), usable at the turnstiles of the
  representative's school while the representative is neither suspended nor removed. An
  identifier is a pupil's card or a trusted person's, never both (the staff API checks it).
- school_policies.escort_required: a child's card opens a turnstile only within a minute after
  the card of one of the child's trusted persons at the same turnstile (a kindergarten).

Revision ID: 0016
Revises: 0015
"""

from alembic import op

from storage.migrations import split_statements

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UP = """
CREATE TABLE trusted_cards (
    identifier        bytea  PRIMARY KEY CHECK (length(identifier) BETWEEN 4 AND 16),
    representative_id bigint NOT NULL REFERENCES representatives,
    added_by          text   NOT NULL,
    added_at_ms       bigint NOT NULL
);
CREATE INDEX trusted_cards_representative ON trusted_cards (representative_id);
ALTER TABLE school_policies ADD COLUMN escort_required boolean NOT NULL DEFAULT false;
"""

DOWN = """
ALTER TABLE school_policies DROP COLUMN escort_required;
DROP TABLE trusted_cards;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
