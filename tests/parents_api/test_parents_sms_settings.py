"""A parent's own SMS terms (plan, daily cap, quiet hours, daily digest) through the JSON API and the
notices page, over real HTTP against real PostgreSQL: stored and audited, 401 without a token, 422
naming the field for every bad value (nothing stored), another representative never touched (another
family's is 404, like an id that does not exist), and one rule shared with the staff API and the
notifier. The same form in a real browser: test_parents_browser_sms.py."""

from __future__ import annotations

import pytest

import notifier.sms
from parents_api import pages
from parents_support import sql, world  # noqa: F401  (world: the fixture)
from storage import representatives as store
from test_parents_pages import csrf, sign_in

pytestmark = pytest.mark.processes  # a uvicorn server and an SMTP server per test

PHONE7 = "+79000000007"
REP7 = 7  # demo parent 7 (parents_support: also of pupil 8)
REP8 = 8  # demo parent 8: another family at the same school
OTHER_SCHOOL_REP = 5000  # parents_support.prepare: another family at school 2
TERMS = {"plan": "paid", "daily_cap": 5, "quiet_from_minute": 21 * 60 + 30, "quiet_to_minute": 6 * 60 + 45,
         "digest": True, "digest_minute": 19 * 60}
DEFAULTS = {"plan": "free", "daily_cap": 20, "quiet_from_minute": 22 * 60, "quiet_to_minute": 7 * 60,
            "digest": False, "digest_minute": 20 * 60}


def path(rid: int) -> str:
    return f"/me/representatives/{rid}/sms"


def stored(dsn: str) -> dict[int, dict]:
    rows = sql(dsn, "SELECT representative_id, plan, daily_cap, quiet_from_minute, quiet_to_minute, digest, "
                    "digest_minute FROM representative_sms ORDER BY representative_id")
    return {r["representative_id"]: {k: r[k] for k in DEFAULTS} for r in rows}


def put(world, token: str | None, rid: int, body) -> object:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return world.http.put(path(rid), json=body, headers=headers)


def test_a_parent_reads_and_sets_their_own_sms_terms(world):
    token = world.login_phone(PHONE7)
    me = world.get(token, "/me").json()
    assert [r["id"] for r in me["representatives"]] == [REP7]
    first = world.get(token, path(REP7))
    assert first.status_code == 200, first.text
    assert first.json() == {"representative_id": REP7, "school_id": 1, "sms_channel": True, "terms": DEFAULTS}
    assert stored(world.dsn) == {}  # read, not written: no row means the defaults

    changed = put(world, token, REP7, TERMS)
    assert changed.status_code == 200, changed.text
    assert changed.json()["terms"] == TERMS
    assert world.get(token, path(REP7)).json()["terms"] == TERMS
    assert stored(world.dsn) == {REP7: TERMS}
    # What the notifier reads is what was set.
    assert store.SmsSettings(**stored(world.dsn)[REP7]) == store.SmsSettings(**TERMS)
    audit = sql(world.dsn, "SELECT actor, action, before, after FROM audit_log WHERE entity = $1",
                f"representative:{REP7}")
    assert [(a["actor"], a["action"]) for a in audit] == [(f"parent:phone:{PHONE7}", "representative.sms")]
    assert '"plan": "free"' in audit[0]["before"] and '"daily_cap": 5' in audit[0]["after"]

    # GET's terms are a PUT's body as they are; no quiet hours is equal ends.
    again = dict(first.json()["terms"], quiet_from_minute=0, quiet_to_minute=0, daily_cap=0)
    assert put(world, token, REP7, again).status_code == 200
    assert stored(world.dsn) == {REP7: again}


def test_without_a_valid_token_nothing_is_read_or_written(world):
    for token in (None, "not-a-token"):
        assert world.get(token, path(REP7)).status_code == 401
        refused = put(world, token, REP7, TERMS)
        assert refused.status_code == 401 and refused.json()["status_code"] == 401
    # 401 before the body is looked at: a bad body without a token is still 401
    assert put(world, None, REP7, {"plan": "gold"}).status_code == 401
    assert stored(world.dsn) == {}
    # a token whose representative was suspended stops at once
    token = world.login_phone(PHONE7)
    sql(world.dsn, "UPDATE representatives SET suspended_at_ms = 1 WHERE id = $1", REP7)
    assert put(world, token, REP7, TERMS).status_code == 401
    assert stored(world.dsn) == {}


