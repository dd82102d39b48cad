"""A purchase's items as one bytea in the wire layout instead of three arrays.

Encoding three arrays per row was the most expensive part of a group commit
(the driver checks every array and every element against Python's collection
ABCs). The items are now stored as the device sent them: per line
product_code u32, quantity u16, unit_price_kopecks u32, little-endian
(docs/protocol.md, PURCHASE); ``protocol.items.decode_items`` reads them back.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE journal ADD COLUMN items bytea CHECK (items IS NULL OR length(items) % 10 = 0)")
    # Existing rows: each number little-endian (int8send/int4send are big-endian,
    # so their low bytes are taken in reverse order).
    le32 = "substring(int8send({0}) FROM 8 FOR 1) || substring(int8send({0}) FROM 7 FOR 1) || " \
           "substring(int8send({0}) FROM 6 FOR 1) || substring(int8send({0}) FROM 5 FOR 1)"
    le16 = "substring(int4send({0}) FROM 4 FOR 1) || substring(int4send({0}) FROM 3 FOR 1)"
    op.execute(
        f"""
        UPDATE journal SET items = (
            SELECT string_agg({le32.format('c')} || {le16.format('q')} || {le32.format('p')}, ''::bytea ORDER BY i)
            FROM unnest(item_codes, item_quantities, item_prices_kopecks) WITH ORDINALITY AS u(c, q, p, i)
        ) WHERE item_codes IS NOT NULL
        """
    )
    op.execute("ALTER TABLE journal DROP COLUMN item_codes, DROP COLUMN item_quantities, DROP COLUMN item_prices_kopecks")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE journal ADD COLUMN item_codes bigint[], ADD COLUMN item_quantities integer[],"
        " ADD COLUMN item_prices_kopecks bigint[]"
    )
    op.execute("ALTER TABLE journal DROP COLUMN items")
