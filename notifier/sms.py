"""The SMS channel: SMPP 3.4 through aiosmpplib, and the rules that decide whether an SMS
goes out now (plan, daily cap, quiet hours, daily digest).

Client library: **aiosmpplib** (asyncio). It runs in the notifier's own loop (smpplib is
synchronous and would need a thread with one reader per socket), it binds as a
transceiver, keeps the session alive with enquire_link, reconnects by itself after a lost
connection (with our retry timer), takes a rate limiter (our token bucket:
``SMS_PER_SECOND_MAX``), and hands every PDU it receives to a hook: submit_sm_resp (with
our ``log_id``) and deliver_sm receipts.

Texts are Cyrillic: always UCS-2 (data_coding 0x08). 70 UTF-16 units fit one SMS; a longer
text is split into parts of 67 units, each with a 6-byte UDH (IEI 0x00: reference, total,
sequence) and esm_class 0x40 (``split_ucs2``, pure).

Receipts: the SMSC's message id of every part is stored (``storage.deliveries.sms_submitted``,
the ``sms_parts`` table of migration 0012) and a ``stat:DELIVRD`` receipt marks the part;
when every part of a delivery has one, the delivery gets ``delivered_at_ms``. Matching is by
the message id in the database, so a receipt that comes after a restart still finds its
delivery.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import time
from pathlib import Path
from typing import Awaitable, Callable

import aiosmpplib
import asyncpg
import msgspec
from aiosmpplib import AbstractBroker, AbstractHook, AbstractRateLimiter, AbstractRetryTimer, PhoneNumber, SubmitSm

from storage import deliveries as store
from storage import representatives
from storage.deliveries import Claimed
from storage.representatives import SmsSettings

from .channels import DeferDelivery, PermanentDeliveryError, SkipDelivery, TemporaryDeliveryError
from .config import Server
from .render import Rendered

log = logging.getLogger("ecard.notifier.sms")

# -- the limits

# UCS-2 (data_coding 0x08): 140 octets of user data = 70 UTF-16 units in one SMS; with a
# 6-byte concatenation UDH, 134 octets = 67 units per part (3GPP TS 23.040).
UCS2_SINGLE_UNITS = 70
UCS2_PART_UNITS = 67
UDH_CONCAT_IEI = 0x00  # concatenated short message, 8-bit reference
ESM_CLASS_UDHI = 0x40
DATA_CODING_UCS2 = 0x08
# A paid message is at most this many parts (a notice is one or two; a digest of a busy day
# three or four); longer ones are cut with "…" (every part is billed).
SMS_PARTS_MAX = 6
# Submit_sm PDUs a second to the SMSC (one part is one PDU). Aggregators sell a throughput
# (typically 10-100/s per bind) and answer ESME_RTHROTTLED beyond it.
SMS_PER_SECOND_MAX = 10
# The default daily cap per representative (messages, not parts; a digest is one), stored
# per representative (migration 0012, ``daily_cap``): SMS may become paid, and a runaway
# till must not send a parent a hundred messages.
SMS_PER_DAY_MAX = 20
# submit_sm to submit_sm_resp (and the wait for the bind when the SMSC is away).
SMS_SUBMIT_TIMEOUT_MS = 10_000
# The SMSC reconnect (aiosmpplib's loop): capped exponential backoff.
SMPP_RECONNECT_MS_MIN = 200
SMPP_RECONNECT_MS_MAX = 5_000
SMPP_ENQUIRE_LINK_S = 30.0
SMS_SOURCE_ADDR = "ECARD"
RECEIPT_DELIVERED = "DELIVRD"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# -- splitting (pure) ----------------------------------------------------------------------------


def ucs2_units(text: str) -> int:
    return len(text.encode("utf-16-be")) // 2


def split_text(text: str) -> list[str]:
    """The texts of the parts: one part up to 70 UTF-16 units, else parts of 67 (a
    surrogate pair is never cut)."""
    if ucs2_units(text) <= UCS2_SINGLE_UNITS:
        return [text]
    parts: list[str] = []
    current: list[str] = []
    units = 0
    for ch in text:
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > UCS2_PART_UNITS:
            parts.append("".join(current))
            current, units = [], 0
        current.append(ch)
        units += width
    if current:
        parts.append("".join(current))
    return parts


def split_ucs2(text: str, reference: int) -> list[bytes]:
    """The short_message octets of each submit_sm: UCS-2 alone for one part, else the UDH
    (05 00 03 ref total seq) followed by the part's UCS-2."""
    parts = split_text(text)
    if len(parts) == 1:
        return [text.encode("utf-16-be")]
    assert len(parts) <= 255
    ref = reference & 0xFF
    return [bytes((5, UDH_CONCAT_IEI, 3, ref, len(parts), i)) + p.encode("utf-16-be")
            for i, p in enumerate(parts, 1)]


