"""Events for parents, produced by the state machine and written by the journal
writer in the same transaction as the movement that caused them (outbox table).
Their delivery (SMS, push, e-mail) belongs to the notifier, a later package.
"""

from __future__ import annotations

import msgspec

from .cache import Cache

_encode = msgspec.json.Encoder().encode


def low_balance_outbox(cache: Cache, account_id: int, now_ms: int) -> tuple:
    """The outbox row for a balance that just fell below its school's threshold.

    One per crossing (the cache's low_alerted flag is the hysteresis): the next
    one only after the balance has been back at or above the threshold.
    """
    accounts = cache.accounts
    threshold = cache.policy(accounts.school[account_id]).low_balance_threshold_kopecks
    payload = {"balance_kopecks": accounts.balance[account_id], "threshold_kopecks": threshold}
    return ("outbox", "low_balance", account_id, _encode(payload).decode(), now_ms)
