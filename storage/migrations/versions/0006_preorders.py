"""Meal pre-orders: what a pupil will eat on a day and meal period, editable until
``school_policies.preorder_lock_days`` days before that day (school time zone).

One row per product of a pupil's pre-order of one day and period; the staff API
replaces a day+period whole and notifies ``account:<id>`` so the gateway reloads it.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE preorders (
            account_id    bigint   NOT NULL REFERENCES accounts,
            day           date     NOT NULL,
            period        text     NOT NULL,
            product_code  integer  NOT NULL,
            quantity      smallint NOT NULL CHECK (quantity BETWEEN 1 AND 20),
            updated_at_ms bigint   NOT NULL,
            updated_by    text     NOT NULL,
            PRIMARY KEY (account_id, day, period, product_code)
        )
        """
    )
    # The kitchen's list of one day (every pupil of every school of the city).
    op.execute("CREATE INDEX preorders_day ON preorders (day)")


def downgrade() -> None:
    op.execute("DROP TABLE preorders")
