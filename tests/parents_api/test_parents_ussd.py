"""USSD *377*888# over real HTTP against real PostgreSQL: every menu path, blocking a card
with confirmation (the identifier really is blocked, audited, announced with NOTIFY
ecard_changes and written to the outbox), refusals, expiry and malformed input."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from ledger.codes import JournalKind, OutboxKind
from parents_api import config
from parents_support import (  # noqa: F401  (world: the fixture)
    HOUR, OTHER_FAMILY_PHONE, T0, Line, World, journal, make_world, sql, world,
)
from storage.demo_dataset import demo_card_uid

pytestmark = pytest.mark.processes

PHONE7 = "+79000000007"
MENU = "CON Электронная карта\n1. Баланс\n2. Проходы сегодня\n3. Питание сегодня\n4. Заблокировать карту\n5. Как пополнить"


def dial(world: World, session: str, *steps: str, phone: str = PHONE7) -> list[str]:
    """The whole dialogue as an aggregator sends it: "", "4", "4*1", ..."""
    texts = ["*".join(steps[:n]) for n in range(len(steps) + 1)]
    return [world.ussd(session, t, phone).text for t in texts]


def test_main_menu_balance_and_top_up(world: World):
    sql(world.dsn, "UPDATE accounts SET balance_kopecks = -1250 WHERE id = 8")
    menu, balance = dial(world, "s1", "1")
    assert menu == MENU
    assert balance == "END Баланс:\nУченик 7: 500,00 ₽\nУченик 8: -12,50 ₽"
    # JSON works as well as a form
    assert world.ussd("s2", "", as_json=True).text == MENU
    topup = world.ussd("s2", "5", as_json=True).text
    assert topup.startswith("END Пополнить счёт") and "PGU.MOS.RU" in topup
    # an ended session is gone
    assert sql(world.dsn, "SELECT count(*) AS n FROM ussd_sessions")[0]["n"] == 0


def test_passages_and_meals_today_in_school_time(world: World):
    revenue = sql(world.dsn, "SELECT id FROM accounts WHERE kind = 2 AND school_id = 1")[0]["id"]
    at = T0 - 2 * HOUR  # 08:00 Moscow
    journal(world.dsn, [
        {"device": 1_000_001, "txn": 1, "kind": JournalKind.ENTRY, "account": 7, "direction": 1, "at": at - 3_000},
        {"device": 1_000_001, "txn": 2, "kind": JournalKind.PASSAGE, "account": 7, "direction": 1, "at": at},
        {"device": 1_000_002, "txn": 1, "kind": JournalKind.PASSAGE, "account": 7, "direction": 2,
         "at": at + 30 * 60_000},
        {"device": 2_000_001, "txn": 1, "kind": JournalKind.PURCHASE, "account": 7, "debit": 7, "credit": revenue,
         "amount": 12_500, "balance": 37_500, "at": at + HOUR, "items": [Line(1, 1, 8_000), Line(9, 2, 2_250)]},
        {"device": 1_000_001, "txn": 3, "kind": JournalKind.PASSAGE, "account": 7, "direction": 1,
         "at": T0 - 11 * HOUR},  # yesterday 23:00 Moscow
    ])
    products = {r["code"]: r["name"] for r in sql(world.dsn, "SELECT code, name FROM products WHERE school_id = 1")}
    _, passages = dial(world, "p", "2")
    assert passages == "END Проходы сегодня:\nУченик 7: 08:00 вход, 08:30 выход\nУченик 8: не было"
    _, meals = dial(world, "m", "3")
    assert meals == (f"END Питание сегодня:\nУченик 7: 09:00 125,00 ₽ ({products[1]}, {products[9]} x2)\n"
                     "Ученик 8: не было")


def test_block_a_card_with_confirmation(world: World):
    uid = demo_card_uid(8)
    sql(world.dsn, "INSERT INTO identifiers (identifier, account_id, kind, bound_at_ms) VALUES ($1, 8, 3, 1)",
        bytes.fromhex("0b0b0b0b"))

    async def go() -> tuple[list[str], list[str]]:
        conn = await asyncpg.connect(world.dsn)
        heard: list[str] = []
        await conn.add_listener("ecard_changes", lambda *args: heard.append(args[3]))
        try:
            async with httpx.AsyncClient(base_url=world.url, timeout=30) as http:
                texts = []
                for text in ("", "4", "4*2", "4*2*1", "4*2*1*1"):
                    r = await http.post("/ussd", data={"sessionId": "b1", "phoneNumber": PHONE7,
                                                        "serviceCode": "*377*888#", "text": text})
                    texts.append(r.text)
            deadline = asyncio.get_running_loop().time() + 5
            while not heard and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            return texts, heard
        finally:
            await conn.close()

    texts, heard = asyncio.run(go())
    assert texts[0] == MENU
    assert texts[1] == "CON Чью карту заблокировать?\n1. Ученик 7\n2. Ученик 8"
    assert texts[2] == f"CON Ученик 8: какую карту?\n1. Сервисная карта …{uid.hex()[-4:]}\n2. Браслет …0b0b"
    assert texts[3] == (f"CON Заблокировать Сервисная карта …{uid.hex()[-4:]} (Ученик 8) навсегда? Вернуть её нельзя.\n"
                        "1. Да, заблокировать\n2. Нет")
    assert texts[4].startswith(f"END Сервисная карта …{uid.hex()[-4:]} (Ученик 8) заблокирована.")
    assert heard == [f"identifier:{uid.hex()}"]
    row = sql(world.dsn, "SELECT status, expires_at_ms FROM identifiers WHERE identifier = $1", uid)[0]
    assert (row["status"], row["expires_at_ms"]) == (1, None)
    assert sql(world.dsn, "SELECT status FROM identifiers WHERE identifier = $1", bytes.fromhex("0b0b0b0b"))[0][0] == 0
    events = sql(world.dsn, "SELECT action, actor, account_id FROM identifier_events WHERE identifier = $1", uid)
    assert [(e["action"], e["actor"], e["account_id"]) for e in events] == [("block", "representative:7:ussd", 8)]
    audit = sql(world.dsn, "SELECT actor, action, after->>'status' AS status FROM audit_log WHERE entity = $1",
                f"card:{uid.hex()}")
    assert [(a["actor"], a["action"], a["status"]) for a in audit] == [("representative:7:ussd", "card.block", "blocked")]
    outbox = sql(world.dsn, "SELECT kind, account_id, payload->>'identifier_hex' AS uid FROM outbox_events")
    assert [(o["kind"], o["account_id"], o["uid"]) for o in outbox] == [(OutboxKind.CARD_BLOCKED.value, 8, uid.hex())]
    # the blocked card is no longer offered; the other one still is
    _, _, cards = dial(world, "b2", "4", "2")
    assert cards == "CON Ученик 8: какую карту?\n1. Браслет …0b0b"


def test_block_cancelled_and_wrong_choices(world: World):
    uid = demo_card_uid(7)
    assert dial(world, "c1", "4", "1", "1", "2")[-1] == "END Блокировка отменена. Карта работает."
    assert sql(world.dsn, "SELECT status FROM identifiers WHERE identifier = $1", uid)[0][0] == 0
    for steps in (("4", "3"), ("4", "0"), ("4", "1", "5"), ("4", "1", "1", "3"), ("9",)):
        replies = dial(world, f"w{'-'.join(steps)}", *steps)
        assert replies[-1] == "END Неверный ввод. Наберите *377*888# снова.", (steps, replies)
    assert sql(world.dsn, "SELECT status FROM identifiers WHERE identifier = $1", uid)[0][0] == 0
    # a child without cards
    sql(world.dsn, "UPDATE identifiers SET status = 1 WHERE account_id = 8")
    assert dial(world, "c2", "4", "2")[-1] == "END У ребёнка Ученик 8 нет действующих карт."
    # a card blocked meanwhile (by the school) between the list and the confirmation
    dial(world, "c3", "4", "1", "1")
    sql(world.dsn, "UPDATE identifiers SET status = 1 WHERE identifier = $1", uid)
    assert world.ussd("c3", "4*1*1*1").text.startswith("END Эта карта уже заблокирована")
    assert sql(world.dsn, "SELECT count(*) AS n FROM audit_log WHERE actor LIKE 'representative:%'")[0]["n"] == 0


def test_another_family_cannot_block_or_see(world: World):
    # family 7's session id used from another phone: not their session
    dial(world, "f1", "4")
    assert world.ussd("f1", "4*1", phone=OTHER_FAMILY_PHONE).text.startswith("END Время сеанса истекло")
    # the other family sees its own child only
    assert dial(world, "f2", "1", phone=OTHER_FAMILY_PHONE)[-1] == "END Баланс:\nИванов Пётр: 123,45 ₽"
    assert dial(world, "f3", "4", phone=OTHER_FAMILY_PHONE)[1] == "CON Чью карту заблокировать?\n1. Иванов Пётр"
    assert world.ussd("f3", "4*2", phone=OTHER_FAMILY_PHONE).text == "END Неверный ввод. Наберите *377*888# снова."


def test_unknown_suspended_and_removed_phones_are_refused_politely(world: World):
    refusal = ("END Извините, этот номер не подключён к информированию. "
               "Подайте заявление ответственному сотруднику школы.")
    assert world.ussd("u1", "", phone="+79990000000").text == refusal
    assert world.ussd("u2", "4*1*1*1", phone="+79990000000").text == refusal
    sql(world.dsn, "UPDATE representatives SET suspended_at_ms = 1 WHERE id = 9")
    assert world.ussd("u3", "", phone="+79000000009").text == refusal
    # removed in the middle of a session: the next step is refused, nothing is blocked
    dial(world, "u4", "4", "1", "1")
    sql(world.dsn, "UPDATE representatives SET removed_at_ms = 1 WHERE id = 7")
    assert world.ussd("u4", "4*1*1*1").text == refusal
    assert sql(world.dsn, "SELECT status FROM identifiers WHERE identifier = $1", demo_card_uid(7))[0][0] == 0


def test_sessions_expire(world: World):
    dial(world, "e1", "4")
    world.clock.now_ms += config.USSD_SESSION_TTL_MS - 1  # idle just under the limit: still alive
    assert world.ussd("e1", "4*1").text.startswith("CON ")
    world.clock.now_ms += config.USSD_SESSION_TTL_MS  # idle for the whole limit: gone
    assert world.ussd("e1", "4*1*1").text == "END Время сеанса истекло. Наберите *377*888# снова."
    assert world.ussd("never-started", "1").text == "END Время сеанса истекло. Наберите *377*888# снова."
    # expired rows are deleted as new sessions start
    dial(world, "e2", "4")
    world.clock.now_ms += config.USSD_SESSION_TTL_MS
    world.ussd("e3", "")
    assert [r["session_id"] for r in sql(world.dsn, "SELECT session_id FROM ussd_sessions")] == ["e3"]


def test_malformed_input_is_end_never_500(world: World):
    bad = "END Неверный ввод. Наберите *377*888# снова."
    for text in ("abc", "4*", "*", "4**1", "1" * 200, "٤", "4*1*1*1*1", "123"):
        dial(world, "m0", )
        assert world.ussd("m0", text).text == bad, text
    for fields in ({"phoneNumber": PHONE7, "text": ""},  # no sessionId
                   {"sessionId": "m1", "text": ""},  # no phone
                   {"sessionId": "m1", "phoneNumber": "+1555123", "text": ""},
                   {"sessionId": "m1", "phoneNumber": PHONE7, "serviceCode": "*100#", "text": ""},
                   {"sessionId": "x" * 200, "phoneNumber": PHONE7, "text": ""}):
        r = world.http.post("/ussd", data=fields)
        assert (r.status_code, r.text) == (200, bad), fields
    for content, ctype in ((b"{not json", "application/json"), (b"[1, 2]", "application/json"),
                           (b'{"sessionId": {"a": 1}, "phoneNumber": "+79000000007"}', "application/json"),
                           (b"\xff\xfe", "application/x-www-form-urlencoded"), (b"hello", "text/xml"),
                           (b"a=" + b"1" * 5000, "application/x-www-form-urlencoded")):
        r = world.http.post("/ussd", content=content, headers={"Content-Type": ctype})
        assert (r.status_code, r.text) == (200, bad), (content[:30], ctype)
    # phone formats an aggregator may send
    assert world.ussd("m2", "", phone="79000000007").text == MENU
    assert world.ussd("m3", "", phone="89000000007").text == MENU


def test_live_sessions_are_bounded_and_the_aggregator_token_is_checked(demo_dsn, tmp_path):
    w, server, smtp = make_world(demo_dsn, tmp_path, ussd_sessions_max=2, ussd_token="agg-secret")
    try:
        assert w.ussd("a", "").text == MENU
        assert w.ussd("b", "").text == MENU
        assert w.ussd("c", "").text == "END Сервис перегружен. Пожалуйста, повторите через минуту."
        assert w.ussd("a", "1").text.startswith("END Баланс")  # ends a: room for one more
        assert w.ussd("c", "").text == MENU
        w.clock.now_ms += config.USSD_SESSION_TTL_MS  # b and c expire: room again
        assert w.ussd("d", "").text == MENU
        r = w.http.post("/ussd", data={"sessionId": "e", "phoneNumber": PHONE7, "text": ""})
        assert r.status_code == 401
        r = w.http.post("/ussd", data={"sessionId": "e", "phoneNumber": PHONE7, "text": ""},
                        headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
    finally:
        w.http.close()
        server.stop()
        smtp.controller.stop()