@pytest.mark.parametrize(("change", "field"), [
    ({"plan": "gold"}, "plan"),
    ({"plan": None}, "plan"),
    ({"daily_cap": store.SMS_DAILY_CAP_MAX + 1}, "daily_cap"),
    ({"daily_cap": -1}, "daily_cap"),
    ({"daily_cap": "5"}, "daily_cap"),  # strict: never coerced
    ({"daily_cap": True}, "daily_cap"),
    ({"daily_cap": 2.5}, "daily_cap"),
    ({"quiet_from_minute": 1440}, "quiet_from_minute"),
    ({"quiet_to_minute": -1}, "quiet_to_minute"),
    ({"digest_minute": 24 * 60}, "digest_minute"),
    ({"digest": "yes"}, "digest"),
    ({"digest": 1}, "digest"),
    ({"extra": 1}, "extra"),  # unknown fields are refused
    ({"plan": "free\x00"}, "plan"),
])
def test_bad_values_are_422_naming_the_field_and_nothing_is_stored(world, change, field):
    token = world.login_phone(PHONE7)
    refused = put(world, token, REP7, {**TERMS, **change})
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == field, refused.json()
    assert stored(world.dsn) == {}


def test_missing_fields_and_broken_bodies_are_422(world):
    token = world.login_phone(PHONE7)
    body = dict(TERMS)
    del body["daily_cap"]  # a PUT replaces every term: none may be left out
    refused = put(world, token, REP7, body)
    assert refused.status_code == 422 and refused.json()["field"] == "daily_cap", refused.text
    for raw in (b"{", b"[]", b'"free"'):
        r = world.http.put(path(REP7), content=raw,
                           headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})
        assert r.status_code == 422, (raw, r.text)
    assert stored(world.dsn) == {}


def test_another_representative_is_never_touched(world):
    # The same person (phone of parent 7) also applied at school 2: a second row of their own.
    sql(world.dsn, """INSERT INTO representatives (id, school_id, full_name, relation, phone, email, channels, kinds,
                          consent_date, registered_by, registered_at_ms, updated_at_ms)
                      VALUES (5001, 2, 'Родитель ученика 7', 'parent', $1, NULL, '{portal,ussd}', '{entry}',
                              '2026-08-30', 'test', 0, 0)""", PHONE7)
    sql(world.dsn, "INSERT INTO representative_pupils (account_id, representative_id) VALUES (2000, 5001)")
    sql(world.dsn, "INSERT INTO representative_sms (representative_id, daily_cap) VALUES ($1, 3), ($2, 4)",
        REP8, OTHER_SCHOOL_REP)
    token = world.login_phone(PHONE7)
    before = stored(world.dsn)

    # Another family's representative, at this school or another, is 404 word for word like one that
    # does not exist; nothing of it is read or written.
    for rid in (REP8, OTHER_SCHOOL_REP, 999_999, 2**63 - 1, 2**70):
        assert world.get(token, path(rid)).status_code == 404
        r = put(world, token, rid, TERMS)
        assert r.status_code == 404, r.text
        if rid < 2**63:
            assert r.json()["detail"] == f"no representative {rid} among yours"
    assert stored(world.dsn) == before

    # The caller's own second row is separate: setting it leaves row 7 at its defaults, and back.
    other = world.get(token, path(5001)).json()
    assert other["school_id"] == 2 and other["sms_channel"] is False and other["terms"] == DEFAULTS
    assert put(world, token, 5001, TERMS).status_code == 200
    assert stored(world.dsn) == {**before, 5001: TERMS}
    assert world.get(token, path(REP7)).json()["terms"] == DEFAULTS
    # A removed row of one's own is gone from the token's rows: 404 (the other row keeps the token alive).
    sql(world.dsn, "UPDATE representatives SET removed_at_ms = 1 WHERE id = 5001")
    assert put(world, token, 5001, DEFAULTS).status_code == 404
    assert stored(world.dsn)[5001] == TERMS


def test_the_openapi_document_has_both_operations(world):
    doc = world.http.get("/schema/openapi.json").json()
    ops = doc["paths"]["/me/representatives/{representative_id}/sms"]
    for method in ("get", "put"):
        assert ops[method]["security"] == [{"bearer": []}]
        assert {"200", "401", "404", "422"} <= set(ops[method]["responses"]), ops[method]["responses"].keys()
        assert "403" not in ops[method]["responses"]
    schemas = doc["components"]["schemas"]
    terms = schemas["SmsTerms"]
    assert terms["additionalProperties"] is False
    assert set(terms["required"]) == set(TERMS)
    assert terms["properties"]["daily_cap"]["maximum"] == store.SMS_DAILY_CAP_MAX
    assert terms["properties"]["quiet_from_minute"]["maximum"] == 1439
    assert set(terms["properties"]["plan"]["enum"]) == {"free", "paid"}


# -- the notices page's form (plain HTTP; the same in chromium: test_parents_browser_sms.py) --------


def form(rid: int, **fields: str) -> dict[str, str]:
    return {f"sms_{name}_{rid}": value for name, value in fields.items()}


GOOD = dict(plan="paid", daily_cap="5", quiet="on", quiet_from="21:30", quiet_to="06:45", digest="on",
            digest_time="19:00")


