"""The parents' events of a group commit in one outbox row per 64; ``outbox_events`` reads every event.

The journal writer wrote an outbox row per event: a heap tuple with its jsonb payload and
three index entries (``outbox_pkey``, ``outbox_event_id``, ``outbox_unsent``), and the
relay later rewrote each row to set ``sent_at_ms`` (a non-HOT update: the partial index's
predicate column changes, so every index gets a new entry again). Now a group commit writes
its events as rows of kind ``batch`` (``storage.outbox.BATCH_KIND``), up to
``storage.outbox.ROW_EVENTS_MAX`` each (one row at the held rate): the payload is the
JSON array of its ``ledger.records.OutboxEvent``s ([event_id, kind, account_id, notice,
created_at_ms] each, in decision order) and ``events`` says how many. The relay publishes
them in order and marks the row once every one of them is acknowledged. Measured on the
gateway's own batches of 50 (``loadtests.journal_cost``'s dataset, side by side): 42.3 ->
35.2 us of PostgreSQL backend CPU per journaled decision, and WAL 996 -> 825 bytes.

- ``events``: how many events the row holds (1 for the single-event rows the staff and
  parents' APIs write); the relay's backlog sums it.
- ``payload`` is stored out of line uncompressed (STORAGE EXTERNAL): a batch's array is
  several kB, and pglz compressing it cost the backend more CPU (2 us per decision) than
  the extra WAL saved. Rows of one event stay inline as before.
- ``outbox_events``: one row per event, whatever row holds it: (row_id, position, event_id,
  kind, account_id, payload, created_at_ms, sent_at_ms), ordered by (row_id, position) in
  publication order. The relay reads through it; so can anyone who looks for an event.

Revision ID: 0024
Revises: 0023
"""

from alembic import op

from storage.migrations import split_statements

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

# The view as this revision made it (migration 0026's downgrade makes it again).
VIEW = """
CREATE VIEW outbox_events AS
SELECT o.id AS row_id, x.n AS position, x.v->>0 AS event_id, x.v->>1 AS kind, (x.v->>2)::bigint AS account_id,
       x.v->3 AS payload, (x.v->>4)::bigint AS created_at_ms, o.sent_at_ms
FROM outbox AS o
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN o.kind = 'batch' THEN o.payload
         ELSE jsonb_build_array(jsonb_build_array(o.event_id, o.kind, o.account_id, o.payload, o.created_at_ms))
    END
) WITH ORDINALITY AS x(v, n);
"""

UP = """
ALTER TABLE outbox ADD COLUMN events integer NOT NULL DEFAULT 1 CHECK (events >= 1);
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
""" + VIEW

# Back to a row per event: the batch rows' events become rows of their own (new ids, in
# the same order), sent or not as their batch row was.
DOWN = """
DROP VIEW outbox_events;
INSERT INTO outbox (event_id, kind, account_id, payload, created_at_ms, sent_at_ms)
SELECT x.v->>0, x.v->>1, (x.v->>2)::bigint, x.v->3, (x.v->>4)::bigint, o.sent_at_ms
FROM outbox AS o CROSS JOIN LATERAL jsonb_array_elements(o.payload) WITH ORDINALITY AS x(v, n)
WHERE o.kind = 'batch'
ORDER BY o.id, x.n;
DELETE FROM outbox WHERE kind = 'batch';
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTENDED;
ALTER TABLE outbox DROP COLUMN events;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
