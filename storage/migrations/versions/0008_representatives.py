"""Pupils' representatives (parents, grandparents, nannies, guardians), connected through
the school by an application: who is told of a pupil's entries, meals and cards, and how.

- representatives: one row per application. The person (full name, relation, phone in
  E.164 +7XXXXXXXXXX, e-mail), the channels (portal, sms, ussd, app_push, tv_push, email)
  and the event kinds (ledger.codes.OutboxKind strings) they want, the date of their
  consent to the processing of personal data, who registered it and when. Suspended
  (suspended_at_ms) and removed (removed_at_ms) representatives are told nothing; a
  removed row is kept for the audit trail and never changes again.
- representative_pupils: the pupils an application covers (all of the same school).
  Keyed by the pupil first: "who should hear of account X" is the notifier's question.

The kinds are not checked here: ledger.codes.OutboxKind is their one definition and may
grow without a migration; the staff API validates them. Relations and channels are the
leaflet's fixed lists.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

from storage.migrations import split_statements

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UP = r"""
CREATE TABLE representatives (
    id               bigserial PRIMARY KEY,
    school_id        integer  NOT NULL REFERENCES schools,
    full_name        text     NOT NULL CHECK (length(full_name) BETWEEN 1 AND 200),
    relation         text     NOT NULL CHECK (relation IN ('parent', 'grandmother', 'grandfather', 'nanny',
                                                           'guardian', 'other')),
    phone            text     NOT NULL CHECK (phone ~ '^\+7[0-9]{10}$'),
    email            text     CHECK (email IS NULL OR (length(email) <= 254 AND email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$')),
    channels         text[]   NOT NULL CHECK (cardinality(channels) >= 1
                                              AND channels <@ '{portal,sms,ussd,app_push,tv_push,email}'),
    kinds            text[]   NOT NULL CHECK (cardinality(kinds) >= 1),
    consent_date     date     NOT NULL,  -- the representative's consent to the processing of personal data
    registered_by    text     NOT NULL,  -- staff login
    registered_at_ms bigint   NOT NULL,
    updated_at_ms    bigint   NOT NULL,
    suspended_at_ms  bigint,             -- NULL: not suspended
    removed_at_ms    bigint,             -- NULL: not removed; set once, for good
    CHECK ('email' <> ALL (channels) OR email IS NOT NULL)  -- e-mail notices need an address
);
CREATE INDEX representatives_school ON representatives (school_id);

CREATE TABLE representative_pupils (
    account_id        bigint NOT NULL REFERENCES pupils (account_id),
    representative_id bigint NOT NULL REFERENCES representatives,
    PRIMARY KEY (account_id, representative_id)
);
CREATE INDEX representative_pupils_representative ON representative_pupils (representative_id);
"""

DOWN = """
DROP TABLE representative_pupils;
DROP TABLE representatives;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
