"""The notifier's tables: the events it took in (its durable de-duplication) and one delivery
record per (event, representative, channel).

- processed_events: one row per event the notifier has taken in from MQTT, keyed by the
  outbox's ``event_id``. MQTT QoS 1 is at least once: a redelivered event finds its row
  (``INSERT ... ON CONFLICT DO NOTHING``) and creates nothing. The row is written in the
  same transaction as the event's delivery records, so "taken in" and "deliveries made"
  cannot part in a crash. It keeps the notice as received (``ledger.notices``, JSON) so
  that the texts are rendered when each delivery is sent and the parents' API can list a
  child's events.
- deliveries: what the notifier owes one representative on one channel for one event.
  status: pending (due at next_attempt_at_ms), sending (claimed by the notifier process
  ``claimed_by`` until next_attempt_at_ms, its lease), sent, failed (a temporary failure;
  retried at next_attempt_at_ms), dead (given up: a permanent refusal or the attempts limit;
  the dead-letter state, listed by the partial index ``deliveries_dead``), cancelled (the
  representative was suspended or removed before it went out). ``address`` is where it
  went (e-mail address, phone, MQTT topic) at the time of the event.
  ``interrupted_attempts`` counts attempts whose process died during the send: such a
  message may have reached the peer, so the one sent again may be a duplicate (e-mail keeps
  its Message-ID, push its delivery id, so the receiving side can drop it).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

from storage.migrations import split_statements

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UP = r"""
CREATE TABLE processed_events (
    event_id       text    PRIMARY KEY,
    kind           text    NOT NULL,
    account_id     bigint  NOT NULL,
    school_id      integer NOT NULL,
    at_ms          bigint  NOT NULL,  -- when it happened (the notice's at_ms)
    created_at_ms  bigint  NOT NULL,  -- when the outbox row was written
    received_at_ms bigint  NOT NULL,  -- when the notifier took it in
    notice         jsonb   NOT NULL,  -- ledger.notices Struct as received
    deliveries     integer NOT NULL CHECK (deliveries >= 0)  -- delivery records made for it
);
CREATE INDEX processed_events_account ON processed_events (account_id, at_ms);

CREATE TABLE deliveries (
    id                   bigserial PRIMARY KEY,
    event_id             text     NOT NULL REFERENCES processed_events,
    representative_id    bigint   NOT NULL REFERENCES representatives,
    channel              text     NOT NULL CHECK (channel IN ('portal', 'sms', 'ussd', 'app_push', 'tv_push', 'email')),
    address              text     NOT NULL,
    status               text     NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'dead', 'cancelled')),
    attempts             integer  NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    interrupted_attempts integer  NOT NULL DEFAULT 0 CHECK (interrupted_attempts >= 0),
    next_attempt_at_ms   bigint   NOT NULL,  -- pending/failed: when due; sending: the lease's end
    claimed_by           text,               -- the notifier process sending it (status sending)
    last_error           text,
    created_at_ms        bigint   NOT NULL,
    updated_at_ms        bigint   NOT NULL,
    sent_at_ms           bigint,
    UNIQUE (event_id, representative_id, channel)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at_ms) WHERE status IN ('pending', 'sending', 'failed');
CREATE INDEX deliveries_representative ON deliveries (representative_id, id);
CREATE INDEX deliveries_dead ON deliveries (id) WHERE status = 'dead';
"""

DOWN = """
DROP TABLE deliveries;
DROP TABLE processed_events;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
