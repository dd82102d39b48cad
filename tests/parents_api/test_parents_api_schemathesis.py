"""Schemathesis against the served parents' API: the real app under uvicorn, real PostgreSQL with
the demo dataset (and a second family at another school), a parent's bearer token; the OpenAPI
document the app serves is the contract (the JSON API and the USSD callback; the personal
account's HTML pages are not in it).

The same checks as the staff API's (tests/staff_api/test_staff_api_schemathesis.py), bounded
and seeded.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

from parents_api import FileSender, Senders, Settings, create_app
from parents_api.auth import token_sha256
from parents_support import prepare, sql
from storage import parents
from support import ThreadServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "staff_api"))
from test_staff_api_schemathesis import run_schemathesis  # noqa: E402  (one runner for both surfaces)

PARENT_PHONE = "+79000000007"  # demo parent 7: children 7 and 8 (parents_support.prepare)
DAY_MS = 86_400_000


def test_the_parents_api_keeps_its_openapi_contract(demo_dsn, tmp_path):
    prepare(demo_dsn)
    token = secrets.token_urlsafe(32)
    now = time.time_ns() // 1_000_000
    sql(demo_dsn, "INSERT INTO parent_sessions (token_sha256, contact, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)",
        token_sha256(token), parents.phone_contact(PARENT_PHONE), now, now + DAY_MS)
    settings = Settings(dsn=demo_dsn, pool_size_max=4)
    sent = tmp_path / "sent"
    server = ThreadServer(create_app(settings, Senders(email=FileSender(sent), sms=FileSender(sent)))).start()
    try:
        started = time.monotonic()
        # signing out would end the run's token midway (tests/parents_api/test_parents_auth.py covers it)
        result = run_schemathesis(f"http://127.0.0.1:{server.port}/schema/openapi.json", token, tmp_path,
                                  ["--exclude-operation-id", "AuthTokenRevokeToken"],
                                  # parent 7's children and own representative row, and another family's
                                  ids={"account_id": [7, 8, 2000], "representative_id": [7, 5000]})
        took = time.monotonic() - started
    finally:
        server.stop()
    summary = result.stdout[result.stdout.rfind("SUMMARY"):]
    print(summary, f"\n(schemathesis took {took:.1f} s)")
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    assert "Tested: " in summary and "passed" in summary
