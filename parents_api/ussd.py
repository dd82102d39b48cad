"""USSD *377*888#: the session protocol of USSD aggregators (Africa's Talking style).

The aggregator POSTs one request per step to /ussd, as a form
(application/x-www-form-urlencoded) or JSON, with ``sessionId``, ``phoneNumber``,
``serviceCode`` and ``text``: everything the subscriber typed in this session, steps
joined by "*" ("" on the first request, then "4", "4*1", "4*1*2", ...). The answer is
text/plain: "CON <menu>" (the session goes on, the phone shows the menu and an input
field) or "END <text>" (the session ends). Always 200: every refusal is an "END" in
Russian, never a 500.

State is kept server-side in ``ussd_sessions`` (PostgreSQL, so several API processes
and a restart see the same dialogue), keyed by sessionId: the lists the subscriber was
shown (children, cards), so "2" means the child that was second on their screen even
if the family changed meanwhile. A dialogue expires USSD_SESSION_TTL_MS after its last
step; at most USSD_SESSIONS_MAX live dialogues are kept (a new one beyond is refused
politely). The phone must belong to an active representative; a session is bound to
the phone that started it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import jinja2
from litestar import MediaType, Request, Response, post

from storage import parents

from . import config, views
from .auth import normalize_phone
from .hardening import answers

log = logging.getLogger("parents_api.ussd")

SERVICE_CODE = "*377*888#"
USSD_BODY_BYTES_MAX = 4096  # four short fields; anything bigger is not an aggregator's request
STEP_DIGITS_MAX = 2  # a menu choice is 1..2 digits

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates" / "ussd"),
    autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
    undefined=jinja2.StrictUndefined,
)


def render(name: str, **context: Any) -> str:
    text = _env.get_template(f"{name}.j2").render(**context)
    text = "\n".join(line.rstrip() for line in text.strip().splitlines())
    if len(text) > config.USSD_REPLY_CHARS_MAX:
        text = text[: config.USSD_REPLY_CHARS_MAX - 1] + "…"
    return text


def con(name: str, **context: Any) -> tuple[bool, str]:
    return True, render(name, **context)


def end(name: str, **context: Any) -> tuple[bool, str]:
    return False, render(name, **context)


def reply(goes_on: bool, body: str) -> Response:
    return Response(content=("CON " if goes_on else "END ") + body, media_type=MediaType.TEXT,
                    status_code=200)  # Litestar adds "; charset=utf-8"


class BadInput(Exception):
    pass


def parse_fields(content_type: str, body: bytes) -> dict[str, str]:
    if len(body) > USSD_BODY_BYTES_MAX:
        raise BadInput("body too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput("not UTF-8") from exc
    if "json" in content_type:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BadInput("bad JSON") from exc
        if not isinstance(data, dict):
            raise BadInput("JSON is not an object")
        out = {}
        for k, v in data.items():
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                if v is None:
                    continue
                raise BadInput(f"{k}: not a string")
            out[str(k)] = str(v)
        return out
    if "x-www-form-urlencoded" in content_type or not content_type:
        try:
            form = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=16)
        except ValueError as exc:
            raise BadInput("bad form") from exc
        return {k: v[0] for k, v in form.items()}
    raise BadInput(f"unsupported content type {content_type!r}")


def parse_steps(text: str) -> list[str]:
    if len(text) > config.USSD_TEXT_CHARS_MAX:
        raise BadInput("text too long")
    if text == "":
        return []
    steps = text.split("*")
    if not all(s.isascii() and s.isdigit() and len(s) <= STEP_DIGITS_MAX for s in steps):
        raise BadInput("a step is not a menu number")
    return steps


def _choice(step: str, options: list[Any]) -> Any | None:
    n = int(step)
    return options[n - 1] if 1 <= n <= len(options) else None


async def dialogue(
    conn: asyncpg.Connection, settings: config.Settings, session_id: str, phone: str, steps: list[str], now: int
) -> tuple[bool, str]:
    """One step of a dialogue, inside the caller's transaction; (goes on, text)."""
    contact = parents.phone_contact(phone)
    if not await parents.active_representatives(conn, contact):
        await parents.end_ussd_session(conn, session_id)
        return end("unknown_phone")
    if not steps:  # the first request of a session (or the subscriber dialled again with this id)
        if not await parents.start_ussd_session(conn, session_id, phone, now, now + settings.ussd_session_ttl_ms,
                                                settings.ussd_sessions_max):
            return end("busy")
        return con("menu")
    row = await parents.ussd_session(conn, session_id)
    if row is None or row["expires_at_ms"] <= now or row["phone"] != phone:
        if row is not None and row["phone"] == phone:
            await parents.end_ussd_session(conn, session_id)
        return end("expired")
    state: dict[str, Any] = json.loads(row["state"])
    goes_on, body = await _menu(conn, contact, steps, state, now)
    if goes_on:
        await parents.save_ussd_session(conn, session_id, state, now, now + settings.ussd_session_ttl_ms)
    else:
        await parents.end_ussd_session(conn, session_id)
    return goes_on, body


