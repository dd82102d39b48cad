"""SMS without peers: splitting at the UCS-2 boundaries, the UDH, the rules (plan, daily cap,
quiet hours, digest), the throttle's token bucket, the digest's text."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from notifier.channels import tv_topic
from notifier.render import Renderer, notice_context
from notifier.sms import (
    SMS_PARTS_MAX,
    SMS_PER_DAY_MAX,
    UCS2_PART_UNITS,
    UCS2_SINGLE_UNITS,
    Defer,
    Digest,
    Send,
    Skip,
    TokenBucket,
    decide,
    digest_period,
    digest_text,
    fit,
    quiet_until_ms,
    sms_text,
    split_text,
    split_ucs2,
)
from notifier_support import PRODUCTS, SCHOOL_NAME, sample_notices
from storage.representatives import SmsSettings

MSK = 180


def ms(y, mo, d, h, mi, offset=MSK) -> int:
    return int(dt.datetime(y, mo, d, h, mi, tzinfo=dt.timezone(dt.timedelta(minutes=offset))).timestamp() * 1000)


@pytest.mark.parametrize("length,parts", [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)])
def test_cyrillic_splits_at_the_ucs2_boundaries(length, parts):
    text = ("Ж" * length)
    pieces = split_text(text)
    assert len(pieces) == parts
    assert "".join(pieces) == text
    if parts > 1:
        assert all(len(p) == UCS2_PART_UNITS for p in pieces[:-1]) and 0 < len(pieces[-1]) <= UCS2_PART_UNITS


def test_one_part_is_plain_ucs2_and_parts_carry_a_concatenation_udh():
    assert split_ucs2("Ж" * 70, 7) == ["Ж".encode("utf-16-be") * 70]
    payloads = split_ucs2("Ж" * 71, 0x1234)
    assert [p[:6] for p in payloads] == [bytes([5, 0, 3, 0x34, 2, 1]), bytes([5, 0, 3, 0x34, 2, 2])]
    assert len(payloads[0]) == 6 + 2 * 67 == 140  # exactly the 140 octets of user data
    assert b"".join(p[6:] for p in payloads).decode("utf-16-be") == "Ж" * 71


def test_a_surrogate_pair_counts_two_and_is_never_cut():
    text = "Ж" * 66 + "😀" + "Ж" * 10  # 66 + 2 + 10 = 78 units
    pieces = split_text(text)
    assert pieces[0] == "Ж" * 66 and pieces[1].startswith("😀")
    assert len(split_text("😀" * 35)) == 1 and len(split_text("😀" * 35 + "Ж")) == 2


def test_fit_cuts_to_the_parts_allowed_with_an_ellipsis():
    assert fit("Ж" * 70, 1) == "Ж" * 70
    cut = fit("Ж" * 100, 1)
    assert cut.endswith("…") and len(cut) == UCS2_SINGLE_UNITS
    cut = fit("Ж" * 1000, SMS_PARTS_MAX)
    assert len(split_text(cut)) == SMS_PARTS_MAX and cut.endswith("…")


def test_every_kind_is_short_enough_for_sms():
    renderer = Renderer()
    for _, notice in sample_notices(5):
        kind = type(notice).__struct_config__.tag
        ctx = notice_context(notice, pupil="Константинопольская Александра", school_name=SCHOOL_NAME,
                             utc_offset_minutes=MSK, products=PRODUCTS)
        text = sms_text(renderer.render("sms", kind, ctx))
        assert "\n" not in text and len(split_text(text)) <= 2, (kind, text)
        tv = renderer.render("tv_push", kind, ctx)
        assert len(tv.subject) + len(tv.text) <= 160, (kind, tv)


DEFAULTS = SmsSettings()
NOON = ms(2026, 11, 25, 12, 0)


def test_the_defaults_are_free_plan_cap_20_quiet_22_to_07_no_digest():
    assert (DEFAULTS.plan, DEFAULTS.daily_cap, DEFAULTS.digest) == ("free", SMS_PER_DAY_MAX, False)
    assert (DEFAULTS.quiet_from_minute, DEFAULTS.quiet_to_minute) == (22 * 60, 7 * 60)


def test_plan_free_is_one_part_paid_is_concatenated():
    assert decide(DEFAULTS, now_ms=NOON, event_at_ms=NOON, utc_offset_minutes=MSK, sent_today=0) == Send(1)
    paid = SmsSettings(plan="paid")
    assert decide(paid, now_ms=NOON, event_at_ms=NOON, utc_offset_minutes=MSK, sent_today=0) == Send(SMS_PARTS_MAX)


def test_the_daily_cap_skips_what_is_over_it():
    capped = SmsSettings(daily_cap=3)
    assert isinstance(decide(capped, now_ms=NOON, event_at_ms=NOON, utc_offset_minutes=MSK, sent_today=2), Send)
    over = decide(capped, now_ms=NOON, event_at_ms=NOON, utc_offset_minutes=MSK, sent_today=3)
    assert isinstance(over, Skip) and "cap" in over.reason


@pytest.mark.parametrize("h,m,until", [
    (22, 0, (26, 7, 0)), (23, 59, (26, 7, 0)), (0, 0, (25, 7, 0)), (6, 59, (25, 7, 0)),
])
def test_quiet_hours_defer_to_their_end_in_school_time(h, m, until):
    now = ms(2026, 11, 25, h, m)
    decision = decide(DEFAULTS, now_ms=now, event_at_ms=now, utc_offset_minutes=MSK, sent_today=0)
    assert decision == Defer(ms(2026, 11, until[0], until[1], until[2]), "quiet hours")


def test_outside_quiet_hours_and_quiet_hours_by_the_schools_offset():
    for h, m in ((7, 0), (21, 59), (12, 0)):
        assert quiet_until_ms(ms(2026, 11, 25, h, m), MSK, 22 * 60, 7 * 60) is None
    assert quiet_until_ms(NOON, MSK, 0, 0) is None  # equal: none
    assert quiet_until_ms(ms(2026, 11, 25, 13, 0), MSK, 12 * 60, 14 * 60) == ms(2026, 11, 25, 14, 0)
    # 12:00 in Moscow is 21:00 in Kamchatka (+12): not quiet; 14:00 Moscow is 23:00 there
    assert quiet_until_ms(NOON, 12 * 60, 22 * 60, 7 * 60) is None
    assert quiet_until_ms(ms(2026, 11, 25, 14, 0), 12 * 60, 22 * 60, 7 * 60) == ms(2026, 11, 26, 7, 0, 12 * 60)


def test_the_digest_waits_for_its_time_then_covers_the_period():
    digest = SmsSettings(digest=True, digest_minute=20 * 60)
    morning = ms(2026, 11, 25, 8, 41)
    d = decide(digest, now_ms=morning + 1000, event_at_ms=morning, utc_offset_minutes=MSK, sent_today=0)
    assert d == Defer(ms(2026, 11, 25, 20, 0), "daily digest")
    d = decide(digest, now_ms=ms(2026, 11, 25, 20, 0), event_at_ms=morning, utc_offset_minutes=MSK, sent_today=0)
    assert d == Digest(ms(2026, 11, 24, 20, 0), ms(2026, 11, 25, 20, 0))
    # an event after the digest time belongs to the next day's digest
    assert digest_period(ms(2026, 11, 25, 20, 30), MSK, 20 * 60) == (ms(2026, 11, 25, 20, 0), ms(2026, 11, 26, 20, 0))
    # the digest's carrier then obeys the plan and the cap like any message
    assert decide(digest, now_ms=ms(2026, 11, 25, 20, 0), event_at_ms=morning, utc_offset_minutes=MSK, sent_today=0,
                  digest_carrier=True) == Send(1)
    # quiet hours come first, also for the digest
    late = SmsSettings(digest=True, digest_minute=23 * 60)
    assert isinstance(decide(late, now_ms=ms(2026, 11, 25, 23, 0), event_at_ms=morning, utc_offset_minutes=MSK,
                             sent_today=0), Defer)


def test_the_digest_text_groups_by_pupil():
    text = digest_text("25.11", [("Иванов Иван", "08:41 вход"), ("Петрова Мария", "08:45 вход"),
                                 ("Иванов Иван", "12:41 покупка 85,00\u00a0₽")])
    assert text == ("Сводка за 25.11. Иванов Иван: 08:41 вход; 12:41 покупка 85,00\u00a0₽. "
                    "Петрова Мария: 08:45 вход.")
    assert digest_text("25.11", []) == "Сводка за 25.11: событий нет."


def test_the_token_bucket_keeps_to_the_rate():
    now = [0.0]
    slept = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(5, clock=lambda: now[0], sleep=sleep)

    async def run() -> None:
        for _ in range(15):
            await bucket.limit()

    asyncio.run(run())
    # a burst of 5, then one every 1/5 s: 10 more take 2 s
    assert now[0] == pytest.approx(2.0) and len(slept) == 10


def test_the_tv_topic():
    assert tv_topic("ecard/v1", 17) == "ecard/v1/representatives/17/tv"
