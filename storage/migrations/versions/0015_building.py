"""The building: the journal's passages name their grant, schools choose anti-passback,
and what happens at the doors besides entries and exits is recorded.

- journal.granted_txn: a PASSAGE's CARD_PRESENTED (the grant it used up; a restart
  keeps it used).
- school_policies.anti_passback (ledger.codes.PassbackMode: 0 off, 1 soft, 2 hard) and
  passback_entry_interval_s (timed anti-passback: two entries at least this far apart;
  0: off).
- access_events: grants nobody went through, anti-passback violations (allowed or
  refused), presence reconciliations (after an evacuation), fire alarms with their muster
  lists, turnstile releases and resets, as ledger.records.AccessEvent; unique by (kind,
  device_id, device_txn, account_id), so a retried group commit or a replay records each
  once.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

from storage.migrations import split_statements

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UP = """
ALTER TABLE journal ADD COLUMN granted_txn bigint;
ALTER TABLE school_policies ADD COLUMN anti_passback smallint NOT NULL DEFAULT 0
    CHECK (anti_passback IN (0, 1, 2));
ALTER TABLE school_policies ADD COLUMN passback_entry_interval_s integer NOT NULL DEFAULT 0
    CHECK (passback_entry_interval_s BETWEEN 0 AND 86400);
CREATE TABLE access_events (
    id          bigserial PRIMARY KEY,
    kind        smallint NOT NULL,
    school_id   bigint   NOT NULL,
    account_id  bigint   NOT NULL,  -- 0: school-wide
    device_id   bigint   NOT NULL,  -- 0: not a device's
    device_txn  bigint   NOT NULL,
    direction   smallint,
    at_ms       bigint   NOT NULL,
    detail      text     NOT NULL DEFAULT ''
);
-- one record per (what, whose key, which pupil): a retried group commit or a replay
-- writes nothing twice; a school officer's reconciliations (key 0:0) are not keyed
CREATE UNIQUE INDEX access_events_key ON access_events (kind, device_id, device_txn, account_id)
    WHERE device_id <> 0 OR device_txn <> 0;
CREATE INDEX access_events_school_time ON access_events (school_id, at_ms);
"""

DOWN = """
DROP TABLE access_events;
ALTER TABLE school_policies DROP COLUMN passback_entry_interval_s;
ALTER TABLE school_policies DROP COLUMN anti_passback;
ALTER TABLE journal DROP COLUMN granted_txn;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
