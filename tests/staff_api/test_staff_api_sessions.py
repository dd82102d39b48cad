"""Staff console sessions over HTTP (httpx against a real uvicorn server and PostgreSQL): sign-in
with login and personal token, one refusal for every wrong pair, the per-login limit, the CSRF
header on every cookie request that is not a read, the cookie reaching the JSON API with exactly
the bearer token's roles and school scope, sign-out, deactivation, expiry; and which pages each
role is offered (and the API's 403 when a page is reached anyway).
"""

from __future__ import annotations

import html
import re

import httpx
import pytest

from staff_api import sessions
from staff_api.auth import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, csrf_token, token_sha256
from storage.demo_dataset import demo_card_uid
from test_staff_api import Api, api, sql  # noqa: F401  (api: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server per test

WRONG = "Неверный логин или ключ доступа."


def browser(api: Api) -> httpx.Client:
    return httpx.Client(base_url=api.url, timeout=30)


def sign_in(client: httpx.Client, login: str, token: str, next_path: str = "") -> httpx.Response:
    """As a browser does: the form (which sets its CSRF cookie), then the form posted back."""
    form = client.get("/console/signin", params={"next": next_path} if next_path else None)
    assert form.status_code == 200, form.text
    field = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    assert field == client.cookies[CSRF_COOKIE]
    sent_next = re.search(r'name="next" value="([^"]*)"', form.text).group(1)
    return client.post("/console/signin", data={"login": login, "token": token, "csrf_token": field,
                                                "next": sent_next})


def signed_in(api: Api, login: str) -> httpx.Client:
    client = browser(api)
    r = sign_in(client, login, api.tokens[login])
    assert r.status_code == 303 and r.headers["location"] == "/console", r.text
    return client


def csrf(client: httpx.Client) -> dict[str, str]:
    return {CSRF_HEADER: client.cookies[CSRF_COOKIE]}


