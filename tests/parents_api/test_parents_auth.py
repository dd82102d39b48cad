"""The parents' API over real HTTP (uvicorn) against real PostgreSQL, with a real SMTP server
(aiosmtpd) receiving the one-time codes and SMS written as files: codes, tokens, scope,
today's view and the paginated history."""

from __future__ import annotations

import hashlib

import pytest

from ledger.codes import JournalKind
from parents_api import config
from parents_support import (  # noqa: F401  (world: the fixture)
    HOUR, OTHER_FAMILY_PHONE, T0, Line, World, journal, sql, wait_until, world,
)
from storage.demo_dataset import demo_card_uid

pytestmark = pytest.mark.processes  # a uvicorn server and an SMTP server per test

PARENT7 = "parent7@example.ru"
PHONE7 = "+79000000007"


def _none_sent(world: World, address: str) -> bool:
    return not world.smtp.for_address(address)


SENTINEL_PHONE = "+79000000003"
SENTINEL_EMAIL = "parent3@example.ru"


def _after_a_later_send(world: World, channel: str) -> None:
    """Wait until a code asked for a known contact AFTER the requests under test has been sent on
    the same channel. A send is spawned before the 202 leaves (after COMMIT), and the SMS sender
    writes its file within its task, tasks running in the order they were made: by the time the
    later code is there, any SMS spawned earlier is there too. (An e-mail has its own SMTP
    connection, so for e-mail this is a wait of the same length, and the tests check the stored
    row, which is what decides whether anything is sent.)"""
    if channel == "sms":
        n = len(world.sms_files(SENTINEL_PHONE)) + 1
        assert world.ask_code(phone=SENTINEL_PHONE).status_code == 202
        world.sms_code(SENTINEL_PHONE, n)
    else:
        n = len(world.smtp.for_address(SENTINEL_EMAIL)) + 1
        assert world.ask_code(email=SENTINEL_EMAIL).status_code == 202
        world.email_code(SENTINEL_EMAIL, n)


def _no_code_stored(world: World, contact: str) -> bool:
    """Every request of this contact left no code to send (a NULL digest: unknown contact)."""
    rows = sql(world.dsn, "SELECT code_sha256 FROM parent_otps WHERE contact = $1", contact)
    return bool(rows) and all(r["code_sha256"] is None for r in rows)


# --- one-time codes ------------------------------------------------------------------------------


def test_email_code_end_to_end_through_a_real_smtp_server(world: World):
    r = world.ask_code(email="Parent7@Example.RU")  # case does not matter
    assert r.status_code == 202, r.text
    assert r.json()["expires_in_ms"] == config.OTP_TTL_MS and r.json()["attempts_max"] == config.OTP_ATTEMPTS_MAX
    code = world.email_code(PARENT7)
    mail = world.smtp.for_address(PARENT7)[0]["mail"]
    assert "Код входа" in mail["Subject"]
    assert mail.get_body(preferencelist=("html",)) is not None  # plain text and HTML
    # stored hashed, never in clear
    rows = sql(world.dsn, "SELECT contact, code_sha256 FROM parent_otps")
    assert [r["contact"] for r in rows] == ["email:parent7@example.ru"]
    assert bytes(rows[0]["code_sha256"]) == hashlib.sha256(f"email:parent7@example.ru\n{code}".encode()).digest()
    assert code.encode() not in bytes(rows[0]["code_sha256"])
    dump = sql(world.dsn, "SELECT t::text AS t FROM parent_otps t")[0]["t"]
    assert code not in dump

    r = world.http.post("/auth/token", json={"email": PARENT7, "code": code})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert r.json()["token_type"] == "bearer" and r.json()["expires_at_ms"] == T0 + config.PARENT_TOKEN_TTL_MS
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    stored = sql(world.dsn, "SELECT token_sha256, contact FROM parent_sessions")
    assert [(bytes(s["token_sha256"]), s["contact"]) for s in stored] == [
        (hashlib.sha256(token.encode()).digest(), "email:parent7@example.ru")]

    # the code is spent
    again = world.http.post("/auth/token", json={"email": PARENT7, "code": code})
    assert again.status_code == 401 and "ask for a new one" in again.json()["detail"]

    me = world.get(token, "/me")
    assert me.status_code == 200, me.text
    body = me.json()
    assert [c["account_id"] for c in body["children"]] == [7, 8]
    assert [r["id"] for r in body["representatives"]] == [7]
    assert body["children"][0]["balance_kopecks"] == 50_000 and body["children"][0]["class_name"]

    # logout: the token stops working
    assert world.http.delete("/auth/token", headers={"Authorization": f"Bearer {token}"}).status_code == 204
    r = world.get(token, "/me")
    assert r.status_code == 401 and r.json() == {"status_code": 401, "detail": "unknown, expired or revoked token"}


