"""The ledger machine's checkpoints and the journal's judged time.

- accounts.counters: the per-account day counters (daily spend, free meal taken,
  grace meals used, item counts and period spend, low-balance alert state) as the
  last group commit left them, beside balance_kopecks (ledger.records.AccountCounters
  as a JSON array). A restart restores them instead of rebuilding them.
- journal.happened_at_ms: the time the rules judged a row at (the reader's time for
  an advice inside the offline window, else the gateway's). device_time_ms is NULL
  when the reader's clock was outside that window.
- outbox.event_id: unique, derived from the journal key, so a retried group commit
  never writes an event twice and consumers de-duplicate by it.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE accounts ADD COLUMN counters jsonb")
    op.execute("ALTER TABLE journal ADD COLUMN happened_at_ms bigint")
    op.execute("ALTER TABLE journal ALTER COLUMN device_time_ms DROP NOT NULL")
    op.execute("ALTER TABLE outbox ADD COLUMN event_id text")
    op.execute("UPDATE outbox SET event_id = 'outbox:' || id")
    op.execute("ALTER TABLE outbox ALTER COLUMN event_id SET NOT NULL")
    op.execute("CREATE UNIQUE INDEX outbox_event_id ON outbox (event_id)")


def downgrade() -> None:
    op.execute("DROP INDEX outbox_event_id")
    op.execute("ALTER TABLE outbox DROP COLUMN event_id")
    op.execute("ALTER TABLE journal DROP COLUMN happened_at_ms")
    op.execute("ALTER TABLE accounts DROP COLUMN counters")