def alert(page: str) -> str:
    """The text of the page's first role="alert" element."""
    m = re.search(r'role="alert"[^>]*>(.*?)</(?:p|div)>', page, re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1))).strip()) if m else ""


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def test_a_cookie_session_reaches_the_api_with_the_bearer_tokens_roles_and_school(api: Api):
    anonymous = browser(api)
    r = anonymous.get("/console/pupils/3")
    assert r.status_code == 303 and r.headers["location"] == "/console/signin?next=/console/pupils/3"
    assert anonymous.get("/pupils/3").status_code == 401

    # back to the page asked for after signing in; never to another site
    r = sign_in(browser(api), "off1", api.tokens["off1"], "https://evil.example/console")
    assert r.status_code == 303 and r.headers["location"] == "/console"
    client = browser(api)
    r = sign_in(client, "off1", api.tokens["off1"], "/console/pupils/3")
    assert r.status_code == 303 and r.headers["location"] == "/console/pupils/3", r.text
    assert client.get("/console/signin").headers["location"] == "/console"  # signed in already
    sql(api.dsn, "DELETE FROM staff_sessions WHERE token_sha256 <> $1", token_sha256(client.cookies[SESSION_COOKIE]))
    cookies = set_cookies(r)
    session_header, csrf_header = cookies[SESSION_COOKIE].lower(), cookies[CSRF_COOKIE].lower()
    assert "httponly" in session_header and "samesite=strict" in session_header and "path=/;" in session_header
    assert "httponly" not in csrf_header and "samesite=strict" in csrf_header
    session_id = client.cookies[SESSION_COOKIE]
    assert client.cookies[CSRF_COOKIE] == csrf_token(session_id) != session_id
    (row,) = sql(api.dsn, "SELECT * FROM staff_sessions")
    assert bytes(row["token_sha256"]) == token_sha256(session_id)  # the id itself is not stored
    assert (row["login"], row["revoked_at_ms"]) == ("off1", None)
    assert row["expires_at_ms"] - row["created_at_ms"] == sessions.SESSION_TTL_MS

    # reads: the same answers as with the bearer token, school scope included
    assert client.get("/pupils/3").json() == api.as_("off1", "GET", "/pupils/3").json()
    assert [s["id"] for s in client.get("/schools").json()] == [1]
    refused, by_bearer = client.get("/pupils/2000"), api.as_("off1", "GET", "/pupils/2000")
    assert refused.status_code == by_bearer.status_code == 404  # another school's pupil: as no pupil
    assert refused.json() == by_bearer.json() and refused.json()["detail"] == "no pupil with account 2000"

    # a write without the CSRF header, or with a wrong one, is refused before anything happens
    card = demo_card_uid(3).hex()
    r = client.post(f"/cards/{card}/block")
    assert r.status_code == 403 and CSRF_HEADER in r.json()["detail"]
    assert client.post(f"/cards/{card}/block", headers={CSRF_HEADER: "x" + client.cookies[CSRF_COOKIE]}).status_code == 403
    # a CSRF cookie planted by another site (cookie and header agree, but not with the session)
    planted = browser(api)
    planted.cookies.set(SESSION_COOKIE, session_id)
    planted.cookies.set(CSRF_COOKIE, "planted")
    assert planted.post(f"/cards/{card}/block", headers={CSRF_HEADER: "planted"}).status_code == 403
    assert sql(api.dsn, "SELECT status FROM identifiers WHERE identifier = $1", demo_card_uid(3))[0]["status"] == 0
    assert sql(api.dsn, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 0

    # with it: the write is the officer's, audited as the officer
    r = client.post(f"/cards/{card}/block", headers=csrf(client))
    assert r.status_code == 200 and r.json()["status"] == "blocked", r.text
    assert sql(api.dsn, "SELECT actor FROM audit_log WHERE entity = $1", f"card:{card}")[0]["actor"] == "off1"
    # another school, with a valid CSRF header: the same 403 as the bearer token gets
    body = {"full_name": "Сидоров Иван", "grade": 3}
    refused = client.post("/schools/2/pupils", json=body, headers=csrf(client))
    by_bearer = api.as_("off1", "POST", "/schools/2/pupils", json=body)
    assert refused.status_code == by_bearer.status_code == 403 and refused.json() == by_bearer.json()
    r = client.post("/cards/0a0b0c0d/block", headers=csrf(client))  # another school's card: as no card
    assert r.status_code == 404 and r.json()["detail"] == "no card 0a0b0c0d"
    # validation is the API's too: 422 naming the field
    r = client.post("/schools/1/pupils", json={"full_name": "Петров Олег", "grade": 12}, headers=csrf(client))
    assert r.status_code == 422 and r.json()["field"] == "grade"

    # a bearer token needs no CSRF header, cookie or not
    assert api.as_("off1", "POST", f"/cards/{demo_card_uid(4).hex()}/block").status_code == 200

    # other roles through their cookies: the same role rules
    cashier = signed_in(api, "cash1")
    assert cashier.get("/pupils/5").status_code == 200
    r = cashier.post(f"/cards/{demo_card_uid(5).hex()}/block", headers=csrf(cashier))
    assert r.status_code == 403 and "cashier" in r.json()["detail"]
    auditor = signed_in(api, "aud")
    assert auditor.get("/pupils/2000").status_code == 200
    r = auditor.post(f"/cards/{demo_card_uid(5).hex()}/block", headers=csrf(auditor))
    assert r.status_code == 403 and "read-only" in r.json()["detail"]


def test_a_wrong_login_or_token_is_one_answer_and_failures_are_limited_per_login(api: Api):
    client = browser(api)
    wrong_token = sign_in(client, "off1", "token-cash1")
    unknown = sign_in(client, "nobody", api.tokens["off1"])
    assert api.op("DELETE", "/staff/aud").status_code == 200
    deactivated = sign_in(client, "aud", api.tokens["aud"])
    for r in (wrong_token, unknown, deactivated):
        assert r.status_code == 401 and alert(r.text) == WRONG, r.text
        assert '<html lang="ru">' in r.text and SESSION_COOKIE not in client.cookies
    assert wrong_token.text.replace('value="off1"', "") == unknown.text.replace('value="nobody"', "")
    # the form's own CSRF token: without it nothing is checked or counted
    r = client.post("/console/signin", data={"login": "off1", "token": api.tokens["off1"]})
    assert r.status_code == 403 and "устарела" in alert(r.text)
    assert sql(api.dsn, "SELECT count(*) AS n FROM staff_sessions")[0]["n"] == 0

    t0 = api.clock.fixed_ms = 1_788_246_000_000
    for i in range(sessions.SIGNIN_FAILURES_MAX - 1):  # one failure of off1 is counted already
        api.clock.fixed_ms = t0 + i * 1000
        assert sign_in(client, "off1", f"guess-{i}").status_code == 401
    # the limit is reached: even the right token is refused now, with the time to wait
    r = sign_in(client, "off1", api.tokens["off1"])
    assert r.status_code == 429, r.text
    wait_s = int(r.headers["retry-after"])
    assert 0 < wait_s <= sessions.SIGNIN_FAILURE_WINDOW_MS // 1000
    assert "Слишком много неудачных попыток" in alert(r.text)
    assert sql(api.dsn, "SELECT count(*) AS n FROM staff_sessions")[0]["n"] == 0
    # per login: another member signs in meanwhile
    assert sign_in(browser(api), "cash1", api.tokens["cash1"]).status_code == 303
    # once the failures have left the window, the right token works and the count starts again
    api.clock.fixed_ms += wait_s * 1000
    assert sign_in(client, "off1", api.tokens["off1"]).status_code == 303
    assert sql(api.dsn, "SELECT count(*) AS n FROM staff_signin_failures WHERE login = 'off1'")[0]["n"] == 0


def test_sign_out_ends_the_session(api: Api):
    client = signed_in(api, "off1")
    session_id, csrf_value = client.cookies[SESSION_COOKIE], client.cookies[CSRF_COOKIE]
    assert client.get("/pupils/3").status_code == 200
    # a sign-out posted from elsewhere (no CSRF field) does nothing
    r = client.post("/console/signout", data={})
    assert r.status_code == 403 and client.get("/pupils/3").status_code == 200
    r = client.post("/console/signout", data={"csrf_token": csrf_value})
    assert r.status_code == 303 and r.headers["location"] == "/console/signin"
    assert SESSION_COOKIE not in client.cookies and CSRF_COOKIE not in client.cookies
    assert sql(api.dsn, "SELECT revoked_at_ms FROM staff_sessions")[0]["revoked_at_ms"] is not None
    # the old cookie, kept by someone, no longer works: not on the API, not on the pages
    stolen = browser(api)
    stolen.cookies.set(SESSION_COOKIE, session_id)
    r = stolen.get("/pupils/3")
    assert r.status_code == 401 and "signed out" in r.json()["detail"]
    assert stolen.get("/console").status_code == 303


def test_a_deactivated_member_and_an_expired_session_are_cut_off_at_once(api: Api):
    api.clock.fixed_ms = 1_788_246_000_000
    officer = signed_in(api, "off1")
    cashier = signed_in(api, "cash1")
    assert officer.get("/pupils/3").status_code == 200
    assert api.op("DELETE", "/staff/off1").status_code == 200
    r = officer.get("/pupils/3")
    assert r.status_code == 401 and "deactivated" in r.json()["detail"]
    assert officer.post(f"/cards/{demo_card_uid(3).hex()}/block", headers=csrf(officer)).status_code == 401
    r = officer.get("/console")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/signin")
    # a working day later the cashier's session has ended by itself
    api.clock.fixed_ms += sessions.SESSION_TTL_MS - 1
    assert cashier.get("/pupils/3").status_code == 200
    api.clock.fixed_ms += 1
    assert cashier.get("/pupils/3").status_code == 401


def nav(html: str) -> list[str]:
    block = re.search(r'<nav class="sections".*?</nav>', html, re.S).group(0)
    return re.findall(r'<a href="([^"]+)"', block)


def test_each_role_is_offered_its_pages_and_shown_the_apis_403_elsewhere(api: Api):
    officer, cashier, auditor, operator = (signed_in(api, login) for login in ("off1", "cash1", "aud", "op"))
    start = officer.get("/console")
    assert start.status_code == 200 and '<html lang="ru">' in start.text
    assert "off1 — ответственный сотрудник школы" in start.text
    assert nav(start.text) == ["/console", "/console/pupils", "/console/pupils/new", "/console/pupils/import",
                               "/console/applications/new", "/console/schools/1/presence",
                               "/console/schools/1/fire-alarm"]
    assert nav(cashier.get("/console").text) == ["/console", "/console/pupils"]
    assert nav(auditor.get("/console").text) == ["/console", "/console/pupils"]
    assert nav(operator.get("/console").text) == ["/console", "/console/pupils", "/console/pupils/new",
                                                  "/console/pupils/import", "/console/applications/new"]
    # city-level roles pick a school's presence and muster list from the start page
    for client in (auditor, operator):
        text = client.get("/console").text
        assert "/console/schools/1/presence" in text and "/console/schools/2/fire-alarm" in text

    # reached anyway: the API's own refusal, with its status, in Russian (its English detail for
    # the support desk, folded away)
    r = cashier.get("/console/schools/1/presence")
    assert r.status_code == 403 and "role 'cashier' may not see who is inside a school" in alert(r.text)
    r = cashier.get("/console/pupils/new")
    assert r.status_code == 403 and "may not enrol pupils" in alert(r.text)
    assert "Роль «кассир столовой» не может зачислять учеников. Это могут роли: оператор города, " \
           "ответственный сотрудник школы." in alert(r.text)  # the form page's own check (console.Page.denied)
    assert re.search(r'<details class="support"><summary>Подробности для службы поддержки</summary>'
                     r'<code lang="en">role &#39;cashier&#39; may not enrol pupils', r.text), r.text
    r = auditor.get("/console/applications/new")
    assert r.status_code == 403 and "may not register representatives" in alert(r.text)
    r = officer.get("/console/pupils/2000")  # another school's pupil: as no pupil
    assert r.status_code == 404 and "no pupil with account 2000" in alert(r.text) and "school 2" not in alert(r.text)
    r = officer.get("/console/schools/2/fire-alarm")
    assert r.status_code == 403 and "bound to school 1" in alert(r.text)
    assert officer.get("/console/pupils/99999").status_code == 404

    # the pupil page: actions only for the roles that may take them
    page = officer.get("/console/pupils/3").text
    assert 'data-action="block"' in page and 'data-action="temporary"' in page and "Представители" in page
    assert 'data-action="cash"' not in page  # an officer takes no cash
    page = cashier.get("/console/pupils/3").text
    assert re.findall(r'data-action="(\w+)"', page) == ["cash"]  # a cashier: cash at the desk, nothing else
    assert "Представители" not in page and "Баланс" in page
    page = auditor.get("/console/pupils/3").text
    assert "data-action" not in page and "Представители" in page


def test_find_a_pupil_by_account_class_or_name(api: Api):
    officer = signed_in(api, "off1")
    r = officer.get("/console/pupils", params={"account_id": "42"})
    assert r.status_code == 303 and r.headers["location"] == "/console/pupils/42"
    r = officer.get("/console/pupils", params={"account_id": "2000"})  # another school's pupil: as no pupil
    assert r.status_code == 404 and "no pupil with account 2000" in alert(r.text)
    r = officer.get("/console/pupils", params={"account_id": "сорок"})
    assert r.status_code == 422 and "число" in alert(r.text)
    by_class = officer.get("/console/pupils", params={"class_name": "2Б"})
    expected = sql(api.dsn, "SELECT count(*) AS n FROM pupils WHERE school_id = 1 AND class_name = '2Б'")[0]["n"]
    assert by_class.status_code == 200 and f"Найдено: {expected}" in by_class.text
    by_name = officer.get("/console/pupils", params={"q": "ученик 99"})  # 99, 990..999: past the first API page
    assert "Найдено: 11" in by_name.text and "/console/pupils/999" in by_name.text
    class_of_99 = sql(api.dsn, "SELECT class_name FROM pupils WHERE account_id = 99")[0]["class_name"]
    both = officer.get("/console/pupils", params={"q": "ученик 99", "class_name": class_of_99})
    assert "Найдено: 1" in both.text and "/console/pupils/99\"" in both.text
    # the operator chooses the school; an officer's school is its own whatever it asks
    operator = signed_in(api, "op")
    assert "Найдено: 1" in operator.get("/console/pupils", params={"q": "Иванов", "school": "2"}).text
    assert "Найдено: 0" in officer.get("/console/pupils", params={"q": "Иванов", "school": "2"}).text
