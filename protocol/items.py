"""The PURCHASE item codec: a basket's lines in the wire layout.

The journal stores a purchase's items as these bytes too (journal.items), so
every reader decodes them with ``decode_items`` here.
"""

from __future__ import annotations

import struct
from itertools import starmap
from operator import attrgetter
from typing import Final, Iterable

ITEM: Final = struct.Struct("<IHI")  # product_code u32, quantity u16, unit_price_kopecks u32 (docs/protocol.md 4.6)


_LINE = attrgetter("product_code", "quantity", "unit_price_kopecks")


def encode_items(items: Iterable) -> bytes:
    """Lines with product_code, quantity, unit_price_kopecks -> bytes."""
    return b"".join(starmap(ITEM.pack, map(_LINE, items)))  # no Python frame per line


def decode_items(data: bytes | None) -> list[tuple[int, int, int]] | None:
    """Bytes -> (product_code, quantity, unit_price_kopecks) lines; None stays None."""
    return None if data is None else list(ITEM.iter_unpack(bytes(data)))
