"""The staff API's hardening (real server, real PostgreSQL, the demo dataset): client input never
makes a 5xx, and a 5xx that still happens is logged with a request id; strict body types; the text
rule; nothing told about another school's cards and accounts; staff tokens that expire and rotate;
schools created by the operator; the last operator stays; the OpenAPI document says what the code
does.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import httpx
import pytest

from parents_api.hardening import INT64_MAX, REQUEST_ID_HEADER
from staff_api.auth import STAFF_TOKEN_TTL_MS
from storage.demo_dataset import demo_card_uid
from support import ROOT
from test_staff_api import Api, api, audit_rows, sql  # noqa: F401  (api: the fixture)
from test_staff_api_sessions import browser, sign_in

pytestmark = pytest.mark.processes  # a uvicorn server per test

PUPIL = {"full_name": "Петров Олег", "grade": 3}


def refused(r: httpx.Response, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    if field is not None:
        assert body["field"] == field, body
    return body


# --- no 5xx from client input ------------------------------------------------------------------


def test_wrong_types_are_refused_not_coerced(api: Api):
    refused(api.op("POST", "/schools/1/pupils", json={**PUPIL, "grade": "5"}), 422, "grade")
    refused(api.op("POST", "/money/corrections", json={"account_id": 3, "amount_kopecks": "100", "reason": "x"},
                   headers={"Idempotency-Key": "k1"}), 422, "amount_kopecks")
    refused(api.op("POST", "/money/transfers", json={"from_account_id": "1", "to_account_id": 2, "amount_kopecks": 1},
                   headers={"Idempotency-Key": "k2"}), 422, "from_account_id")
    refused(api.op("PUT", "/schools/1/policy", json={"escort_required": "true"}), 422, "escort_required")
    refused(api.op("POST", "/schools/1/pupils", json={**PUPIL, "card": {"uid": "04aabbccdd", "colour": "red"}}),
            422, "card.colour")
    refused(api.op("POST", "/schools/1/pupils", content=b'{"full_name": "x", ', headers={"content-type": "application/json"}),
            422, "body")
    assert sql(api.dsn, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 0
    assert sql(api.dsn, "SELECT count(*) AS n FROM commands")[0]["n"] == 0


def test_integers_beyond_the_columns_are_4xx(api: Api):
    huge = 2**70
    # a path id beyond its column cannot exist: 404, as any unknown id
    for path, detail in ((f"/pupils/{huge}", f"no account {huge}"), (f"/schools/{2**31}", f"no school {2**31}"),
                         (f"/representatives/{INT64_MAX + 1}", f"no representative {INT64_MAX + 1}"),
                         (f"/devices/{2**32}", f"device {2**32} does not exist"), (f"/accounts/{huge}/ledger", f"no account {huge}")):
        assert refused(api.op("GET", path), 404)["detail"] == detail
    refused(api.op("GET", "/schools/1/pupils", params={"offset": str(huge)}), 422, "offset")
    refused(api.op("GET", "/audit", params={"before_id": str(huge)}), 422, "before_id")
    refused(api.op("GET", "/devices", params={"school_id": str(2**31)}), 422, "school_id")
    refused(api.op("POST", "/schools/1/pupils", json={**PUPIL, "family_id": INT64_MAX + 1}), 422, "family_id")
    refused(api.op("POST", "/devices", json={"school_id": 2**40, "kind": "till", "name": "Касса"}), 422, "school_id")
    refused(api.op("PUT", "/pupils/3/controls", json={"banned_products": [2**31]}), 422, "banned_products[0]")
    refused(api.op("POST", "/money/refunds", json={"device_id": 2000001, "device_txn": huge},
                   headers={"Idempotency-Key": "k"}), 422, "device_txn")


def test_nul_and_control_characters_are_refused_naming_the_field(api: Api):
    refused(api.op("POST", "/schools/1/pupils", json={**PUPIL, "full_name": "Петров\x00Олег"}), 422, "full_name")
    refused(api.op("GET", "/schools/1/pupils", params={"class_name": "5\x00А"}), 422, "class_name")
    refused(api.op("GET", "/audit", params={"actor": "op\x00"}), 422, "actor")
    refused(api.op("GET", "/desk-readers/a%00b/operation"), 422, "name")
    refused(api.op("DELETE", "/staff/x%00y"), 422, "login")
    r = api.op("POST", "/money/corrections", json={"account_id": 3, "amount_kopecks": 100, "reason": "ok\x00"},
               headers={"Idempotency-Key": "n"})
    refused(r, 422, "reason")
    # the console's sign-in form: a NUL login is a refused sign-in, not a 500
    client = browser(api)
    assert sign_in(client, "op\x00", "x").status_code < 500


def test_csv_import_refuses_what_it_cannot_read(api: Api):
    def post(text: str) -> httpx.Response:
        return api.op("POST", "/schools/1/pupils/import", content=text.encode(), headers={"content-type": "text/csv"})

    header = "full_name,grade,class_name,card_uid,card_kind\n"
    big = "x" * 200_000  # over csv.field_size_limit() (131,072): csv.Error, once a 500
    body = refused(post(header + f'"{big}",3,,,\n'), 422)
    assert body["errors"][0]["field"] == "file" and "field larger than field limit" in body["errors"][0]["message"]
    body = refused(post(header + "Петров\x00Олег,3,5А,,\n"), 422)
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(2, "full_name")]
    body = refused(post(header + "   ,3,,,\nИванов Иван,3,\u202e5А,,\nСидоров Олег,1_0,,,\n"), 422)
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(2, "full_name"), (3, "class_name"), (4, "grade")]
    assert sql(api.dsn, "SELECT count(*) AS n FROM pupils WHERE account_id > 1000 AND school_id = 1")[0]["n"] == 0


# --- a 5xx that still happens ------------------------------------------------------------------


def test_a_server_error_is_logged_with_a_request_id_the_answer_names(api: Api, caplog):
    sql(api.dsn, "ALTER TABLE schools RENAME TO schools_gone")  # every read of schools now fails
    try:
        with caplog.at_level(logging.ERROR, logger="ecard.http"):
            r = api.op("GET", "/schools")
    finally:
        sql(api.dsn, "ALTER TABLE schools_gone RENAME TO schools")
    assert r.status_code == 500
    request_id = r.json()["request_id"]
    assert r.headers[REQUEST_ID_HEADER] == request_id and request_id in r.json()["detail"]
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # with its traceback
    assert "schools" in str(logged[0].exc_info[1])


# --- the text rule -----------------------------------------------------------------------------


def test_names_and_notes_follow_the_text_rule(api: Api):
    for name in ("", "   ", "Петров\u202eОлег", "Петров\nОлег", "Петров\tОлег", "Олег\u2066"):
        refused(api.op("POST", "/schools/1/pupils", json={**PUPIL, "full_name": name}), 422, "full_name")
    refused(api.op("POST", "/schools/1/pupils", json={**PUPIL, "class_name": "  "}), 422, "class_name")
    refused(api.op("PATCH", "/pupils/3", json={"class_name": "5\u202dА"}), 422, "class_name")
    refused(api.op("PUT", "/schools/1/products/12", json={"name": "\u202eКаша", "price_kopecks": 100}), 422, "name")
    refused(api.op("PUT", "/schools/1/products/12", json={"name": "Каша", "price_kopecks": 100, "category": " "}),
            422, "category")
    refused(api.op("PUT", "/pupils/3/controls", json={"cashier_note": "строка\nещё"}), 422, "cashier_note")
    # the till's PUPIL_INFO carries at most 200 bytes: 101 Cyrillic letters are 202
    body = refused(api.op("PUT", "/pupils/3/controls", json={"cashier_note": "я" * 101}), 422, "cashier_note")
    assert "200 bytes" in body["detail"]
    assert api.op("PUT", "/pupils/3/controls", json={"cashier_note": "я" * 100}).status_code == 200
    refused(api.op("POST", "/staff", json={"login": "new-officer\n", "role": "auditor"}), 422, "login")
    refused(api.op("POST", "/schools", json={"name": "Школа\u202e"}), 422, "name")
    # a name with a visible character and ordinary punctuation is fine
    r = api.op("POST", "/schools/1/pupils", json={**PUPIL, "full_name": "Салтыков-Щедрин Михаил", "class_name": "5А"})
    assert r.status_code == 201, r.text


# --- nothing told about another school's cards and accounts ------------------------------------


def test_another_schools_pupils_cards_and_tills_are_answered_as_missing_ones(api: Api):
    # school 2's pupil 2000 has card 0a0b0c0d (test_staff_api.make_api)
    def same(path: str, other: str, missing: str, method: str = "GET", **kw) -> None:
        a, b = api.as_("off1", method, path.format(other), **kw), api.as_("off1", method, path.format(missing), **kw)
        assert (a.status_code, a.json()["detail"].replace(other, "?")) == \
               (b.status_code, b.json()["detail"].replace(missing, "?")), (a.text, b.text)
        assert "school" not in a.text

    same("/pupils/{}", "2000", "99999")
    same("/pupils/{}/controls", "2000", "99999")
    same("/accounts/{}/ledger", "2000", "99999")
    same("/pupils/{}/preorders", "2000", "99999")
    same("/cards/{}", "0a0b0c0d", "0a0b0c0e")
    same("/cards/{}/block", "0a0b0c0d", "0a0b0c0e", "POST")
    same("/pupils/{}/cards", "2000", "99999", "POST", json={"uid": "04cafe0001"})
    key = iter(range(100))
    for field in ("from_account_id", "to_account_id"):
        other = {"from_account_id": 1, "to_account_id": 2, "amount_kopecks": 100, field: 2000}
        missing = {**other, field: 99999}
        a = api.as_("off1", "POST", "/money/transfers", json=other, headers={"Idempotency-Key": f"t{next(key)}"})
        b = api.as_("off1", "POST", "/money/transfers", json=missing, headers={"Idempotency-Key": f"t{next(key)}"})
        assert (a.status_code, a.json()["field"]) == (b.status_code, b.json()["field"]) == (422, field)
    # binding a card that another school's pupil holds: taken, but whose is not said
    r = api.as_("off1", "POST", "/pupils/3/cards", json={"uid": "0a0b0c0d"})
    assert r.status_code == 409 and "2000" not in r.text and "another account" in r.json()["detail"]
    r = api.op("POST", "/pupils/3/cards", json={"uid": demo_card_uid(4).hex()})  # the same school: named
    assert r.status_code == 409 and "account 4" in r.json()["detail"]


# --- tokens ------------------------------------------------------------------------------------


def test_staff_tokens_expire(api: Api):
    (row,) = sql(api.dsn, "SELECT token_expires_at_ms FROM staff WHERE login = 'off1'")
    created = api.op("POST", "/staff", json={"login": "aud2", "role": "auditor"})
    assert created.status_code == 201
    assert created.json()["token_expires_at_ms"] - api.clock() in range(STAFF_TOKEN_TTL_MS - 60_000,
                                                                        STAFF_TOKEN_TTL_MS + 1)
    sql(api.dsn, "UPDATE staff SET token_expires_at_ms = $1 WHERE login = 'off1'", api.clock() - 1)
    r = api.as_("off1", "GET", "/pupils/3")
    assert r.status_code == 401 and r.json()["detail"].startswith("token expired")
    # nor does an expired token sign in to the console (the refusal of any wrong pair)
    assert sign_in(browser(api), "off1", api.tokens["off1"]).status_code == 401
    sql(api.dsn, "UPDATE staff SET token_expires_at_ms = $1 WHERE login = 'off1'", row["token_expires_at_ms"])
    assert api.as_("off1", "GET", "/pupils/3").status_code == 200
    me = api.as_("off1", "GET", "/me").json()
    assert (me["login"], me["role"], me["school_id"]) == ("off1", "officer", 1)


def test_rotating_a_token_kills_the_old_one_at_once(api: Api):
    old = api.tokens["off1"]
    r = api.as_("off1", "POST", "/me/token")
    assert r.status_code == 201, r.text
    new = r.json()["token"]
    assert new != old and r.json()["login"] == "off1"
    assert api.as_(old, "GET", "/pupils/3").status_code == 401
    assert api.as_(new, "GET", "/pupils/3").status_code == 200
    # an auditor (read-only) rotates its own; only an operator another's
    assert api.as_("aud", "POST", "/me/token").status_code == 201
    assert api.as_(new, "POST", "/staff/cash1/token").status_code == 403
    r = api.op("POST", "/staff/cash1/token")
    assert r.status_code == 201 and api.as_("cash1", "GET", "/pupils/3").status_code == 401
    assert api.as_(r.json()["token"], "GET", "/pupils/3").status_code == 200
    assert api.op("POST", "/staff/nobody/token").status_code == 404
    actions = [(a["actor"], a["action"]) for a in audit_rows(api.dsn, "staff:off1")]
    assert actions == [("off1", "staff.token.rotate")]
    assert audit_rows(api.dsn, "staff:cash1")[0]["actor"] == "op"
    assert new not in str(audit_rows(api.dsn, "staff:off1"))  # the token itself is never kept
    # a console session signed in with the old token ends with it
    client = browser(api)
    assert sign_in(client, "off1", new).status_code == 303
    assert client.get("/pupils/3").status_code == 200
    api.op("POST", "/staff/off1/token")
    assert client.get("/pupils/3").status_code == 401


def test_the_cli_rotates_tokens_and_creates_schools(api: Api):
    def cli(token: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "staff_api.cli", "--url", api.url, "--token", token, *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    made = cli(api.tokens["op"], "schools", "create", "--name", "ГБОУ Школа № 3", "--id", "3", "--utc-offset", "240")
    assert made.returncode == 0, made.stderr
    assert '"utc_offset_minutes": 240' in made.stdout
    rotated = cli(api.tokens["off1"], "token", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert api.as_("off1", "GET", "/me").status_code == 401
    direct = subprocess.run([sys.executable, "-m", "staff_api", "rotate-token", "--login", "op", "--pg-dsn", api.dsn],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert direct.returncode == 0, direct.stderr
    assert api.op("GET", "/me").status_code == 401 and api.as_(direct.stdout.strip(), "GET", "/me").status_code == 200


# --- schools and operators ---------------------------------------------------------------------


def test_the_operator_creates_schools(api: Api):
    r = api.op("POST", "/schools", json={"name": "ГБОУ Школа № 3"})
    assert r.status_code == 201, r.text
    assert (r.json()["id"], r.json()["utc_offset_minutes"], r.json()["policy"]["grace_kopecks"]) == (3, 180, 0)
    assert api.op("GET", "/schools/3").json()["name"] == "ГБОУ Школа № 3"
    assert api.op("POST", "/schools", json={"name": "Дубль", "id": 3}).status_code == 409
    assert api.as_("off1", "POST", "/schools", json={"name": "Моя школа"}).status_code == 403
    refused(api.op("POST", "/schools", json={"name": "Далеко", "utc_offset_minutes": 15 * 60}), 422,
            "utc_offset_minutes")
    (entry,) = audit_rows(api.dsn, "school:3")
    assert (entry["actor"], entry["action"], entry["after"]["name"]) == ("op", "school.create", "ГБОУ Школа № 3")


def test_the_last_active_operator_stays(api: Api):
    r = api.op("DELETE", "/staff/op")
    assert r.status_code == 409 and "last active operator" in r.json()["detail"]
    second = api.op("POST", "/staff", json={"login": "op2", "role": "operator"}).json()["token"]
    assert api.as_(second, "DELETE", "/staff/op").status_code == 200
    assert api.as_(second, "DELETE", "/staff/op2").status_code == 409
    assert api.as_(second, "GET", "/staff").status_code == 200


# --- the OpenAPI document ----------------------------------------------------------------------


def test_the_openapi_document_says_what_the_code_does(api: Api):
    doc = httpx.get(api.url + "/schema/openapi.json").json()
    transfer = doc["paths"]["/money/transfers"]["post"]
    (key,) = [p for p in transfer["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["required"] is True and key["schema"] == {"type": "string"}
    assert {"200", "202", "401", "403", "409", "422"} <= set(transfer["responses"]) and "400" not in transfer["responses"]
    assert doc["components"]["schemas"]["TransferBody"]["additionalProperties"] is False
    imported = doc["paths"]["/schools/{school_id}/pupils/import"]["post"]
    assert "text/csv" in imported["requestBody"]["content"] and imported["requestBody"]["required"] is True
    assert {"401", "403", "404", "422"} <= set(doc["paths"]["/pupils/{account_id}"]["get"]["responses"])
    assert doc["paths"]["/devices/enrol"]["post"]["security"] == []
    assert not any(path.startswith("/console") for path in doc["paths"])
    r = api.op("PUT", "/staff")
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
