"""Core schema: schools, accounts (double-entry), identifiers, devices, products, journal.

Revision ID: 0001
Revises:
"""

from alembic import op

from storage.migrations import split_statements

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UP = """
CREATE TABLE schools (
    id                 integer PRIMARY KEY,
    name               text    NOT NULL,
    utc_offset_minutes integer NOT NULL DEFAULT 180  -- Moscow, no DST since 2014
);

-- Every kopeck lives in an account; every movement debits one and credits another,
-- so the sum of all balances is always zero. kind: 1 pupil (personal account),
-- 2 canteen revenue of a school, 3 cash drawer of a till, 4 opening balances.
CREATE TABLE accounts (
    id                  bigint   PRIMARY KEY,
    kind                smallint NOT NULL CHECK (kind BETWEEN 1 AND 4),
    school_id           integer  REFERENCES schools,
    holder_name         text,
    status              smallint NOT NULL DEFAULT 0,  -- 0 active, 1 blocked
    balance_kopecks     bigint   NOT NULL DEFAULT 0,
    daily_limit_kopecks bigint   CHECK (daily_limit_kopecks IS NULL OR daily_limit_kopecks >= 0)
);

-- Several identifiers bind to one account. kind: 1 service card, 2 Social Card of
-- the Pupil, 3 bracelet, 4 key fob, 5 Muscovite card, 6 temporary card.
CREATE TABLE identifiers (
    identifier bytea    PRIMARY KEY CHECK (length(identifier) BETWEEN 4 AND 16),
    account_id bigint   NOT NULL REFERENCES accounts,
    kind       smallint NOT NULL,
    status     smallint NOT NULL DEFAULT 0  -- 0 active, 1 blocked
);
CREATE INDEX identifiers_account ON identifiers (account_id);

-- kind: 1 turnstile, 2 till, 3 fire panel. durable_txn: unused since 0003 (the
-- watermark is the highest txn in the journal).
CREATE TABLE devices (
    id                bigint   PRIMARY KEY CHECK (id BETWEEN 1 AND 4294967295),
    school_id         integer  NOT NULL REFERENCES schools,
    kind              smallint NOT NULL CHECK (kind BETWEEN 1 AND 3),
    key               bytea    NOT NULL CHECK (length(key) = 16),
    name              text,
    drawer_account_id bigint   REFERENCES accounts,
    durable_txn       bigint   NOT NULL DEFAULT 0
);

CREATE TABLE products (
    school_id     integer NOT NULL REFERENCES schools,
    code          integer NOT NULL,
    name          text    NOT NULL,
    price_kopecks integer NOT NULL CHECK (price_kopecks >= 0),
    PRIMARY KEY (school_id, code)
);

-- The journal: one row per accepted device transaction. (device_id, device_txn)
-- is the idempotency key. kind: 1 entry granted, 2 passage, 3 purchase, 4 cash top-up.
CREATE TABLE journal (
    device_id             bigint      NOT NULL,
    device_txn            bigint      NOT NULL,
    kind                  smallint    NOT NULL,
    account_id            bigint      NOT NULL,
    identifier            bytea       NOT NULL,
    direction             smallint,
    debit_account_id      bigint,
    credit_account_id     bigint,
    amount_kopecks        bigint      NOT NULL DEFAULT 0 CHECK (amount_kopecks >= 0),
    balance_after_kopecks bigint      NOT NULL,
    advice                boolean     NOT NULL,
    device_time_ms        bigint      NOT NULL,  -- the reader's clock, Unix ms
    decided_at_ms         bigint      NOT NULL,  -- the gateway's clock at the decision, Unix ms
    cashier_id            bigint,
    item_codes            bigint[],
    item_quantities       integer[],
    item_prices_kopecks   bigint[],
    PRIMARY KEY (device_id, device_txn)
);
CREATE INDEX journal_account_time ON journal (account_id, decided_at_ms);
"""

DOWN = """
DROP TABLE journal;
DROP TABLE products;
DROP TABLE devices;
DROP TABLE identifiers;
DROP TABLE accounts;
DROP TABLE schools;

"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
