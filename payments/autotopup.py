"""Auto top-up from a parent's saved card (the acquirer's token): by balance threshold and
by weekly schedule.

``run_once(conn, acquirer, now_ms)`` is one pass; the worker
(``python -m payments autotopup --interval-s 30``) calls it every interval. Time
is passed in, so tests drive days and weekdays directly.

Never charge twice:
* at most one automatic payment in flight per account: a card_payments row of
  origin auto_* that is ``created``, or ``captured`` while its bank_topup
  command is not applied yet (the balance does not show it yet), blocks every
  new automatic charge of that account;
* the acquirer's idempotency key is ``auto:<account>:<local day>:<reason>``, so
  two workers, or a worker that crashed between the charge and writing the row,
  get the same payment back instead of a second one;
* threshold: at most one automatic threshold charge per account per local day
  (a declined card is tried again the next day, not every 30 s);
* schedule: once per scheduled local day, recorded in auto_topups.last_scheduled_day
  after the charge (a crash before that repeats the charge with the same key:
  the acquirer answers the same payment).

The local day is the school's (schools.utc_offset_minutes).

A rule charges only while its saved card is not revoked, the card's representative is
active, and the representative who set the rule is active and still covers the pupil: a
suspended or removed parent's card is never charged again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
from dataclasses import dataclass

import asyncpg

from storage.card_payments import record_payment

from .acquirer import Acquirer, AcquirerError

log = logging.getLogger("ecard.autotopup")

DAY_MS = 86_400_000
# A "created" automatic payment older than this no longer blocks new charges: its
# event was lost for good (the acquirer gave up). The per-day key still prevents
# a second charge on the same day.
IN_FLIGHT_STALE_MS = DAY_MS
RUN_INTERVAL_S_DEFAULT = 30.0

# The rules that may charge, with their card's token (see the module's docstring).
_CHARGEABLE = """
    FROM auto_topups t
    JOIN saved_cards sc ON sc.id = t.saved_card_id AND sc.revoked_at_ms IS NULL
    JOIN representatives owner ON owner.id = sc.representative_id
         AND owner.removed_at_ms IS NULL AND owner.suspended_at_ms IS NULL
    JOIN representatives setter ON setter.id = t.set_by_representative_id
         AND setter.removed_at_ms IS NULL AND setter.suspended_at_ms IS NULL
    JOIN representative_pupils rp ON rp.representative_id = setter.id AND rp.account_id = t.account_id
    JOIN accounts a ON a.id = t.account_id
    JOIN schools s ON s.id = a.school_id
"""

_IN_FLIGHT = """
    EXISTS (
        SELECT 1 FROM card_payments p
        LEFT JOIN commands c ON c.idempotency_key = 'bank:' || p.payment_id || ':captured'
        WHERE p.account_id = t.account_id AND p.origin IN ('auto_threshold', 'auto_schedule')
          AND ((p.status = 'created' AND p.created_at_ms > $1::bigint - $2::bigint)
               OR (p.status = 'captured' AND coalesce(c.status, 0) = 0))
    )