def fit(text: str, parts_max: int) -> str:
    """Cut ``text`` to fit ``parts_max`` parts, ending with "…"."""
    if len(split_text(text)) <= parts_max:
        return text
    budget = UCS2_SINGLE_UNITS if parts_max == 1 else parts_max * UCS2_PART_UNITS
    out = text
    while ucs2_units(out) + 1 > budget:
        out = out[:-1]
    return out.rstrip() + "…"


def sms_text(rendered: Rendered) -> str:
    """One line of text: the body's lines joined by spaces (an SMS has no room for layout)."""
    return " ".join(line.strip() for line in rendered.text.splitlines() if line.strip())


# -- the rules (pure) ----------------------------------------------------------------------------


class Send(msgspec.Struct, frozen=True):
    parts_max: int


class Defer(msgspec.Struct, frozen=True):
    until_ms: int
    reason: str


class Skip(msgspec.Struct, frozen=True):
    reason: str


class Digest(msgspec.Struct, frozen=True):
    period_start_ms: int  # events at or after this ...
    period_end_ms: int  # ... and before this (the digest time) are in this digest


def _local(ms: int, offset_min: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone(dt.timedelta(minutes=offset_min)))


def _at_minute(day: dt.datetime, minute: int) -> dt.datetime:
    return day.replace(hour=minute // 60, minute=minute % 60, second=0, microsecond=0)


def local_day_start_ms(now_ms: int, offset_min: int) -> int:
    return int(_at_minute(_local(now_ms, offset_min), 0).timestamp() * 1000)


def quiet_until_ms(now_ms: int, offset_min: int, quiet_from: int, quiet_to: int) -> int | None:
    """The end of the quiet hours if ``now`` is inside them (school local time), else None.
    quiet_from == quiet_to: no quiet hours."""
    if quiet_from == quiet_to:
        return None
    local = _local(now_ms, offset_min)
    minute = local.hour * 60 + local.minute
    inside = quiet_from <= minute < quiet_to if quiet_from < quiet_to else (minute >= quiet_from or minute < quiet_to)
    if not inside:
        return None
    end = _at_minute(local, quiet_to)
    if end <= local:
        end += dt.timedelta(days=1)
    return int(end.timestamp() * 1000)


def digest_period(event_at_ms: int, offset_min: int, digest_minute: int) -> tuple[int, int]:
    """The digest an event belongs to: (start, end) with end the first digest time after the
    event (school local time) and start the one before it."""
    local = _local(event_at_ms, offset_min)
    end = _at_minute(local, digest_minute)
    if end <= local:
        end += dt.timedelta(days=1)
    start = end - dt.timedelta(days=1)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def decide(settings: SmsSettings, *, now_ms: int, event_at_ms: int, utc_offset_minutes: int, sent_today: int,
           digest_carrier: bool = False) -> Send | Defer | Skip | Digest:
    """What to do with one SMS now. Order: quiet hours (deferred, never dropped), the digest
    (deferred to its time, then one message), the daily cap (over it: skipped; the app and
    the portal still show the event), then the plan (free: one part; paid: up to
    SMS_PARTS_MAX)."""
    quiet = quiet_until_ms(now_ms, utc_offset_minutes, settings.quiet_from_minute, settings.quiet_to_minute)
    if quiet is not None:
        return Defer(quiet, "quiet hours")
    if settings.digest and not digest_carrier:
        start, end = digest_period(event_at_ms, utc_offset_minutes, settings.digest_minute)
        if now_ms < end:
            return Defer(end, "daily digest")
        return Digest(start, end)
    if sent_today >= settings.daily_cap:
        return Skip(f"daily SMS cap reached ({settings.daily_cap})")
    return Send(1 if settings.plan == "free" else SMS_PARTS_MAX)


# -- throttling, reconnect -----------------------------------------------------------------------


class TokenBucket(AbstractRateLimiter):
    """At most ``rate`` PDUs a second on average, bursts of up to ``rate``."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self.waited_s = 0.0

    async def limit(self) -> None:
        # Take the token now (the balance may go below zero: a debt), then wait the debt
        # out: no loop, so no float rounding can make it spin.
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate) - 1
        self.updated = now
        if self.tokens < 0:
            wait = -self.tokens / self.rate
            self.waited_s += wait
            await self.sleep(wait)


class Backoff(AbstractRetryTimer):
    def __init__(self, min_ms: int, max_ms: int) -> None:
        self.min_ms, self.max_ms, self.failures = min_ms, max_ms, 0

    def next_delay(self) -> float:
        return min(self.max_ms, self.min_ms * 2 ** min(self.failures, 20)) / 1000

    async def wait(self) -> None:
        delay = self.next_delay()
        self.failures += 1
        await asyncio.sleep(delay)

    def reset(self) -> None:
        self.failures = 0


class _Outbox(AbstractBroker):
    """aiosmpplib's queue of PDUs to send, from which a submit given up on (its send timed
    out: the SMSC was away) is dropped, so that it does not go out after the reconnect
    beside its retry."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.dropped: set[str] = set()

    async def enqueue(self, message) -> None:
        self.queue.put_nowait(message)

    async def dequeue(self):
        while True:
            message = await self.queue.get()
            log_id = getattr(message, "log_id", "")
            if log_id in self.dropped:
                self.dropped.discard(log_id)
                continue
            return message


