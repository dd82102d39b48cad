"""The parents' API: one-time codes, bearer sessions and USSD sessions.

- parent_otps: one row per code request (POST /auth/code) for a contact
  (``phone:+7XXXXXXXXXX`` or ``email:<lower-case address>``). ``code_sha256`` is the
  SHA-256 of ``<contact>\n<code>`` (never the code); NULL when the contact belongs to no
  active representative: the request is recorded (so the rate limit answers unknown
  contacts exactly as known ones) but nothing is sent and no code can match. A code
  lives until ``expires_at_ms``, counts wrong ``attempts`` and is spent once
  (``used_at_ms``). Only the newest row of a contact can be redeemed.
- parent_sessions: bearer tokens of the apps and the portal, stored as SHA-256, bound to
  the contact that proved itself; every request re-reads which active representatives
  have that contact, so suspending or removing one takes effect at once.
- ussd_sessions: server-side state of the USSD dialogues (*377*888#), keyed by the
  aggregator's sessionId; expired rows are deleted as new sessions start.
- Indexes on representatives (phone, lower(email)) for the lookups by contact: the
  table is migration 0008's; only the indexes are this migration's.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

from storage.migrations import split_statements

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UP = r"""
CREATE TABLE parent_otps (
    id             bigserial PRIMARY KEY,
    contact        text     NOT NULL CHECK (contact ~ '^(phone|email):'),
    code_sha256    bytea    CHECK (code_sha256 IS NULL OR length(code_sha256) = 32),
    created_at_ms  bigint   NOT NULL,
    expires_at_ms  bigint   NOT NULL,
    attempts       integer  NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    used_at_ms     bigint
);
CREATE INDEX parent_otps_contact ON parent_otps (contact, created_at_ms);

CREATE TABLE parent_sessions (
    token_sha256   bytea    PRIMARY KEY CHECK (length(token_sha256) = 32),
    contact        text     NOT NULL CHECK (contact ~ '^(phone|email):'),
    created_at_ms  bigint   NOT NULL,
    expires_at_ms  bigint   NOT NULL,
    revoked_at_ms  bigint
);
CREATE INDEX parent_sessions_contact ON parent_sessions (contact);

CREATE TABLE ussd_sessions (
    session_id     text     PRIMARY KEY CHECK (length(session_id) BETWEEN 1 AND 128),
    phone          text     NOT NULL,
    state          jsonb    NOT NULL DEFAULT '{}',
    created_at_ms  bigint   NOT NULL,
    updated_at_ms  bigint   NOT NULL,
    expires_at_ms  bigint   NOT NULL
);
CREATE INDEX ussd_sessions_expiry ON ussd_sessions (expires_at_ms);

CREATE INDEX parents_representatives_phone ON representatives (phone);
CREATE INDEX parents_representatives_email ON representatives (lower(email));
"""

DOWN = """
DROP INDEX parents_representatives_email;
DROP INDEX parents_representatives_phone;
DROP TABLE ussd_sessions;
DROP TABLE parent_sessions;
DROP TABLE parent_otps;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
