"""Every school and till has its ledger accounts (storage/ledger_accounts.py).

- accounts.kind 8: a school office desk's cash drawer (the cashier's cash top-ups, command
  cash_topup, journal kind 14).
- The accounts that schools and tills created before this revision lack are opened: a
  school's canteen revenue, free-meal budget and desk drawer; a till's cash drawer (bound in
  devices.drawer_account_id); and, where any school exists, the city-wide clearing and
  corrections accounts. Before, a school created through the API had no revenue account, so
  its tills could not sell, and a till registered through the API could take no cash.
  An empty database gets nothing here (the demo loader and the API open what they need).

Revision ID: 0021
Revises: 0020
"""

from alembic import op

from storage.migrations import split_statements

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def _school_accounts(kind: int, holder_name: str) -> str:
    return f"""
INSERT INTO accounts (id, kind, school_id, holder_name)
SELECT (SELECT coalesce(max(id), 0) FROM accounts) + row_number() OVER (ORDER BY s.id), {kind}, s.id, '{holder_name}'
FROM schools s
WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.school_id = s.id AND a.kind = {kind});
"""


def _city_account(kind: int, holder_name: str) -> str:
    return f"""
INSERT INTO accounts (id, kind, school_id, holder_name)
SELECT (SELECT coalesce(max(id), 0) FROM accounts) + 1, {kind}, NULL, '{holder_name}'
WHERE EXISTS (SELECT 1 FROM schools) AND NOT EXISTS (SELECT 1 FROM accounts WHERE kind = {kind});
"""


UP = (
    """
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind BETWEEN 1 AND 8);
LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE;
"""
    + _school_accounts(2, "Выручка столовой")
    + _school_accounts(6, "Бюджет бесплатного питания")
    + _school_accounts(8, "Касса канцелярии")
    + _city_account(5, "Расчёты с эквайером")
    + _city_account(7, "Корректировки")
    + """
CREATE TEMPORARY TABLE new_drawers ON COMMIT DROP AS
SELECT d.id AS device_id, d.school_id, coalesce(d.name, d.id::text) AS name,
       (SELECT coalesce(max(id), 0) FROM accounts) + row_number() OVER (ORDER BY d.id) AS account_id
FROM devices d WHERE d.kind = 2 AND d.drawer_account_id IS NULL;
INSERT INTO accounts (id, kind, school_id, holder_name)
SELECT account_id, 3, school_id, 'Касса: ' || name FROM new_drawers;
UPDATE devices d SET drawer_account_id = n.account_id FROM new_drawers n WHERE d.id = n.device_id;
"""
)

DOWN = """
DELETE FROM accounts WHERE kind = 8;
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind BETWEEN 1 AND 7);
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
