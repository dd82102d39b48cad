"""Accounts, cards and money: pupils, card life cycle, products and menus, parent
controls, school policies, money commands, staff, audit, outbox.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from storage.migrations import split_statements

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UP = """
-- New account kinds: 5 acquirer clearing (bank-card top-ups), 6 free-meal budget,
-- 7 operator corrections.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind BETWEEN 1 AND 7);

-- The pupil behind a personal account (one account per pupil).
CREATE TABLE pupils (
    account_id         bigint   PRIMARY KEY REFERENCES accounts,
    school_id          integer  NOT NULL REFERENCES schools,
    full_name          text     NOT NULL,
    grade              smallint NOT NULL CHECK (grade BETWEEN 0 AND 11),
    class_name         text     NOT NULL DEFAULT '',
    photo_ref          text,
    -- NULL: pays for meals; otherwise the regional or federal category that
    -- entitles the pupil to a free meal (grades 1-4 are entitled by law).
    free_meal_category text,
    family_id          bigint  -- pupils of one family may transfer money between them
);
CREATE INDEX pupils_school ON pupils (school_id);

-- Card life cycle. identifiers.status: 0 active, 1 blocked (for good), 2 suspended
-- (forgotten: restored when the temporary card is returned).
ALTER TABLE identifiers ADD COLUMN expires_at_ms bigint;  -- temporary cards only
ALTER TABLE identifiers ADD COLUMN replaces bytea;        -- temporary card: the original it stands for
ALTER TABLE identifiers ADD COLUMN bound_at_ms bigint;

CREATE TABLE identifier_events (
    id          bigserial PRIMARY KEY,
    identifier  bytea     NOT NULL,
    account_id  bigint    NOT NULL,
    action      text      NOT NULL,  -- bind, unbind, block, forgotten, lost, broken, returned, expired
    related     bytea,               -- the temporary card, or the original
    actor       text      NOT NULL,
    at_ms       bigint    NOT NULL
);
CREATE INDEX identifier_events_identifier ON identifier_events (identifier, at_ms);

-- Products: composition, the 14 EU allergens, diet flags, energy value.
ALTER TABLE products ADD COLUMN category text NOT NULL DEFAULT 'other';
ALTER TABLE products ADD COLUMN composition text NOT NULL DEFAULT '';
ALTER TABLE products ADD COLUMN allergens text[] NOT NULL DEFAULT '{}';
ALTER TABLE products ADD COLUMN diet_flags text[] NOT NULL DEFAULT '{}';
ALTER TABLE products ADD COLUMN energy_kcal integer;
ALTER TABLE products ADD COLUMN hot_meal boolean NOT NULL DEFAULT false;

CREATE TABLE meal_periods (
    school_id      integer  NOT NULL REFERENCES schools,
    name           text     NOT NULL,  -- breakfast, lunch, snack
    starts_minute  smallint NOT NULL CHECK (starts_minute BETWEEN 0 AND 1439),
    ends_minute    smallint NOT NULL CHECK (ends_minute BETWEEN 1 AND 1440),
    PRIMARY KEY (school_id, name),
    CHECK (starts_minute < ends_minute)
);

CREATE TABLE menus (
    school_id  integer NOT NULL REFERENCES schools,
    day        date    NOT NULL,
    period     text    NOT NULL,
    product_code integer NOT NULL,
    PRIMARY KEY (school_id, day, period, product_code)
);

-- Per-school policy: negative balance grace, low-balance alert threshold.
CREATE TABLE school_policies (
    school_id                     integer PRIMARY KEY REFERENCES schools,
    grace_kopecks                 bigint  NOT NULL DEFAULT 0 CHECK (grace_kopecks >= 0),
    grace_meals                   integer NOT NULL DEFAULT 0 CHECK (grace_meals >= 0),
    low_balance_threshold_kopecks bigint  NOT NULL DEFAULT 10000 CHECK (low_balance_threshold_kopecks >= 0),
    preorder_lock_days            integer NOT NULL DEFAULT 3 CHECK (preorder_lock_days >= 0)
);

