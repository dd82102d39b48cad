"""The staff API as the bridge sees it: one call, ``POST /desk-readers/{desk}/uid``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .config import DeskReaderConfig

# Answers worth another try: the staff API restarting or overloaded, not a refusal.
RETRY_STATUS_CODES = frozenset((502, 503, 504))
# Detail texts are logged; a misbehaving server's are cut to this.
DETAIL_CHARS_MAX = 500


@dataclass(frozen=True)
class Posted:
    """What became of one UID: ``outcome`` is done, failed (the operation ran and was
    refused by the card rules), refused (4xx: nothing pending, another school, ...) or
    unreachable (no answer after every attempt)."""

    outcome: str
    status_code: int | None
    summary: str
    attempts: int


def summarize(status_code: int, body: Any) -> Posted:
    """An answer of the staff API as one log line."""
    if not isinstance(body, dict):
        return Posted("refused", status_code, f"HTTP {status_code}", 1)
    if status_code == 200:
        op_id, status = body.get("id"), body.get("status")
        if status == "done":
            card = body.get("card") or {}
            what = "temporary card" if body.get("action") == "issue_temporary" else "card"
            text = f"operation {op_id} done: {what} {card.get('uid')} bound to pupil {card.get('account_id')}"
            return Posted("done", status_code, text, 1)
        return Posted("failed", status_code, f"operation {op_id} {status}: {body.get('error')}", 1)
    detail = str(body.get("detail", ""))[:DETAIL_CHARS_MAX]
    return Posted("refused", status_code, f"refused ({status_code}): {detail}", 1)


class StaffClient:
    def __init__(self, config: DeskReaderConfig, token: str, stop: threading.Event) -> None:
        self.config = config
        self.stop = stop
        self.url = f"{config.staff_url.rstrip('/')}/desk-readers/{quote(config.desk, safe='')}/uid"
        timeout_s = config.http_timeout_ms / 1000
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=timeout_s),
            headers={"Authorization": f"Bearer {token}", "User-Agent": "ecard-deskreader"},
            follow_redirects=False,
        )

    def post_uid(self, uid_hex: str) -> Posted:
        last = "not tried"
        for attempt in range(1, self.config.uid_post_attempts_max + 1):
            if attempt > 1 and self.stop.wait(self.config.uid_post_retry_interval_ms / 1000):
                break
            try:
                response = self.http.post(self.url, json={"uid": uid_hex})
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS_CODES:
                last = f"HTTP {response.status_code}"
                continue
            try:
                body = response.json()
            except ValueError:
                body = None
            posted = summarize(response.status_code, body)
            return Posted(posted.outcome, posted.status_code, posted.summary, attempt)
        return Posted("unreachable", None, f"staff API not reached at {self.url}: {last}", attempt)

    def close(self) -> None:
        self.http.close()