def test_phone_code_goes_where_sms_goes_and_phone_formats_are_normalized(world: World):
    assert world.ask_code(phone="8 (900) 000-00-07").status_code == 202
    code = world.sms_code(PHONE7)
    text = world.sms_files(PHONE7)[0].read_text(encoding="utf-8")
    assert text.startswith(f"To: {PHONE7}\n") and "Никому его не сообщайте" in text
    r = world.http.post("/auth/token", json={"phone": "79000000007", "code": code})
    assert r.status_code == 201, r.text
    assert [c["account_id"] for c in world.get(r.json()["token"], "/me").json()["children"]] == [7, 8]
    assert world.smtp.messages == []  # a phone code never goes by e-mail


def test_unknown_contacts_get_the_same_answers_and_nothing_is_sent(world: World):
    known = world.ask_code(phone=PHONE7)
    unknown = world.ask_code(phone="+79990000000")
    unknown_mail = world.ask_code(email="nobody@example.ru")
    assert known.status_code == unknown.status_code == unknown_mail.status_code == 202
    assert known.json() == unknown.json() == unknown_mail.json()
    world.sms_code(PHONE7)  # the known one arrived ...
    _after_a_later_send(world, "sms")  # ... and anything spawned for the unknown ones would have too
    _after_a_later_send(world, "email")
    assert _no_code_stored(world, "phone:+79990000000") and _no_code_stored(world, "email:nobody@example.ru")
    assert world.sms_files("+79990000000") == [] and world.smtp.for_address("nobody@example.ru") == []
    assert sorted(p.name.split("-")[-1] for p in (world.sent / "sms").iterdir()) == [
        f"{SENTINEL_PHONE}.txt", f"{PHONE7}.txt"]
    assert [m["to"] for m in world.smtp.messages] == [[SENTINEL_EMAIL]]
    # redeeming: the same refusals, attempt by attempt, known or not
    for n in range(1, config.OTP_ATTEMPTS_MAX + 1):
        a = world.http.post("/auth/token", json={"phone": PHONE7, "code": "000000" if n % 2 else "999999"})
        b = world.http.post("/auth/token", json={"phone": "+79990000000", "code": "000000"})
        assert a.status_code == b.status_code == 401
        assert a.json() == b.json()
    # a contact that never asked, known or not
    a = world.http.post("/auth/token", json={"email": "parent9@example.ru", "code": "123456"})
    b = world.http.post("/auth/token", json={"email": "never@example.ru", "code": "123456"})
    assert a.status_code == b.status_code == 401 and a.json() == b.json()
    # a suspended representative is unknown too
    sql(world.dsn, "UPDATE representatives SET suspended_at_ms = 1 WHERE id = 9")
    assert world.ask_code(email="parent9@example.ru").json() == unknown.json()
    _after_a_later_send(world, "email")
    assert world.smtp.for_address("parent9@example.ru") == []


def test_a_code_expires(world: World):
    assert world.ask_code(email=PARENT7).status_code == 202
    code = world.email_code(PARENT7)
    world.clock.now_ms += config.OTP_TTL_MS  # exactly its life: gone
    r = world.http.post("/auth/token", json={"email": PARENT7, "code": code})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # one millisecond before the end it works
    assert world.ask_code(email=PARENT7).status_code == 202
    code = world.email_code(PARENT7, 2)
    world.clock.now_ms += config.OTP_TTL_MS - 1
    assert world.http.post("/auth/token", json={"email": PARENT7, "code": code}).status_code == 201