-- Parent controls of one account (set through the API).
CREATE TABLE account_controls (
    account_id            bigint  PRIMARY KEY REFERENCES accounts,
    period_limits_kopecks jsonb   NOT NULL DEFAULT '{}',  -- {"lunch": 20000}
    items_per_day_max     integer CHECK (items_per_day_max IS NULL OR items_per_day_max >= 0),
    banned_products       integer[] NOT NULL DEFAULT '{}',
    banned_categories     text[]  NOT NULL DEFAULT '{}',
    blocked_allergens     text[]  NOT NULL DEFAULT '{}',
    required_diet         text[]  NOT NULL DEFAULT '{}',
    cashier_note          text    NOT NULL DEFAULT ''
);

-- Money movements that do not come from a till: submitted as commands to the
-- gateway's state machine (the one writer of balances), journaled like a tap.
-- The idempotency key is the primary key; the first result is kept and repeated.
CREATE TABLE commands (
    seq              bigserial PRIMARY KEY,
    idempotency_key  text      NOT NULL UNIQUE,
    kind             text      NOT NULL,  -- bank_topup, bank_refund, transfer, refund, correction
    payload          jsonb     NOT NULL,
    requested_by     text      NOT NULL,
    status           smallint  NOT NULL DEFAULT 0,  -- 0 pending, 1 applied, 2 refused
    result           jsonb,
    created_at_ms    bigint    NOT NULL,
    decided_at_ms    bigint
);
CREATE INDEX commands_pending ON commands (seq) WHERE status = 0;

-- Events for parents (low balance, ...), written in the same transaction as the
-- journal rows that caused them; a notifier drains it.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    kind        text      NOT NULL,
    account_id  bigint    NOT NULL,
    payload     jsonb     NOT NULL,
    created_at_ms bigint  NOT NULL,
    sent_at_ms  bigint
);

-- Bank-card top-ups through the acquirer: one row per payment ecard started.
-- status: created, captured, refunded, failed. The money moves only through
-- commands (bank_topup / bank_refund) keyed by the acquirer's payment id.
CREATE TABLE card_payments (
    payment_id     text    PRIMARY KEY,
    account_id     bigint  NOT NULL REFERENCES accounts,
    amount_kopecks bigint  NOT NULL CHECK (amount_kopecks > 0),
    status         text    NOT NULL,
    origin         text    NOT NULL,  -- manual, auto_threshold, auto_schedule
    created_at_ms  bigint  NOT NULL,
    updated_at_ms  bigint  NOT NULL
);

-- Auto top-up from a saved card token: by balance threshold and/or by schedule.
CREATE TABLE auto_topups (
    account_id                 bigint  PRIMARY KEY REFERENCES accounts,
    card_token                 text    NOT NULL,
    amount_kopecks             bigint  NOT NULL CHECK (amount_kopecks > 0),
    threshold_kopecks          bigint,            -- top up when the balance falls below
    schedule_weekday           smallint CHECK (schedule_weekday BETWEEN 0 AND 6),  -- 0 Monday
    last_scheduled_day         date,
    active                     boolean NOT NULL DEFAULT true
);

CREATE TABLE staff (
    login       text     PRIMARY KEY,
    role        text     NOT NULL CHECK (role IN ('operator', 'officer', 'cashier', 'auditor')),
    school_id   integer  REFERENCES schools,  -- NULL for city operators and auditors
    token_sha256 bytea   NOT NULL UNIQUE,
    active      boolean  NOT NULL DEFAULT true,
    CHECK (role IN ('operator', 'auditor') OR school_id IS NOT NULL)
);

CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    actor     text      NOT NULL,
    action    text      NOT NULL,
    entity    text      NOT NULL,
    before    jsonb,
    after     jsonb,
    at_ms     bigint    NOT NULL
);
"""

DOWN = """
DROP TABLE audit_log;
DROP TABLE staff;
DROP TABLE auto_topups;
DROP TABLE card_payments;
DROP TABLE outbox;
DROP TABLE commands;
DROP TABLE account_controls;
DROP TABLE school_policies;
DROP TABLE menus;
DROP TABLE meal_periods;
ALTER TABLE products DROP COLUMN hot_meal, DROP COLUMN energy_kcal, DROP COLUMN diet_flags,
    DROP COLUMN allergens, DROP COLUMN composition, DROP COLUMN category;
DROP TABLE identifier_events;
ALTER TABLE identifiers DROP COLUMN bound_at_ms, DROP COLUMN replaces, DROP COLUMN expires_at_ms;
DROP TABLE pupils;
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind BETWEEN 1 AND 4);
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
