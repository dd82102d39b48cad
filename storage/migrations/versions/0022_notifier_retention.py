"""The notifier's retention (storage.deliveries.purge_batch, docs/notifier.md "Retention"): the
indexes its batched deletes need, so that each batch reads only the rows it deletes.

- processed_events_received: the oldest events first (``received_at_ms`` is when the notifier took
  the event in: its de-duplication must outlive the broker's redelivery counted from then).
- sms_digests_carrier: a digest goes with its carrier delivery; without this index every deleted
  delivery would make PostgreSQL scan sms_digests for its foreign key.

(deliveries by event_id: the UNIQUE (event_id, representative_id, channel) index of 0009;
sms_parts by delivery_id: sms_parts_delivery of 0012.)

Plain CREATE INDEX: it blocks writes to these tables while it builds (seconds for a year of a
city's events); build them CONCURRENTLY by hand beforehand on a large live database, under the same
names, and this revision finds them (IF NOT EXISTS).

Revision ID: 0022
Revises: 0021
"""

from alembic import op

from storage.migrations import split_statements

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

UP = """
CREATE INDEX IF NOT EXISTS processed_events_received ON processed_events (received_at_ms);
CREATE INDEX IF NOT EXISTS sms_digests_carrier ON sms_digests (carrier_delivery_id);
"""

DOWN = """
DROP INDEX sms_digests_carrier;
DROP INDEX processed_events_received;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
