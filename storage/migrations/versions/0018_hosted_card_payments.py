"""Bank-card top-ups through the acquirer's hosted page: who asked, saved cards (tokens only),
auto top-ups bound to a parent's saved card.

- card_payments gains who started a manual top-up (representative_id: an active
  representative of the contact behind the parent's bearer token), whether the parent asked
  to save the card (save_card), the acquirer's decline_code, the card's last 4 digits as the
  acquirer reports them (card_last4) and, for an automatic charge, the saved card charged
  (saved_card_id). Status gains 'canceled' (the payer canceled the hosted page, or it
  expired): no money, like 'failed'.
- saved_cards: a card a parent agreed to save on the acquirer's page, as the acquirer's
  opaque token and the last 4 digits. Never a card number: ecard never receives one. Owned
  by the representative who started the payment that saved it (a contact sees the cards of
  all its active representative rows); revoked_at_ms set when the parent deletes it.
- auto_topups gains saved_card_id (the card charged; the token is read from saved_cards, so
  revoking a card stops its auto top-ups), set_by_representative_id and updated_at_ms;
  card_token becomes the legacy column (NULL for new rules). Rules written before this
  migration came through an endpoint without authentication and cannot be told from a
  stranger's: they are switched off until a parent sets them again (the CHECK keeps an
  active rule bound to a saved card).

Revision ID: 0018
Revises: 0017
"""

from alembic import op

from storage.migrations import split_statements

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UP = r"""
ALTER TABLE card_payments ADD COLUMN representative_id bigint REFERENCES representatives;
ALTER TABLE card_payments ADD COLUMN save_card boolean NOT NULL DEFAULT false;
ALTER TABLE card_payments ADD COLUMN decline_code text CHECK (decline_code IS NULL OR length(decline_code) <= 64);
ALTER TABLE card_payments ADD COLUMN card_last4 text CHECK (card_last4 IS NULL OR card_last4 ~ '^[0-9]{4}$');
CREATE INDEX card_payments_representative ON card_payments (representative_id, created_at_ms)
    WHERE representative_id IS NOT NULL;
CREATE INDEX card_payments_account ON card_payments (account_id, created_at_ms);

CREATE TABLE saved_cards (
    id                 bigserial PRIMARY KEY,
    representative_id  bigint  NOT NULL REFERENCES representatives,
    account_id         bigint  NOT NULL REFERENCES pupils (account_id),  -- the child topped up when it was saved
    payment_id         text    NOT NULL UNIQUE REFERENCES card_payments, -- the payment that saved it
    card_token         text    NOT NULL UNIQUE CHECK (length(card_token) BETWEEN 1 AND 200),
    last4              text    NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    created_at_ms      bigint  NOT NULL,
    revoked_at_ms      bigint
);
CREATE INDEX saved_cards_representative ON saved_cards (representative_id);

ALTER TABLE card_payments ADD COLUMN saved_card_id bigint REFERENCES saved_cards;

ALTER TABLE auto_topups ADD COLUMN saved_card_id bigint REFERENCES saved_cards;
ALTER TABLE auto_topups ADD COLUMN set_by_representative_id bigint REFERENCES representatives;
ALTER TABLE auto_topups ADD COLUMN updated_at_ms bigint;
ALTER TABLE auto_topups ALTER COLUMN card_token DROP NOT NULL;
UPDATE auto_topups SET active = false WHERE saved_card_id IS NULL;
ALTER TABLE auto_topups ADD CONSTRAINT auto_topups_saved_card CHECK (saved_card_id IS NOT NULL OR NOT active);
"""

DOWN = """
ALTER TABLE auto_topups DROP CONSTRAINT auto_topups_saved_card;
UPDATE auto_topups t SET card_token = s.card_token FROM saved_cards s
    WHERE s.id = t.saved_card_id AND t.card_token IS NULL;
DELETE FROM auto_topups WHERE card_token IS NULL;
ALTER TABLE auto_topups ALTER COLUMN card_token SET NOT NULL;
ALTER TABLE auto_topups DROP COLUMN updated_at_ms;
ALTER TABLE auto_topups DROP COLUMN set_by_representative_id;
ALTER TABLE auto_topups DROP COLUMN saved_card_id;
ALTER TABLE card_payments DROP COLUMN saved_card_id;
DROP TABLE saved_cards;
DROP INDEX card_payments_account;
DROP INDEX card_payments_representative;
ALTER TABLE card_payments DROP COLUMN card_last4;
ALTER TABLE card_payments DROP COLUMN decline_code;
ALTER TABLE card_payments DROP COLUMN save_card;
ALTER TABLE card_payments DROP COLUMN representative_id;
"""


def upgrade() -> None:
    for statement in split_statements(UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_statements(DOWN):
        op.execute(statement)
