"""The staff console's sign-in (staff_api/sessions.py, docs/staff-api.md "Console").

- staff_sessions: one row per console sign-in. ``token_sha256`` is the SHA-256 of a fresh
  random session id (the id itself lives only in the browser's HttpOnly cookie). A session
  works until ``expires_at_ms`` (staff_api.sessions.SESSION_TTL_MS after it was made) or
  until it is signed out (``revoked_at_ms``); every request also re-reads ``staff.active``,
  so a deactivated member's sessions stop at once. Rows stay after they end (who was signed
  in when) and are pruned staff_api.sessions.SESSION_ROWS_KEPT_MS after they expired.
- staff_signin_failures: one row per refused sign-in, by the login as typed (unknown logins
  too: the answer is the same whatever was wrong). Fewer than
  staff_api.sessions.SIGNIN_FAILURES_MAX within SIGNIN_FAILURE_WINDOW_MS, or the login is
  refused; rows older than the window are pruned. In PostgreSQL, not in one process's
  memory: sign-ins of one login may reach different staff API processes.

Revision ID: 0019
Revises: 0018
"""

from alembic import op

from storage.migrations import split_statements

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UP = """
CREATE TABLE staff_sessions (
    token_sha256   bytea   PRIMARY KEY CHECK (length(token_sha256) = 32),
    login          text    NOT NULL REFERENCES staff (login),
    created_at_ms  bigint  NOT NULL,
    expires_at_ms  bigint  NOT NULL CHECK (expires_at_ms > created_at_ms),
    revoked_at_ms  bigint
);
CREATE INDEX staff_sessions_login ON staff_sessions (login);
CREATE INDEX staff_sessions_expiry ON staff_sessions (expires_at_ms);

CREATE TABLE staff_signin_failures (
    id      bigserial  PRIMARY KEY,
    login   text       NOT NULL,
    at_ms   bigint     NOT NULL
);
CREATE INDEX staff_signin_failures_login ON staff_signin_failures (login, at_ms);
CREATE INDEX staff_signin_failures_at ON staff_signin_failures (at_ms);
"""

DOWN = """
DROP TABLE staff_signin_failures;
DROP TABLE staff_sessions;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
