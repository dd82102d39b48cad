"""Desk readers of the school office and their pending card operations (deskreader/,
staff_api/desk.py, docs/desk-reader.md).

- desk_readers: a PC/SC desk reader known to the staff API by name, bound to one school.
  Its bridge (python -m deskreader) sends the UIDs it reads to POST /desk-readers/{name}/uid.
- desk_operations: what the next card presented on a reader is for (bind_card: becomes the
  pupil's permanent card; issue_temporary: becomes a temporary card standing for
  original_uid). At most one pending operation per reader (the partial unique index); it
  expires at expires_at_ms (staff_api.desk.DESK_OPERATION_TTL_MS after it started). The
  finished ones stay as the reader's history: status done (result: the cards as the
  existing card endpoints answer them), failed (error: the refusal's detail), expired or
  cancelled (superseded by a newer operation on the same reader).

In PostgreSQL, not in the staff API's memory: the officer's request and the bridge's may
reach different staff API processes, a pending operation survives a restart, and the
finished ones are the record of who bound which card through which reader.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

from storage.migrations import split_statements

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UP = r"""
CREATE TABLE desk_readers (
    name             text    PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    school_id        integer NOT NULL REFERENCES schools,
    registered_by    text    NOT NULL,
    registered_at_ms bigint  NOT NULL
);

CREATE TABLE desk_operations (
    id              bigserial PRIMARY KEY,
    reader          text      NOT NULL REFERENCES desk_readers,
    action          text      NOT NULL CHECK (action IN ('bind_card', 'issue_temporary')),
    account_id      bigint    NOT NULL REFERENCES accounts,
    params          jsonb     NOT NULL,  -- bind_card: kind; issue_temporary: original_uid, reason
    status          text      NOT NULL DEFAULT 'pending'
                              CHECK (status IN ('pending', 'done', 'failed', 'expired', 'cancelled')),
    started_by      text      NOT NULL,
    started_at_ms   bigint    NOT NULL,
    expires_at_ms   bigint    NOT NULL,
    uid             bytea,               -- the card presented
    completed_by    text,                -- the bridge's login
    completed_at_ms bigint,
    result          jsonb,
    error           text
);
CREATE UNIQUE INDEX desk_operations_one_pending ON desk_operations (reader) WHERE status = 'pending';
CREATE INDEX desk_operations_reader ON desk_operations (reader, id);
"""

DOWN = """
DROP TABLE desk_operations;
DROP TABLE desk_readers;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