def test_a_new_code_replaces_the_previous_one(world: World):
    world.ask_code(email=PARENT7)
    first = world.email_code(PARENT7, 1)
    world.ask_code(email=PARENT7)
    second = world.email_code(PARENT7, 2)
    if first != second:
        assert world.http.post("/auth/token", json={"email": PARENT7, "code": first}).status_code == 401
    assert world.http.post("/auth/token", json={"email": PARENT7, "code": second}).status_code == 201


def test_attempts_are_limited_then_even_the_right_code_is_refused(world: World):
    world.ask_code(email=PARENT7)
    code = world.email_code(PARENT7)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for n in range(config.OTP_ATTEMPTS_MAX):
        r = world.http.post("/auth/token", json={"email": PARENT7, "code": wrong})
        assert r.status_code == 401
        left = config.OTP_ATTEMPTS_MAX - n - 1
        assert (f"{left} attempt(s) left" if left else "no attempts left") in r.json()["detail"]
    r = world.http.post("/auth/token", json={"email": PARENT7, "code": code})
    assert r.status_code == 401 and "too many wrong attempts" in r.json()["detail"]
    assert sql(world.dsn, "SELECT attempts FROM parent_otps")[0]["attempts"] == config.OTP_ATTEMPTS_MAX
    assert sql(world.dsn, "SELECT count(*) AS n FROM parent_sessions")[0]["n"] == 0
    # malformed codes are 422 and do not count
    r = world.http.post("/auth/token", json={"email": PARENT7, "code": "12ab56"})
    assert r.status_code == 422 and r.json()["field"] == "code"


def test_rate_limit_per_contact_known_or_not(world: World):
    for contact in ({"email": PARENT7}, {"phone": "+79990000001"}):
        for _ in range(config.OTP_SENDS_PER_HOUR_MAX):
            assert world.ask_code(**contact).status_code == 202
        r = world.ask_code(**contact)
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) == 3600 and "codes per hour" in r.json()["detail"]
    # other contacts are not affected
    assert world.ask_code(email="parent8@example.ru").status_code == 202
    wait_until(lambda: len(world.smtp.for_address(PARENT7)) == config.OTP_SENDS_PER_HOUR_MAX, 10, "the codes")
    world.clock.now_ms += HOUR - 1
    assert world.ask_code(email=PARENT7).status_code == 429
    world.clock.now_ms += 1  # the first request leaves the rolling hour
    assert world.ask_code(email=PARENT7).status_code == 202
    assert world.ask_code(phone="+79990000001").status_code == 202