"""


@dataclass(frozen=True)
class Charge:
    account_id: int
    reason: str  # threshold | schedule
    payment_id: str | None
    status: str  # the acquirer's: captured | failed; or "error"


def local_day(now_ms: int, offset_minutes: int) -> dt.date:
    return dt.datetime.fromtimestamp((now_ms + offset_minutes * 60_000) / 1000, dt.timezone.utc).date()


def day_start_ms(day: dt.date, offset_minutes: int) -> int:
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    return int(midnight.timestamp() * 1000) - offset_minutes * 60_000


async def _charge(conn: asyncpg.Connection, acquirer: Acquirer, callback_url: str, now_ms: int,
                  account_id: int, saved_card_id: int, token: str, amount: int, day: dt.date, reason: str) -> Charge:
    origin = f"auto_{reason}"
    try:
        payment = await acquirer.create_payment(
            account_ref=str(account_id),
            amount_kopecks=amount,
            callback_url=callback_url,
            idempotency_key=f"auto:{account_id}:{day.isoformat()}:{reason}",
            card_token=token,
            metadata={"origin": origin},
        )
    except AcquirerError as exc:
        log.warning("auto top-up of %d (%s) refused by the acquirer: %s", account_id, reason, exc)
        return Charge(account_id, reason, None, "error" if exc.retryable else "refused")
    await record_payment(conn, payment.payment_id, account_id, payment.amount_kopecks, origin, now_ms,
                         saved_card_id=saved_card_id)
    log.info("auto top-up of %d (%s): %s %s", account_id, reason, payment.payment_id, payment.status)
    return Charge(account_id, reason, payment.payment_id, payment.status)


def default_callback_url() -> str:
    from .webhook import WEBHOOK_PATH

    return os.environ.get("ECARD_PAYMENTS_PUBLIC_URL", "http://127.0.0.1:8810").rstrip("/") + WEBHOOK_PATH


async def run_once(conn: asyncpg.Connection, acquirer: Acquirer, now_ms: int, *,
                   callback_url: str | None = None) -> list[Charge]:
    """One pass over the active auto top-ups; returns the charges made."""
    callback_url = callback_url or default_callback_url()
    charges: list[Charge] = []
    # By threshold: balance below, nothing in flight, no threshold charge today.
    rows = await conn.fetch(
        f"""
        SELECT t.account_id, t.saved_card_id, sc.card_token, t.amount_kopecks, s.utc_offset_minutes AS offset_minutes
        {_CHARGEABLE}
        WHERE t.active AND t.threshold_kopecks IS NOT NULL AND a.balance_kopecks < t.threshold_kopecks
          AND a.status = 0 AND NOT {_IN_FLIGHT}
        ORDER BY t.account_id
        """,
        now_ms, IN_FLIGHT_STALE_MS,
    )
    for r in rows:
        day = local_day(now_ms, r["offset_minutes"])
        start = day_start_ms(day, r["offset_minutes"])
        charged_today = await conn.fetchval(
            """
            SELECT EXISTS (SELECT 1 FROM card_payments WHERE account_id = $1 AND origin = 'auto_threshold'
                           AND created_at_ms >= $2 AND created_at_ms < $3)
            """,
            r["account_id"], start, start + DAY_MS,
        )
        if charged_today:
            continue
        charges.append(await _charge(conn, acquirer, callback_url, now_ms, r["account_id"], r["saved_card_id"],
                                     r["card_token"], r["amount_kopecks"], day, "threshold"))

    # By schedule: today (school-local) is the weekday, not yet done today, nothing in flight.
    rows = await conn.fetch(
        f"""
        SELECT t.account_id, t.saved_card_id, sc.card_token, t.amount_kopecks, t.schedule_weekday,
               t.last_scheduled_day, s.utc_offset_minutes AS offset_minutes
        {_CHARGEABLE}
        WHERE t.active AND t.schedule_weekday IS NOT NULL AND a.status = 0 AND NOT {_IN_FLIGHT}
        ORDER BY t.account_id
        """,
        now_ms, IN_FLIGHT_STALE_MS,
    )
    for r in rows:
        day = local_day(now_ms, r["offset_minutes"])
        if day.weekday() != r["schedule_weekday"]:
            continue
        if r["last_scheduled_day"] is not None and r["last_scheduled_day"] >= day:
            continue
        charge = await _charge(conn, acquirer, callback_url, now_ms, r["account_id"], r["saved_card_id"],
                               r["card_token"], r["amount_kopecks"], day, "schedule")
        charges.append(charge)
        if charge.status != "error":  # unreachable acquirer: try again next pass
            await conn.execute(
                """
                UPDATE auto_topups SET last_scheduled_day = $2
                WHERE account_id = $1 AND (last_scheduled_day IS NULL OR last_scheduled_day < $2)
                """,
                r["account_id"], day,
            )
    return charges


async def run_forever(dsn: str, acquirer: Acquirer, callback_url: str, interval_s: float,
                      stop: asyncio.Event | None = None) -> None:
    import time

    stop = stop or asyncio.Event()
    conn: asyncpg.Connection | None = None
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn)
                charges = await run_once(conn, acquirer, time.time_ns() // 1_000_000, callback_url=callback_url)
                if charges:
                    log.info("auto top-up pass: %d charges", len(charges))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("auto top-up pass failed: %r", exc)
                if conn is not None:
                    conn.terminate()
                    conn = None
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
    finally:
        if conn is not None:
            await conn.close()


def main(argv: list[str] | None = None) -> int:
    from .acquirer import SandboxAcquirerClient

    p = argparse.ArgumentParser(prog="python -m payments autotopup")
    p.add_argument("--interval-s", type=float, default=RUN_INTERVAL_S_DEFAULT)
    p.add_argument("--dsn", default=os.environ.get("ECARD_PG_DSN"))
    p.add_argument("--acquirer-url", default=os.environ.get("ECARD_ACQUIRER_URL", "http://127.0.0.1:8900"))
    p.add_argument("--public-url", default=os.environ.get("ECARD_PAYMENTS_PUBLIC_URL", "http://127.0.0.1:8810"),
                   help="where the acquirer reaches ecard's webhook")
    a = p.parse_args(argv)
    if not a.dsn:
        p.error("--dsn or ECARD_PG_DSN is required")
    from .webhook import WEBHOOK_PATH

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def go() -> None:
        acquirer = SandboxAcquirerClient(a.acquirer_url)
        try:
            await run_forever(a.dsn, acquirer, a.public_url.rstrip("/") + WEBHOOK_PATH, a.interval_s)
        finally:
            await acquirer.close()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
    return 0
