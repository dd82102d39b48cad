"""The relay's read of unsent outbox rows, without walking every row ever sent.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The relay reads "WHERE sent_at_ms IS NULL ORDER BY id LIMIT n" and counts the backlog:
    # a partial index holds only the rows still to publish (a handful, or a backlog while the
    # broker is down), so both stay cheap however long the outbox grows.
    op.execute("CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at_ms IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX outbox_unsent")
