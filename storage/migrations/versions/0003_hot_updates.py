"""Room for HOT updates on the tables every group commit updates.

Each group commit rewrites the balances of the accounts it touched. With full
pages every such update also writes a new entry in the primary-key index; with
free space on the page PostgreSQL updates the row in place ("heap-only tuple").

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE accounts SET (fillfactor = 80)")
    op.execute("ALTER TABLE commands SET (fillfactor = 80)")


def downgrade() -> None:
    op.execute("ALTER TABLE accounts RESET (fillfactor)")
    op.execute("ALTER TABLE commands RESET (fillfactor)")
