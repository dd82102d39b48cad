"""The accounts' counters as bytes PostgreSQL does not parse; the checkpoints as one binary parameter.

The group commit stored each touched account's day counters (``ledger.records.AccountCounters``)
in ``accounts.counters`` as ``jsonb``: PostgreSQL parsed the batch's whole JSON array of
checkpoints, then every element's counters again into jsonb's binary form, for a value only
the gateway ever decodes (at start, ``storage.snapshot``) and the guard's page reads
(``storage.building``). ``perf`` on the journal writer's backend at the held rate had JSON
parsing at 13% of its CPU.

- ``accounts.counters`` is ``bytea``: the same JSON text (msgspec's encoding of
  ``AccountCounters``, an array), as UTF-8 bytes, stored as they come. Read it with
  ``convert_from(counters, 'UTF8')`` in psql; the readers decode it with msgspec as before.
- ``account_checkpoint``: a composite type with ``ledger.records.AccountCheckpoint``'s fields
  in order (the counters as those bytes). The group commit sends its checkpoints as ONE
  parameter, an array of it in PostgreSQL's binary format, as it sends its journal rows
  (``journal_row``, migration 0023): nothing in it is parsed.

Measured on the gateway's own batches of 50 (``loadtests.journal_cost``'s dataset, 100,000
pupils, six databases side by side in interleaved rounds, two runs): the accounts' update
alone cost the backend 30.6 / 27.0 us per journaled decision as one jsonb array, 32.2 / 27.0 as
three arrays with jsonb counters, 25.0 / 20.4 as arrays with bytea counters, and an update of
the balance alone 22.2 / 19.6: the counters now cost next to nothing.

The column's type change rewrites ``accounts`` once (a few seconds for a city's 1.5 million
accounts, under an exclusive lock: run it with the gateway stopped, as every migration).

Revision ID: 0025
Revises: 0024
"""

from alembic import op

from storage.migrations import split_statements

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

UP = """
ALTER TABLE accounts ALTER COLUMN counters TYPE bytea USING convert_to(counters::text, 'UTF8');
CREATE TYPE account_checkpoint AS (
    account_id      bigint,
    balance_kopecks bigint,
    counters        bytea
);
"""

DOWN = """
DROP TYPE account_checkpoint;
ALTER TABLE accounts ALTER COLUMN counters TYPE jsonb USING convert_from(counters, 'UTF8')::jsonb;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
