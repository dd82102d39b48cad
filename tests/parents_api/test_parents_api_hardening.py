"""The parents' API's hardening (real server, real PostgreSQL): strict body types, NUL and control
characters, integers beyond a bigint, a 5xx logged with a request id, tokens that expire, and an
OpenAPI document that says what the code does.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from parents_api.config import PARENT_TOKEN_TTL_MS
from parents_api.hardening import REQUEST_ID_HEADER
from parents_support import HOUR, sql, world  # noqa: F401  (world: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server per test

PHONE = "+79000000007"


def refused(r: httpx.Response, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    if field is not None:
        assert r.json()["field"] == field, r.json()
    return r.json()


def test_bodies_are_strict_and_text_is_clean(world):
    refused(world.http.post("/auth/code", json={"phone": 79000000007}), 422, "phone")
    refused(world.http.post("/auth/code", json={"phone": PHONE, "extra": 1}), 422, "extra")
    refused(world.http.post("/auth/code", json={"email": "a\x00@example.ru"}), 422, "email")
    refused(world.http.post("/auth/token", json={"phone": PHONE, "code": 123456}), 422, "code")
    refused(world.http.post("/auth/token", json={"phone": PHONE, "code": "12345\x00"}), 422, "code")
    refused(world.http.post("/auth/code", content=b"{", headers={"content-type": "application/json"}), 422, "body")


def test_ids_and_pages_beyond_a_bigint_are_4xx(world):
    token = world.login_phone(PHONE)
    for path in (f"/children/{2**70}", f"/children/{2**63}/events", "/children/-1"):
        assert world.get(token, path).status_code == 404
    refused(world.get(token, "/children/7/deliveries", params={"before_at_ms": str(2**70)}), 422, "before_at_ms")
    refused(world.get(token, "/children/7/events", params={"before": "1.2.\x00"}), 422, "before")
    assert world.get(token, "/children/7/events", params={"limit": "5"}).status_code == 200


def test_parent_tokens_expire(world):
    token = world.login_phone(PHONE)
    assert world.get(token, "/me").status_code == 200
    world.clock.now_ms += PARENT_TOKEN_TTL_MS
    assert world.get(token, "/me").status_code == 401
    world.clock.now_ms -= HOUR
    assert world.get(token, "/me").status_code == 200


def test_a_server_error_is_logged_with_a_request_id(world, caplog):
    token = world.login_phone(PHONE)
    sql(world.dsn, "ALTER TABLE schools RENAME TO schools_gone")
    try:
        with caplog.at_level(logging.ERROR, logger="ecard.http"):
            r = world.get(token, "/me")
    finally:
        sql(world.dsn, "ALTER TABLE schools_gone RENAME TO schools")
    assert r.status_code == 500
    request_id = r.json()["request_id"]
    assert r.headers[REQUEST_ID_HEADER] == request_id and request_id in r.json()["detail"]
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_the_openapi_document_says_what_the_code_does(world):
    doc = world.http.get("/schema/openapi.json").json()
    assert doc["components"]["schemas"]["CodeRequest"]["additionalProperties"] is False
    code = doc["paths"]["/auth/code"]["post"]
    assert {"202", "422", "429"} <= set(code["responses"]) and "400" not in code["responses"]
    child = doc["paths"]["/children/{account_id}"]["get"]
    assert child["security"] == [{"bearer": []}] and {"401", "404", "422"} <= set(child["responses"])
    assert "403" not in child["responses"]  # another family's child is 404, never 403
    assert "text/plain" in doc["paths"]["/ussd"]["post"]["responses"]["200"]["content"]
    assert not any(path.startswith(("/account", "/signin", "/tv")) for path in doc["paths"])  # the HTML pages
    r = world.http.put("/me")
    assert r.status_code == 405 and "GET" in r.headers["allow"]