async def _menu(
    conn: asyncpg.Connection, contact: str, steps: list[str], state: dict[str, Any], now: int
) -> tuple[bool, str]:
    first, rest = steps[0], steps[1:]
    if first in ("1", "2", "3", "5") and rest:
        return end("bad_input")  # those screens end the session: nothing can follow them
    if first == "5":
        return end("topup")
    if first not in ("1", "2", "3", "4"):
        return end("bad_input")
    kids = await parents.children(conn, contact)
    if not kids:
        return end("no_children")
    if first == "1":
        return end("balance", children=[{"name": views.short_name(c["full_name"]),
                                         "balance": views.rubles(c["balance_kopecks"])} for c in kids])
    if first in ("2", "3"):
        shown = []
        for c in kids:
            day = await views.today(conn, c, now)
            shown.append({
                "name": views.short_name(c["full_name"]),
                "passages": [{"time": p["local_time"], "direction": p["direction"]} for p in day["passages"]],
                "meals": [{"time": m["local_time"], "cost": views.rubles(m["amount_kopecks"]), "free": m["free_meal"],
                           "lines": [f"{i['name'] or i['product_code']}" + (f" x{i['quantity']}" if i["quantity"] > 1 else "")
                                     for i in m["items"]]} for m in day["meals"]],
            })
        return end("passages" if first == "2" else "meals", children=shown)
    return await _block(conn, contact, rest, state, kids, now)


async def _block(
    conn: asyncpg.Connection, contact: str, rest: list[str], state: dict[str, Any], kids: list[Any], now: int
) -> tuple[bool, str]:
    """4 -> child -> card -> 1 (block) / 2 (cancel)."""
    if len(rest) > 3:
        return end("bad_input")
    by_id = {c["account_id"]: c for c in kids}
    shown_children: list[int] = state.setdefault("children", [c["account_id"] for c in kids])
    if not rest:
        return con("choose_child", children=[{"name": views.short_name(by_id[a]["full_name"]) if a in by_id else "—"}
                                             for a in shown_children])
    account_id = _choice(rest[0], shown_children)
    if account_id is None:
        return end("bad_input")
    pupil = by_id.get(account_id)
    if pupil is None:  # no longer this phone's child
        return end("already_blocked")
    name = views.short_name(pupil["full_name"])
    cards_shown: dict[str, list[list[Any]]] = state.setdefault("cards", {})
    if str(account_id) not in cards_shown:
        cards_shown[str(account_id)] = [[bytes(r["identifier"]).hex(), r["kind"]]
                                        for r in await parents.cards(conn, contact, account_id)]
    cards = cards_shown[str(account_id)]
    if not cards:
        return end("no_cards", child=name)
    if len(rest) == 1:
        return con("choose_card", child=name, cards=[views.card_label(k, bytes.fromhex(h)) for h, k in cards])
    card = _choice(rest[1], cards)
    if card is None:
        return end("bad_input")
    label = views.card_label(card[1], bytes.fromhex(card[0]))
    if len(rest) == 2:
        return con("confirm_block", child=name, card=label)
    if rest[2] == "2":
        return end("block_cancelled")
    if rest[2] != "1":
        return end("bad_input")
    reps = await parents.active_representatives(conn, contact)
    actor = f"representative:{reps[0]['id']}:ussd" if reps else "representative:ussd"
    if not await parents.block_card(conn, contact, account_id, bytes.fromhex(card[0]), actor, now):
        return end("already_blocked")
    return end("blocked", child=name, card=label)


# The aggregator's request body (read raw: form or JSON), for the OpenAPI document. The protocol
# answers every request 200 (a body it cannot read: "END Неверный ввод"), so the schema constrains
# nothing: it describes the fields.
_USSD_FIELDS = {"description": "sessionId, phoneNumber (+7...), serviceCode (*377*888#), text (the steps so far, "
                               "joined by '*'); anything else is answered 200 END bad input"}
USSD_REQUEST_BODY = {"required": False, "content": {
    "application/x-www-form-urlencoded": {"schema": _USSD_FIELDS}, "application/json": {"schema": _USSD_FIELDS}}}


@post("/ussd", tags=["ussd"], status_code=200, media_type=MediaType.TEXT,
      opt=answers(401, request_body=USSD_REQUEST_BODY))
async def ussd(request: Request) -> Response:
    """One step of a USSD dialogue: form or JSON fields sessionId, phoneNumber, serviceCode, text;
    the answer is text/plain "CON <menu>" or "END <text>"."""
    settings: config.Settings = request.app.state.settings
    if settings.ussd_token is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        import hmac

        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.ussd_token.encode()):
            return Response({"status_code": 401, "detail": "the aggregator's bearer token is missing or wrong"},
                            status_code=401, media_type=MediaType.JSON)
    try:
        fields = parse_fields(request.headers.get("content-type", "").lower(), await request.body())
        session_id = fields.get("sessionId", "")
        if not 1 <= len(session_id) <= config.USSD_SESSION_ID_CHARS_MAX or not session_id.isprintable():
            raise BadInput("sessionId")
        phone = normalize_phone(fields.get("phoneNumber", ""))
        if phone is None:
            raise BadInput("phoneNumber")
        service = fields.get("serviceCode", SERVICE_CODE)
        if service and service != SERVICE_CODE:
            raise BadInput("serviceCode")
        steps = parse_steps(fields.get("text", ""))
    except BadInput as exc:
        log.info("USSD bad input: %s", exc)
        return reply(*end("bad_input"))
    try:
        now = settings.clock()
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            return reply(*await dialogue(conn, settings, session_id, phone, steps, now))
    except Exception:  # noqa: BLE001  the phone gets a polite END, the log the trace
        log.exception("USSD step failed (session %r)", session_id)
        return reply(*end("error"))
