"""Partial indexes for a pupil's ledger: the money commands that debit or credit it.

Device rows always name the pupil in journal.account_id (indexed since 0001);
only money commands (device_id 0) can touch a pupil as the other side (a
sibling transfer). Partial indexes keep the cost off every tap's COPY.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX journal_command_debit ON journal (debit_account_id) WHERE device_id = 0")
    op.execute("CREATE INDEX journal_command_credit ON journal (credit_account_id) WHERE device_id = 0")


def downgrade() -> None:
    op.execute("DROP INDEX journal_command_credit")
    op.execute("DROP INDEX journal_command_debit")