def test_bad_bodies_are_422_naming_the_field(world: World):
    for body, field in (({}, "phone"), ({"phone": PHONE7, "email": PARENT7}, "phone"), ({"phone": "12345"}, "phone"),
                        ({"email": "not-an-address"}, "email"), ({"phone": PHONE7, "extra": 1}, "extra")):
        r = world.http.post("/auth/code", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field"] == field, r.json()
    r = world.http.post("/auth/token", json={"email": PARENT7})
    assert r.status_code == 422 and r.json()["field"] == "code"
    assert sql(world.dsn, "SELECT count(*) AS n FROM parent_otps")[0]["n"] == 0


# --- scope: a token sees its own children only -----------------------------------------------------


def test_another_familys_child_is_404_everywhere(world: World):
    token = world.login_email(PARENT7)
    mine = {7, 8}
    for account_id in list(range(1, 1001)) + [2000, 999_999]:
        r = world.get(token, f"/children/{account_id}")
        if account_id in mine:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 404, (account_id, r.text)
            assert r.json() == {"status_code": 404, "detail": f"no child with account {account_id} among yours"}
    for path in ("/children/9/events", "/children/2000/events", "/children/2000/events?limit=1",
                 "/children/-1", "/children/abc", "/children/9999999999999999999999"):
        assert world.get(token, path).status_code == 404, path
    # the other family sees its own child and not ours
    other = world.login_phone(OTHER_FAMILY_PHONE)
    assert [c["account_id"] for c in world.get(other, "/me").json()["children"]] == [2000]
    assert world.get(other, "/children/2000").json()["balance_kopecks"] == 12345
    assert world.get(other, "/children/7").status_code == 404
    assert world.get(other, "/children/7/events").status_code == 404
    # a child taken off the application disappears at once
    sql(world.dsn, "DELETE FROM representative_pupils WHERE account_id = 8 AND representative_id = 7")
    assert world.get(token, "/children/8").status_code == 404
    assert [c["account_id"] for c in world.get(token, "/me").json()["children"]] == [7]


def test_suspended_and_removed_representatives_lose_access_at_once(world: World):
    token = world.login_phone(PHONE7)
    assert world.get(token, "/children/7").status_code == 200
    sql(world.dsn, "UPDATE representatives SET suspended_at_ms = $1 WHERE id = 7", T0)
    for path in ("/me", "/children/7", "/children/7/events"):
        r = world.get(token, path)
        assert r.status_code == 401 and "suspended or removed" in r.json()["detail"], path
    sql(world.dsn, "UPDATE representatives SET suspended_at_ms = NULL WHERE id = 7")
    assert world.get(token, "/children/7").status_code == 200  # resumed: the same token works again
    sql(world.dsn, "UPDATE representatives SET removed_at_ms = $1 WHERE id = 7", T0)
    assert world.get(token, "/me").status_code == 401
    # and no new code reaches a removed representative
    assert world.ask_code(phone=PHONE7).status_code == 202
    _after_a_later_send(world, "sms")
    assert len(world.sms_files(PHONE7)) == 1


def test_tokens_expire_and_unknown_tokens_are_401(world: World):
    token = world.login_email(PARENT7)
    assert world.get(None, "/me").status_code == 401
    assert world.get("garbage", "/me").status_code == 401
    assert world.http.get("/me", headers={"Authorization": f"Basic {token}"}).status_code == 401
    world.clock.now_ms += config.PARENT_TOKEN_TTL_MS
    assert world.get(token, "/me").status_code == 401
    # 401 before 422: an unauthenticated request never learns whether its query was valid
    assert world.get(None, "/children/7/events?limit=0").status_code == 401


# --- today and the history ---------------------------------------------------------------------------

TURNSTILE, TILL = 1_000_001, 2_000_001
REVENUE = None  # filled from the database


def _revenue(dsn: str) -> int:
    return sql(dsn, "SELECT id FROM accounts WHERE kind = 2 AND school_id = 1")[0]["id"]


def _free_budget(dsn: str) -> int:
    return sql(dsn, "SELECT id FROM accounts WHERE kind = 6 AND school_id = 1")[0]["id"]


def _day_rows(dsn: str) -> None:
    revenue, budget = _revenue(dsn), _free_budget(dsn)
    at = T0 - 2 * HOUR  # 08:00 Moscow
    journal(dsn, [
        {"device": TURNSTILE, "txn": 1, "kind": JournalKind.ENTRY, "account": 7, "direction": 1, "at": at - 5_000,
         "balance": 50_000},
        {"device": TURNSTILE, "txn": 2, "kind": JournalKind.PASSAGE, "account": 7, "direction": 1, "at": at,
         "balance": 50_000},
        {"device": TILL, "txn": 1, "kind": JournalKind.PURCHASE, "account": 7, "debit": 7, "credit": revenue,
         "amount": 12_500, "balance": 37_500, "at": at + HOUR, "items": [Line(1, 1, 8_000), Line(9, 2, 2_250)]},
        {"device": TILL, "txn": 2, "kind": JournalKind.PURCHASE, "account": 7, "debit": budget, "credit": revenue,
         "amount": 9_000, "balance": 37_500, "at": at + HOUR + 60_000, "items": [Line(2, 1, 9_000)]},
        {"device": TURNSTILE, "txn": 3, "kind": JournalKind.PASSAGE, "account": 7, "direction": 2,
         "at": at + 90 * 60_000, "balance": 37_500},
        # yesterday evening (23:59 Moscow) and another child's passage: not today's, not 7's
        {"device": TURNSTILE, "txn": 4, "kind": JournalKind.PASSAGE, "account": 7, "direction": 2,
         "at": T0 - 10 * HOUR - 60_000, "balance": 50_000},
        {"device": TURNSTILE, "txn": 5, "kind": JournalKind.PASSAGE, "account": 9, "direction": 1, "at": at,
         "balance": 50_000},
    ])


def test_child_today_in_school_local_time(world: World):
    _day_rows(world.dsn)
    token = world.login_email(PARENT7)
    body = world.get(token, "/children/7").json()
    assert (body["full_name"], body["class_name"], body["balance_kopecks"]) == ("Ученик 7", "8А", 50_000)
    today = body["today"]
    assert today["day"] == "2026-09-01"
    assert [(p["local_time"], p["direction"]) for p in today["passages"]] == [("08:00", "entry"), ("09:30", "exit")]
    meals = today["meals"]
    assert [(m["local_time"], m["amount_kopecks"], m["free_meal"]) for m in meals] == [
        ("09:00", 12_500, False), ("09:01", 9_000, True)]
    names = {code: name for code, name, _ in __import__("storage.demo_dataset", fromlist=["x"]).DEMO_PRODUCTS}
    assert meals[0]["items"] == [
        {"product_code": 1, "name": names[1], "quantity": 1, "unit_price_kopecks": 8_000},
        {"product_code": 9, "name": names[9], "quantity": 2, "unit_price_kopecks": 2_250}]
    assert world.get(token, "/children/8").json()["today"] == {"day": "2026-09-01", "passages": [], "meals": []}


def test_history_pages_through_everything_once_newest_first(world: World):
    revenue = _revenue(world.dsn)
    rows = []
    for n in range(1, 31):  # 30 days of: passage in, purchase, passage out
        at = T0 - n * 24 * HOUR
        rows += [
            {"device": TURNSTILE, "txn": 10 * n, "kind": JournalKind.ENTRY, "account": 7, "direction": 1,
             "at": at - 1_000},
            {"device": TURNSTILE, "txn": 10 * n + 1, "kind": JournalKind.PASSAGE, "account": 7, "direction": 1,
             "at": at},
            {"device": TILL, "txn": n, "kind": JournalKind.PURCHASE, "account": 7, "debit": 7, "credit": revenue,
             "amount": 8_000, "balance": 50_000 - 8_000 * n, "at": at + HOUR, "items": [Line(1, 1, 8_000)]},
            {"device": TURNSTILE, "txn": 10 * n + 2, "kind": JournalKind.PASSAGE, "account": 7, "direction": 2,
             "at": at + 5 * HOUR},
        ]
    # money commands: a bank top-up of 7, a transfer from 8 to 7, a cash top-up at the till
    rows += [
        {"device": 0, "txn": 1, "kind": JournalKind.BANK_TOPUP, "account": 7, "debit": 999_999, "credit": 7,
         "amount": 50_000, "balance": 60_000, "at": T0 - 3 * HOUR, "identifier": b""},
        {"device": 0, "txn": 2, "kind": JournalKind.TRANSFER, "account": 8, "debit": 8, "credit": 7,
         "amount": 1_000, "balance": 49_000, "at": T0 - 2 * HOUR, "identifier": b""},
        {"device": TILL, "txn": 100, "kind": JournalKind.CASH_TOPUP, "account": 7, "debit": 2_999_999, "credit": 7,
         "amount": 20_000, "balance": 80_000, "at": T0 - HOUR},
        # another child's rows never show
        {"device": TURNSTILE, "txn": 9_999, "kind": JournalKind.PASSAGE, "account": 9, "direction": 1,
         "at": T0 - HOUR},
    ]
    journal(world.dsn, rows)
    token = world.login_email(PARENT7)
    seen, before, pages = [], None, 0
    while True:
        params = {"limit": 7} | ({"before": before} if before else {})
        r = world.get(token, "/children/7/events", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["events"]) <= 7
        seen += page["events"]
        pages += 1
        before = page["next_before"]
        if before is None:
            break
        # a row committed meanwhile (newer) does not shift the pages
        if pages == 2:
            journal(world.dsn, [{"device": TURNSTILE, "txn": 50_000, "kind": JournalKind.PASSAGE, "account": 7,
                                 "direction": 1, "at": T0 - 1}])
    assert len(seen) == 30 * 3 + 3 and pages == 14
    assert len({e["id"] for e in seen}) == len(seen)
    assert [e["at_ms"] for e in seen] == sorted((e["at_ms"] for e in seen), reverse=True)
    kinds = [e["kind"] for e in seen]
    assert kinds[:3] == ["cash_topup", "transfer_in", "bank_topup"]
    assert kinds.count("entry") == 30 and kinds.count("exit") == 30 and kinds.count("purchase") == 30
    assert [(e["amount_kopecks"], e["balance_after_kopecks"]) for e in seen[:3]] == [
        (20_000, 80_000), (1_000, None), (50_000, 60_000)]
    purchase = next(e for e in seen if e["kind"] == "purchase")
    assert purchase["amount_kopecks"] == -8_000 and purchase["cost_kopecks"] == 8_000 and not purchase["free_meal"]
    assert purchase["items"][0]["name"] and purchase["local_time"].endswith("+03:00")
    # the sibling sees the transfer as money out
    out = world.get(token, "/children/8/events").json()["events"]
    assert [(e["kind"], e["amount_kopecks"], e["balance_after_kopecks"]) for e in out] == [
        ("transfer_out", -1_000, 49_000)]
    # bad pages
    for params, field in (({"before": "yesterday"}, "before"), ({"limit": 0}, "limit"),
                          ({"limit": config.HISTORY_LIMIT_MAX + 1}, "limit")):
        r = world.get(token, "/children/7/events", params=params)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field, r.json()


def test_card_uid_of_the_demo_is_what_the_cards_listing_uses(world: World):
    # guards the USSD tests' assumption about the demo's card ids
    assert sql(world.dsn, "SELECT account_id FROM identifiers WHERE identifier = $1", demo_card_uid(7))[0][0] == 7


def test_delivery_state_from_the_notifiers_records(world: World):
    from storage import deliveries

    async def take_in() -> None:
        import asyncpg

        conn = await asyncpg.connect(world.dsn)
        try:
            for n, (account, targets) in enumerate([
                (7, [deliveries.Target(7, "sms", PHONE7), deliveries.Target(7, "email", PARENT7)]),
                (20, [deliveries.Target(20, "sms", "+79000000020")]),
            ]):
                await deliveries.take_in(
                    conn, event_id=f"{TURNSTILE}:{n}:entry", kind="entry", account_id=account, school_id=1,
                    at_ms=T0 - n, created_at_ms=T0, notice_json="{}", targets=targets, now_ms=T0)
            # representative 9 made another representative of child 8 is not shown to the parent
            await conn.execute("INSERT INTO representative_pupils (account_id, representative_id) VALUES (8, 9)")
            await deliveries.take_in(
                conn, event_id="x:8:entry", kind="entry", account_id=8, school_id=1, at_ms=T0 - 5,
                created_at_ms=T0, notice_json="{}",
                targets=[deliveries.Target(7, "email", PARENT7), deliveries.Target(9, "sms", "+79000000009")],
                now_ms=T0)
        finally:
            await conn.close()

    from parents_support import run
    run(take_in())
    token = world.login_email(PARENT7)
    body = world.get(token, "/children/7/deliveries").json()
    assert [e["event_id"] for e in body["events"]] == [f"{TURNSTILE}:0:entry"]
    assert sorted((d["channel"], d["status"]) for d in body["events"][0]["deliveries"]) == [
        ("email", "pending"), ("sms", "pending")]
    eight = world.get(token, "/children/8/deliveries").json()["events"]
    assert [[d["channel"] for d in e["deliveries"]] for e in eight] == [["email"]]
    assert world.get(token, "/children/20/deliveries").status_code == 404
    assert world.get(token, "/children/7/deliveries?limit=0").status_code == 422
