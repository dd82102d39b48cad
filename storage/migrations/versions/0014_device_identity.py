"""Device identity: key rotation, revocation, install mode (issue 9, part 5).

- devices.next_key: a key rotation in progress (the gateway accepts a HELLO under key or
  next_key; promoting makes it the key, retiring drops it). 16 bytes (AES-128) or NULL.
- devices.revoked_at_ms: set by the staff API; the gateway closes the device's session at
  once and refuses its HELLOs (NAK DEVICE_REVOKED). NULL: not revoked.
- devices.created_at_ms: when the device was registered or enrolled (NULL for older rows).
- device_install_modes: at most one open install mode per school: a one-time enrolment code
  (stored as its sha256), valid until until_ms (at most INSTALL_MODE_MINUTES_MAX minutes
  after it was opened) and for one device; used_at_ms/device_id once a device enrolled.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

from storage.migrations import split_statements

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UP = r"""
ALTER TABLE devices ADD COLUMN next_key bytea CHECK (next_key IS NULL OR length(next_key) = 16);
ALTER TABLE devices ADD COLUMN revoked_at_ms bigint;
ALTER TABLE devices ADD COLUMN created_at_ms bigint;
CREATE TABLE device_install_modes (
    school_id   integer PRIMARY KEY REFERENCES schools,
    code_sha256 bytea   NOT NULL CHECK (length(code_sha256) = 32),
    opened_by   text    NOT NULL,
    opened_at_ms bigint NOT NULL,
    until_ms    bigint  NOT NULL,
    used_at_ms  bigint,
    device_id   bigint  REFERENCES devices
);
"""

DOWN = r"""
DROP TABLE device_install_modes;
ALTER TABLE devices DROP COLUMN created_at_ms;
ALTER TABLE devices DROP COLUMN revoked_at_ms;
ALTER TABLE devices DROP COLUMN next_key;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