class _Hook(AbstractHook):
    def __init__(self, channel: "SmsChannel") -> None:
        self.channel = channel

    async def sending(self, smpp_message, pdu, client_id) -> None:
        # A submit given up on may still be in aiosmpplib's sender (taken from the queue
        # before the connection broke, written after the reconnect): it must not go out
        # beside its retry. A ValueError makes aiosmpplib skip this PDU and go on.
        log_id = getattr(smpp_message, "log_id", "")
        if log_id and log_id in self.channel.outbox.dropped:
            self.channel.outbox.dropped.discard(log_id)
            raise ValueError(f"submit {log_id} was given up on (timed out); not sent")

    async def received(self, smpp_message, pdu, client_id) -> None:
        if isinstance(smpp_message, aiosmpplib.SubmitSmResp):
            self.channel._answered(smpp_message)
        elif isinstance(smpp_message, aiosmpplib.DeliverSm) and smpp_message.is_receipt():
            receipt = smpp_message.parse_receipt()
            await self.channel._receipt(str(receipt.get("id", "")), str(receipt.get("stat", "")))

    async def send_error(self, smpp_message, error, client_id) -> None:
        if isinstance(error, ValueError) and "given up" in str(error):
            return
        fut = self.channel._waiting.pop(getattr(smpp_message, "log_id", ""), None)
        if fut is not None and not fut.done():
            fut.set_exception(TemporaryDeliveryError(f"SMPP: {type(error).__name__}: {error}"))


# -- the digest's text (pure) ---------------------------------------------------------------------


