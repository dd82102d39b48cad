"""A group commit's events for parents as bytes PostgreSQL does not parse; the relay takes them apart.

Since migration 0024 the journal writer stores a commit's events as outbox rows of kind
``batch``, each with the JSON array of up to 64 ``ledger.records.OutboxEvent``s as its
``payload`` (jsonb). PostgreSQL parsed that JSON into jsonb on every commit, and parsed it
again (rendering each event back to text) on every read of the relay, for data that only
the relay takes apart and only MQTT consumers read.

- ``batch_events`` (bytea): a batch row's events, msgspec's JSON of the OutboxEvent array
  exactly as the gateway encoded it, compressed with lz4 where the server has it (a 35-event
  batch: 7,431 -> 1,597 bytes; 5.6 -> 4.4 us of backend CPU per journaled decision, fewer
  TOAST chunks to insert; pglz took 5.9), else stored out of line uncompressed (EXTERNAL,
  as 0024 found best without lz4; the embedded PostgreSQL of ``make run`` has no lz4). Its
  ``payload`` is NULL; the rows the staff and parents' APIs write (one event each) keep their
  jsonb ``payload`` and have no ``batch_events``. A CHECK holds each row to one of the two.
- ``outbox_batch``: a composite type, one batch row as the writer sends it: (the first
  event's id, created_at_ms, events, batch_events). The group commit sends its rows as ONE
  parameter, an array of it in PostgreSQL's binary format (as ``journal_row``, 0023, and
  ``account_checkpoint``, 0025).
- ``outbox_events`` reads ``batch_events`` as JSON (``convert_from(…)::jsonb``): the view
  stays what tests and tools look events up in. The relay no longer reads through it: it
  reads the rows and splits the batches with msgspec (``storage.outbox.pending``).

Measured on the gateway's own batches of 50 (``loadtests.journal_cost``'s dataset, four
databases side by side in interleaved rounds): inserting a commit's outbox rows cost the
backend 12.6 / 13.3 us per journaled decision as jsonb, 7.8 / 7.4 as bytea.

Revision ID: 0026
Revises: 0025
"""

import importlib

from alembic import op

from storage.migrations import split_statements

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

VIEW = """
CREATE VIEW outbox_events AS
SELECT o.id AS row_id, x.n AS position, x.v->>0 AS event_id, x.v->>1 AS kind, (x.v->>2)::bigint AS account_id,
       x.v->3 AS payload, (x.v->>4)::bigint AS created_at_ms, o.sent_at_ms
FROM outbox AS o
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN o.kind = 'batch' THEN convert_from(o.batch_events, 'UTF8')::jsonb
         ELSE jsonb_build_array(jsonb_build_array(o.event_id, o.kind, o.account_id, o.payload, o.created_at_ms))
    END
) WITH ORDINALITY AS x(v, n);
"""

UP = """
DROP VIEW outbox_events;
ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE outbox ADD COLUMN batch_events bytea;
ALTER TABLE outbox ALTER COLUMN batch_events SET STORAGE EXTERNAL;
UPDATE outbox SET batch_events = convert_to(payload::text, 'UTF8'), payload = NULL WHERE kind = 'batch';
ALTER TABLE outbox ADD CONSTRAINT outbox_payload_or_batch
    CHECK (CASE WHEN kind = 'batch' THEN payload IS NULL AND batch_events IS NOT NULL
                ELSE payload IS NOT NULL AND batch_events IS NULL END);
CREATE TYPE outbox_batch AS (
    first_event_id text,
    created_at_ms  bigint,
    events         integer,
    batch_events   bytea
);
""" + VIEW

DOWN = """
DROP TYPE outbox_batch;
DROP VIEW outbox_events;
ALTER TABLE outbox DROP CONSTRAINT outbox_payload_or_batch;
UPDATE outbox SET payload = convert_from(batch_events, 'UTF8')::jsonb WHERE kind = 'batch';
ALTER TABLE outbox DROP COLUMN batch_events;
ALTER TABLE outbox ALTER COLUMN payload SET NOT NULL;
"""


# One block, not split into statements: lz4 where the server was built with it.
LZ4 = """
DO $$
BEGIN
    ALTER TABLE outbox ALTER COLUMN batch_events SET COMPRESSION lz4;
    ALTER TABLE outbox ALTER COLUMN batch_events SET STORAGE EXTENDED;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'outbox.batch_events stays uncompressed: this server has no lz4';
END
$$
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)
    op.execute(LZ4)


def downgrade() -> None:
    previous = importlib.import_module("storage.migrations.versions.0024_outbox_batch_rows")
    for statement in split_statements(DOWN + previous.VIEW):
        op.execute(statement)
