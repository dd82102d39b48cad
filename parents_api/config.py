"""Settings of the parents' API and its named limits (every one with its unit and reason)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

# One-time codes (POST /auth/code, POST /auth/token).
OTP_DIGITS = 6
OTP_TTL_MS = 5 * 60_000  # a code lives 5 minutes: long enough to read an SMS, short for guessing
OTP_ATTEMPTS_MAX = 5  # wrong tries per code; then it is dead (5 of 10^6: a guess succeeds 1 in 200,000)
OTP_SENDS_PER_HOUR_MAX = 5  # codes per contact per rolling hour: SMS cost, and no mail-bombing a stranger
OTP_RATE_WINDOW_MS = 3_600_000  # the rolling hour of OTP_SENDS_PER_HOUR_MAX
# Bearer tokens of the apps and the portal.
TOKEN_BYTES = 32
PARENT_TOKEN_TTL_MS = 30 * 86_400_000  # 30 days, then a new code; suspension ends a token at once anyway
# USSD (*377*888#).
USSD_SESSION_TTL_MS = 180_000  # idle time after which a dialogue is gone (aggregators keep ~180 s)
USSD_SESSIONS_MAX = 10_000  # live dialogues kept in ussd_sessions; a new one beyond it is refused politely
USSD_TEXT_CHARS_MAX = 182  # the USSD string limit (GSM 03.90): a longer "text" is not a USSD request
USSD_REPLY_CHARS_MAX = 182  # a reply longer than one USSD screen is cut with "…"
USSD_SESSION_ID_CHARS_MAX = 128
# History pages.
HISTORY_LIMIT_DEFAULT = 50
HISTORY_LIMIT_MAX = 200
# Sending codes happens after the answer (no timing difference between known and unknown
# contacts); a send slower than this is abandoned and logged.
SEND_TIMEOUT_S = 20.0
# Database.
POOL_SIZE_MIN, POOL_SIZE_MAX = 1, 10
STATEMENT_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_S = 10.0

Clock = Callable[[], int]


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Settings:
    dsn: str
    otp_ttl_ms: int = OTP_TTL_MS
    otp_attempts_max: int = OTP_ATTEMPTS_MAX
    otp_sends_per_hour_max: int = OTP_SENDS_PER_HOUR_MAX
    token_ttl_ms: int = PARENT_TOKEN_TTL_MS
    ussd_session_ttl_ms: int = USSD_SESSION_TTL_MS
    ussd_sessions_max: int = USSD_SESSIONS_MAX
    # When set, POST /ussd must carry "Authorization: Bearer <ussd_token>" (the aggregator's
    # shared secret): the phone number in the request is only as true as its sender.
    ussd_token: str | None = None
    pool_size_max: int = POOL_SIZE_MAX
    clock: Clock = field(default=system_clock_ms)
    # The payments service (card top-ups through the acquirer's page; None: the pages say top-ups
    # are not available) and where the parents' pages are reached (the acquirer sends the parent
    # back to <public_url>/account/<child>/topup/return).
    payments_url: str | None = None
    public_url: str = "http://127.0.0.1:8820"
    # Signs the pages' CSRF tokens. One process: a fresh secret each start is enough (a form
    # opened before a restart is refused once and shown again); several processes share one.
    csrf_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
