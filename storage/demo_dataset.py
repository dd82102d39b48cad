"""The demo dataset's shape, shared by the loader, the simulators and the benchmarks.

Pure functions and constants only: what the demo school looks like, so that a
simulator can produce valid taps without reading the database.
"""

from __future__ import annotations

import hmac
import struct
from hashlib import sha256

DEMO_SCHOOL_ID = 1
DEMO_SCHOOL_NAME = "ГБОУ Школа № 1 (демо)"
DEMO_PUPILS = 1_000
DEMO_TURNSTILES = 4
DEMO_TILLS = 2
DEMO_OPENING_BALANCE_KOPECKS = 50_000  # 500 rubles per pupil at start

# Pupils 1..N of the demo have a parent each (representative N, relation parent), subscribed
# on every channel to every event kind, so a simulator run shows notices at once; every
# 10th of them also a grandmother (SMS only: low balance and card events). Capped so a
# benchmark's millions of pupils load as fast as the demo's thousand.
DEMO_REPRESENTED_PUPILS = 1_000
DEMO_GRANDMOTHER_EVERY = 10

TURNSTILE_ID_BASE = 1_000_000  # turnstile n (1-based) has device id 1_000_000 + n
TILL_ID_BASE = 2_000_000  # till n (1-based) has device id 2_000_000 + n
FIRE_PANEL_ID = 3_000_001  # the demo school's fire panel
UNKNOWN_CARD_PREFIX = b"\x08"  # no demo card starts with this byte

# (code, name shown on the till, price in kopecks)
DEMO_PRODUCTS: tuple[tuple[int, str, int], ...] = (
    (1, "Завтрак комплексный", 9_500),
    (2, "Обед комплексный", 16_500),
    (3, "Булочка с маком", 3_500),
    (4, "Сок яблочный 0,2 л", 4_500),
    (5, "Чай с лимоном", 1_500),
    (6, "Пирожок с капустой", 3_000),
    (7, "Йогурт питьевой", 5_500),
    (8, "Салат овощной", 4_000),
    (9, "Компот из сухофруктов", 2_000),
    (10, "Сырники со сметаной", 7_500),
)

_KEY_DOMAIN = b"ecard-demo-device-key-v1"


def demo_device_key(device_id: int) -> bytes:
    """The demo's per-device 128-bit key. Real deployments provision random keys."""
    return hmac.new(_KEY_DOMAIN, struct.pack("<I", device_id), sha256).digest()[:16]


def demo_card_uid(account_id: int) -> bytes:
    """The 7-byte ISO 14443 UID of the demo service card of ``account_id``."""
    return b"\x04" + account_id.to_bytes(6, "big")


def demo_unknown_uid(n: int) -> bytes:
    """A 7-byte UID that is bound to no account."""
    return UNKNOWN_CARD_PREFIX + n.to_bytes(6, "big")


def demo_parent_phone(account_id: int) -> str:
    """The demo parent's phone of pupil ``account_id`` (1..9999): +7900000XXXX."""
    return f"+7900000{account_id:04d}"


def demo_parent_email(account_id: int) -> str:
    return f"parent{account_id}@example.ru"


def demo_grandmother_phone(account_id: int) -> str:
    """The demo grandmother's phone of pupil ``account_id`` (every 10th pupil): +7900100XXXX."""
    return f"+7900100{account_id:04d}"


def turnstile_ids(count: int = DEMO_TURNSTILES) -> list[int]:
    return [TURNSTILE_ID_BASE + n for n in range(1, count + 1)]


def till_ids(count: int = DEMO_TILLS) -> list[int]:
    return [TILL_ID_BASE + n for n in range(1, count + 1)]
