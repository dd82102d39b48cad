"""SMS: each representative's plan and limits, the SMSC's message ids and receipts, and the
daily digests.

- representative_sms: one row per representative who changed the defaults (no row: the
  defaults below). plan free|paid (free: one SMS part per message; paid: concatenated
  messages up to notifier.sms.SMS_PARTS_MAX parts), daily_cap (messages a school day,
  default notifier.sms.SMS_PER_DAY_MAX = 20), quiet hours from quiet_from_minute to
  quiet_to_minute of the school's local day (default 22:00-07:00; SMS due inside them are
  deferred to their end, never dropped; equal values: none), digest (one SMS summarising
  the day at digest_minute, default 20:00, instead of one per event).
- sms_parts: one row per submit_sm the SMSC accepted (its message id), with the delivery
  and part it carried, and the receipt's stat once it came. A receipt may come before the
  row (the SMSC is fast): both sides upsert.
- deliveries gain smsc_message_id (the first part's), sms_parts (how many), receipt_status
  and delivered_at_ms (every part receipted DELIVRD).
- sms_digests: the digest of one representative's period (ending at period_end_ms): the
  delivery that carried it and the deliveries it covered.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

from storage.migrations import split_statements

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UP = r"""
CREATE TABLE representative_sms (
    representative_id bigint  PRIMARY KEY REFERENCES representatives,
    plan              text    NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'paid')),
    daily_cap         integer NOT NULL DEFAULT 20 CHECK (daily_cap BETWEEN 0 AND 500),
    quiet_from_minute integer NOT NULL DEFAULT 1320 CHECK (quiet_from_minute BETWEEN 0 AND 1439),
    quiet_to_minute   integer NOT NULL DEFAULT 420 CHECK (quiet_to_minute BETWEEN 0 AND 1439),
    digest            boolean NOT NULL DEFAULT false,
    digest_minute     integer NOT NULL DEFAULT 1200 CHECK (digest_minute BETWEEN 0 AND 1439),
    updated_at_ms     bigint  NOT NULL DEFAULT 0
);

ALTER TABLE deliveries
    ADD COLUMN smsc_message_id text,
    ADD COLUMN sms_parts       integer,
    ADD COLUMN receipt_status  text,
    ADD COLUMN delivered_at_ms bigint;

CREATE TABLE sms_parts (
    smsc_message_id text    PRIMARY KEY,
    delivery_id     bigint  REFERENCES deliveries,  -- NULL until the submit side wrote it
    part            integer,
    parts           integer,
    submitted_at_ms bigint,
    stat            text,
    receipt_at_ms   bigint
);
CREATE INDEX sms_parts_delivery ON sms_parts (delivery_id);
CREATE INDEX sms_parts_submitted ON sms_parts (submitted_at_ms);

CREATE TABLE sms_digests (
    representative_id   bigint   NOT NULL REFERENCES representatives,
    period_end_ms       bigint   NOT NULL,
    carrier_delivery_id bigint   NOT NULL REFERENCES deliveries,
    covered             bigint[] NOT NULL,
    created_at_ms       bigint   NOT NULL,
    PRIMARY KEY (representative_id, period_end_ms)
);
"""

DOWN = """
DROP TABLE sms_digests;
DROP TABLE sms_parts;
ALTER TABLE deliveries DROP COLUMN smsc_message_id, DROP COLUMN sms_parts, DROP COLUMN receipt_status,
    DROP COLUMN delivered_at_ms;
DROP TABLE representative_sms;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
