"""Staff tokens expire (staff_api/auth.py, docs/staff-api.md "Tokens").

- staff.token_expires_at_ms: the instant the member's bearer token stops working (Unix ms).
  The staff API sets it whenever it issues a token (creation, rotation: staff_api.auth
  STAFF_TOKEN_TTL_MS after that moment). Rows written by SQL (a bootstrap script, a test) and
  the rows already here get the default: 90 days after they are written, the API's lifetime
  when this revision was made (a migration does not import the application: it must mean
  the same thing whenever it runs).

Revision ID: 0020
Revises: 0019
"""

from alembic import op

from storage.migrations import split_statements

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

TOKEN_TTL_MS = 90 * 86_400_000  # 90 days

UP = f"""
ALTER TABLE staff ADD COLUMN token_expires_at_ms bigint NOT NULL
    DEFAULT ((extract(epoch FROM clock_timestamp()) * 1000)::bigint + {TOKEN_TTL_MS});
"""

DOWN = """
ALTER TABLE staff DROP COLUMN token_expires_at_ms;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