def test_the_notices_page_sets_the_sms_terms(world):
    browser = sign_in(world)
    page = browser.get("/account/notices")
    assert page.status_code == 200 and "SMS: тариф, ограничения, сводка" in page.text
    assert 'value="22:00"' in page.text and 'value="07:00"' in page.text  # the defaults shown
    saved = browser.post("/account/notices/sms", data={
        **form(REP7, **GOOD), "_csrf_token": csrf(page),
        **form(OTHER_SCHOOL_REP, **GOOD)})  # a forged field for another family: the rows come from the session
    assert saved.status_code == 303 and saved.headers["location"] == "/account/notices?sms_saved=true#sms"
    assert stored(world.dsn) == {REP7: TERMS}
    shown = browser.get("/account/notices?sms_saved=true")
    assert "Условия SMS сохранены." in shown.text and 'value="21:30"' in shown.text and 'value="06:45"' in shown.text
    audit = sql(world.dsn, "SELECT actor FROM audit_log WHERE action = 'representative.sms'")
    assert [a["actor"] for a in audit] == [f"parent:phone:{PHONE7}"]
    # Quiet hours and the digest off: equal ends stored, the digest's time kept.
    off = dict(GOOD, quiet="", digest="", plan="free", daily_cap="0")
    assert browser.post("/account/notices/sms", data={**form(REP7, **off), "_csrf_token": csrf(page)}).status_code == 303
    assert stored(world.dsn)[REP7] == dict(DEFAULTS, daily_cap=0, quiet_from_minute=0, quiet_to_minute=0,
                                           digest_minute=19 * 60)


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"plan": "gold"}, "plan", "Выберите тариф"),
    ({"daily_cap": "501"}, "daily_cap", "от 0 до 500"),
    ({"daily_cap": "-1"}, "daily_cap", "от 0 до 500"),
    ({"daily_cap": "пять"}, "daily_cap", "от 0 до 500"),
    ({"quiet_from": "25:00"}, "quiet_from", "ЧЧ:ММ"),
    ({"quiet_to": "7"}, "quiet_to", "ЧЧ:ММ"),
    ({"quiet_from": "07:00", "quiet_to": "07:00"}, "quiet_to", "совпадают"),
    ({"digest_time": "вечером"}, "digest_time", "ЧЧ:ММ"),
])
def test_the_page_refuses_bad_terms_in_russian_and_stores_nothing(world, change, field, message):
    browser = sign_in(world)
    page = browser.get("/account/notices")
    refused = browser.post("/account/notices/sms", data={**form(REP7, **dict(GOOD, **change)),
                                                         "_csrf_token": csrf(page)})
    assert refused.status_code == 422, refused.text
    assert message in refused.text and "Исправьте отмеченные поля" in refused.text
    if field != "plan":
        assert f'id="sms_{field}_{REP7}"' in refused.text
        # the wrong field is marked for assistive technology, the value typed is shown again
        tag = refused.text[refused.text.index(f'id="sms_{field}_{REP7}"'):]
        assert 'aria-invalid="true"' in tag[:tag.index(">")]
    assert stored(world.dsn) == {}


def test_the_page_needs_the_csrf_token_and_a_session(world):
    browser = sign_in(world)
    browser.get("/account/notices")
    assert browser.post("/account/notices/sms", data=form(REP7, **GOOD)).status_code == 403
    anonymous = world.http.post("/account/notices/sms", data=form(REP7, **GOOD))
    assert anonymous.status_code in (303, 403)  # no session: nothing done either way
    assert stored(world.dsn) == {}


# -- one rule -----------------------------------------------------------------------------------


def test_the_page_says_what_the_notifier_does():
    assert pages.SMS_FREE_CHARS == notifier.sms.UCS2_SINGLE_UNITS
    assert pages.SMS_PAID_PARTS_MAX == notifier.sms.SMS_PARTS_MAX
    assert store.SMS_DAILY_CAP_DEFAULT == notifier.sms.SMS_PER_DAY_MAX == store.SmsSettings().daily_cap
    assert pages.minute_of("07:30") == 450 and pages.minute_of("7:05") == 425 and pages.minute_of("23:59:00") == 1439
    for bad in ("24:00", "12:60", "", "12", "1230", "ab:cd"):
        assert pages.minute_of(bad) is None, bad
    assert pages.clock_time(450) == "07:30"


def test_one_rule_for_every_writer():
    assert store.sms_settings_problem(store.SmsSettings()) is None
    assert store.sms_settings_problem(store.SmsSettings(**TERMS)) is None
    for change, field in (({"plan": "gold"}, "plan"), ({"daily_cap": 501}, "daily_cap"), ({"daily_cap": True}, "daily_cap"),
                          ({"quiet_from_minute": 1440}, "quiet_from_minute"), ({"digest_minute": -1}, "digest_minute"),
                          ({"digest": 1}, "digest")):
        problem = store.sms_settings_problem(store.SmsSettings(**{**TERMS, **change}))
        assert problem is not None and problem[0] == field, (change, problem)