def digest_text(day: str, lines: list[tuple[str, str]]) -> str:
    """One SMS for a period: "Сводка за 25.11. Иванов Иван: 08:41 вход; 12:41 покупка …"
    (``lines``: (pupil, the event's short line), oldest first; grouped by pupil)."""
    by_pupil: dict[str, list[str]] = {}
    for pupil, line in lines:
        by_pupil.setdefault(pupil, []).append(line)
    if not by_pupil:
        return f"Сводка за {day}: событий нет."
    return f"Сводка за {day}. " + " ".join(f"{pupil}: {'; '.join(items)}." for pupil, items in by_pupil.items())


# -- the channel ---------------------------------------------------------------------------------

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)


class SmsChannel:
    """submit_sm (UCS-2, UDH-concatenated parts) through one aiosmpplib ESME bound as a
    transceiver; done once the SMSC answered every part (its message ids are stored).

    Before it submits, the representative's rules (``decide``): quiet hours and the digest's
    time defer the delivery (``DeferDelivery``), the daily cap skips it (cancelled), the
    digest's carrier sends one SMS for the period and the others it covered are recorded
    as sent in it. Every SMS sent is written, readable, under ``<sent_dir>/sms/``."""

    name = "sms"
    html = False

    def __init__(self, server: Server, *, pool: asyncpg.Pool | None, renderer=None, reference=None,
                 per_second: int = SMS_PER_SECOND_MAX, timeout_ms: int = SMS_SUBMIT_TIMEOUT_MS,
                 source_addr: str = SMS_SOURCE_ADDR, sent_dir: Path | None = None,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.server = server
        self.pool = pool
        self.renderer = renderer
        self.reference = reference
        self.timeout_s = timeout_ms / 1000
        self.source_addr = source_addr
        self.clock_ms = clock_ms
        self.directory = Path(sent_dir) / "sms" if sent_dir is not None else None
        self.limiter = TokenBucket(per_second)
        self._waiting: dict[str, asyncio.Future] = {}
        self.outbox = _Outbox()
        self._locks: dict[int, asyncio.Lock] = {}
        self._ref = 0
        self.esme = aiosmpplib.ESME(
            smsc_host=server.host, smsc_port=server.port, system_id=(server.username or "ecard")[:15],
            password=(server.password or "")[:8], client_id="ecard-notifier", hook=_Hook(self),
            broker=self.outbox, rate_limiter=self.limiter,
            retry_timer=Backoff(SMPP_RECONNECT_MS_MIN, SMPP_RECONNECT_MS_MAX),
            enquire_link_interval=SMPP_ENQUIRE_LINK_S, socket_timeout=self.timeout_s, log_level=logging.CRITICAL,
        )
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self.esme.start(), name="smpp-esme")

    def _answered(self, resp) -> None:
        fut = self._waiting.pop(resp.log_id, None)
        if fut is None or fut.done():
            return
        status = resp.command_status
        if status == aiosmpplib.SmppCommandStatus.ESME_ROK:
            fut.set_result(resp.message_id)
        elif status in (aiosmpplib.SmppCommandStatus.ESME_RINVDSTADR, aiosmpplib.SmppCommandStatus.ESME_RINVSRCADR):
            fut.set_exception(PermanentDeliveryError(f"SMPP submit_sm_resp {status.name}"))
        else:
            fut.set_exception(TemporaryDeliveryError(f"SMPP submit_sm_resp {status.name}"))

    async def _receipt(self, message_id: str, stat: str) -> None:
        if not message_id or self.pool is None:
            return
        try:
            async with self.pool.acquire() as conn:
                await store.sms_receipt(conn, message_id, stat, now_ms=self.clock_ms())
        except _DB_ERRORS as exc:
            log.warning("receipt for %s not recorded: %s", message_id, exc)

    async def submit(self, delivery: Claimed, text: str) -> list[str]:
        """Every part submitted and answered; the SMSC's message ids, in part order."""
        # Wait for the bind first (the SMSC away: nothing is queued, so nothing can go out
        # later beside the retry); the timeout of the answers then starts at the send.
        # aiosmpplib has no public "bound" flag: its own event is read (as the intake reads paho's).
        try:
            await asyncio.wait_for(self.esme._bound.wait(), self.timeout_s)  # noqa: SLF001
        except asyncio.TimeoutError:
            raise TemporaryDeliveryError(f"SMPP {self.server.url}: not bound within {self.timeout_s:g} s "
                                         "(SMSC away; reconnecting)") from None
        self._ref = (self._ref + 1) & 0xFF
        payloads = split_ucs2(text, self._ref)
        loop = asyncio.get_running_loop()
        log_ids = [f"d{delivery.id}.a{delivery.attempts}.p{i}" for i in range(1, len(payloads) + 1)]
        futures = []
        for log_id, payload in zip(log_ids, payloads):
            message = SubmitSm(
                short_message=text or " ", source=PhoneNumber(self.source_addr),
                destination=PhoneNumber(delivery.address.lstrip("+")),
                esm_class=ESM_CLASS_UDHI if len(payloads) > 1 else 0, encoding="ucs2", registered_delivery=1,
                log_id=log_id,
            )
            message.set_encoded_message(payload)  # our own UCS-2 and UDH: aiosmpplib sends it as it is
            fut = loop.create_future()
            self._waiting[log_id] = fut
            futures.append(fut)
            await self.esme.broker.enqueue(message)
        try:
            ids = await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s)
        except asyncio.TimeoutError:
            self._give_up(log_ids, futures)
            raise TemporaryDeliveryError(f"SMPP {self.server.url}: no submit_sm_resp within {self.timeout_s:g} s "
                                         "(SMSC away or slow)") from None
        except BaseException:
            self._give_up(log_ids, futures)
            raise
        finally:
            for log_id in log_ids:
                self._waiting.pop(log_id, None)
        return [str(m) for m in ids]

    def _give_up(self, log_ids: list[str], futures: list[asyncio.Future]) -> None:
        """The parts not answered must not go out later (the whole message is retried)."""
        for log_id, fut in zip(log_ids, futures):
            if not (fut.done() and not fut.cancelled() and fut.exception() is None):
                self.outbox.dropped.add(log_id)

    async def send(self, delivery: Claimed, rendered: Rendered) -> None:
        lock = self._locks.setdefault(delivery.representative_id, asyncio.Lock())
        async with lock:  # the cap is checked and used under one lock per representative
            await self._send(delivery, rendered)
        if not lock.locked() and len(self._locks) > 10_000:
            self._locks.clear()

    async def _send(self, delivery: Claimed, rendered: Rendered) -> None:
        from ledger.notices import NOTICE_DECODER

        notice = NOTICE_DECODER.decode(delivery.notice)
        offset = (await self.reference.school(delivery.school_id)).utc_offset_minutes if self.reference else 180
        now = self.clock_ms()
        assert self.pool is not None
        if delivery.attempts > 1:
            # Claimed again: if a notifier that stopped mid-send (SIGKILL, a lost lease) had its
            # submit accepted and the SMSC's message ids recorded, the SMS is out; sending it again
            # would charge a parent on a paid plan twice.
            try:
                async with self.pool.acquire() as conn:
                    before = await store.sms_receipt_of(conn, delivery.id)
            except _DB_ERRORS as exc:
                raise TemporaryDeliveryError(f"PostgreSQL: {type(exc).__name__}: {exc}") from None
            if before is not None and before.smsc_message_id is not None:
                raise SkipDelivery("sent", f"submitted before the notifier stopped (SMSC message id "
                                           f"{before.smsc_message_id}); not sent again")
        try:
            async with self.pool.acquire() as conn:
                settings = await representatives.sms_settings(conn, delivery.representative_id)
                sent_today = await store.sms_sent_since(conn, delivery.representative_id,
                                                        local_day_start_ms(now, offset))
        except _DB_ERRORS as exc:
            raise TemporaryDeliveryError(f"PostgreSQL: {type(exc).__name__}: {exc}") from None
        decision = decide(settings, now_ms=now, event_at_ms=notice.at_ms, utc_offset_minutes=offset,
                          sent_today=sent_today)
        text = sms_text(rendered)
        if isinstance(decision, Digest):
            async with self.pool.acquire() as conn:
                claim = await store.claim_digest(
                    conn, representative_id=delivery.representative_id, delivery_id=delivery.id,
                    period_start_ms=decision.period_start_ms, period_end_ms=decision.period_end_ms, now_ms=now)
            if claim.carrier_delivery_id != delivery.id:
                if delivery.id in claim.covered:
                    raise SkipDelivery("sent", f"in the daily digest (delivery {claim.carrier_delivery_id})")
                # came in after its digest went out: on its own
            else:
                text = await self._digest(claim.covered or [delivery.id], decision.period_end_ms - 1, offset)
            decision = decide(settings, now_ms=now, event_at_ms=notice.at_ms, utc_offset_minutes=offset,
                              sent_today=sent_today, digest_carrier=True)
        if isinstance(decision, Defer):
            raise DeferDelivery(decision.until_ms, decision.reason)
        if isinstance(decision, Skip):
            raise SkipDelivery("cancelled", decision.reason)
        assert isinstance(decision, Send)
        text = fit(text, decision.parts_max)
        ids = await self.submit(delivery, text)
        try:
            async with self.pool.acquire() as conn:
                await store.sms_submitted(conn, delivery.id, ids, now_ms=self.clock_ms())
        except _DB_ERRORS as exc:  # sent: the ids are lost, the receipts will not match
            log.warning("delivery %d: SMSC message ids %s not recorded: %s", delivery.id, ids, exc)
        self._record(delivery, text, ids, settings)

    async def _digest(self, delivery_ids: list[int], period_end_ms: int, offset: int) -> str:
        from ledger.notices import NOTICE_DECODER

        from .render import notice_context

        async with self.pool.acquire() as conn:
            events = await store.digest_events(conn, delivery_ids)
        lines: list[tuple[str, str]] = []
        for account_id, kind, notice_json, school_id, _ in events:
            notice = NOTICE_DECODER.decode(notice_json.encode())
            school = await self.reference.school(school_id)
            pupil = await self.reference.pupil(account_id)
            ctx = notice_context(notice, pupil=pupil, school_name=school.name,
                                 utc_offset_minutes=school.utc_offset_minutes, products=school.products)
            lines.append((pupil, self.renderer.render("sms", kind, ctx).subject))
        day = _local(period_end_ms, offset).strftime("%d.%m")
        return digest_text(day, lines)

    def _record(self, delivery: Claimed, text: str, ids: list[str], settings: SmsSettings) -> None:
        if self.directory is None:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.directory / f"{stamp}-d{delivery.id}-{_UNSAFE.sub('_', delivery.event_id)}.txt"
        parts = split_text(text)
        body = [
            "Channel: sms", f"To: {delivery.address}", f"From: {self.source_addr}",
            f"Representative: {delivery.representative_id} (plan {settings.plan}"
            f"{', daily digest' if settings.digest else ''})",
            f"Event: {delivery.event_id} ({delivery.kind}, account {delivery.account_id})",
            f"Delivery: {delivery.id}, attempt {delivery.attempts}",
            f"SMSC: {self.server.url}, message ids {', '.join(ids)}",
            f"Encoding: UCS-2 (data_coding 0x08), {len(parts)} part{'s' if len(parts) > 1 else ''}, "
            f"{ucs2_units(text)} characters",
            "", text, "",
        ]
        if len(parts) > 1:
            body += [f"Part {i}/{len(parts)}: {p}" for i, p in enumerate(parts, 1)] + [""]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(body), encoding="utf-8")
        os.replace(tmp, path)

    async def close(self) -> None:
        if self._task is not None:
            try:
                await asyncio.wait_for(self.esme.stop(), 5)
            except Exception:  # the SMSC is gone already
                pass
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
