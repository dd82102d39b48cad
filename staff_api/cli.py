"""A command-line client for operators over the HTTP API (urllib, no extra dependencies).

    python -m staff_api.cli --url http://127.0.0.1:8800 --token T <command> ...

The token may also come from ECARD_STAFF_TOKEN, the URL from ECARD_STAFF_URL.
Prints the JSON answer; exits 1 on an HTTP error (the error body is printed to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
             headers: dict[str, str] | None = None, query: dict[str, Any] | None = None) -> tuple[int, Any]:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m staff_api.cli", description="ecard staff API client")
    p.add_argument("--url", default=os.environ.get("ECARD_STAFF_URL", "http://127.0.0.1:8800"))
    p.add_argument("--token", default=os.environ.get("ECARD_STAFF_TOKEN"))
    sub = p.add_subparsers(dest="command", required=True)

    pupils = sub.add_parser("pupils").add_subparsers(dest="sub", required=True)
    g = pupils.add_parser("get")
    g.add_argument("account_id", type=int)
    e = pupils.add_parser("enrol")
    e.add_argument("--school", type=int, required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--grade", type=int, required=True)
    e.add_argument("--class", dest="class_name", default="")
    e.add_argument("--category", default=None)
    e.add_argument("--family", type=int, default=None)
    e.add_argument("--card-uid", default=None)
    e.add_argument("--card-kind", default="service_card")
    ls = pupils.add_parser("list")
    ls.add_argument("--school", type=int, required=True)
    ls.add_argument("--class", dest="class_name", default=None)

    cards = sub.add_parser("cards").add_subparsers(dest="sub", required=True)
    for name in ("get", "block", "unbind", "return"):
        c = cards.add_parser(name)
        c.add_argument("uid")
    b = cards.add_parser("bind")
    b.add_argument("account_id", type=int)
    b.add_argument("uid")
    b.add_argument("--kind", default="service_card")
    t = cards.add_parser("temporary")
    t.add_argument("uid", help="the original card")
    t.add_argument("--reason", required=True, choices=("forgotten", "lost", "broken"))
    t.add_argument("--temporary-uid", required=True)

    controls = sub.add_parser("controls").add_subparsers(dest="sub", required=True)
    cg = controls.add_parser("get")
    cg.add_argument("account_id", type=int)
    cs = controls.add_parser("set", help="replace the controls from a JSON file or flags")
    cs.add_argument("account_id", type=int)
    cs.add_argument("--json", dest="json_file", default=None, help="a file with the full controls document")
    cs.add_argument("--daily-limit", type=int, default=None)
    cs.add_argument("--ban-product", type=int, action="append", default=[])
    cs.add_argument("--block-allergen", action="append", default=[])
    cs.add_argument("--note", default="")

    schools = sub.add_parser("schools").add_subparsers(dest="sub", required=True)
    sc = schools.add_parser("create", help="create a school (operator)")
    sc.add_argument("--name", required=True)
    sc.add_argument("--id", dest="school_id", type=int, default=None, help="default: the next free number")
    sc.add_argument("--utc-offset", dest="utc_offset_minutes", type=int, default=180,
                    help="minutes east of UTC (default 180, Moscow)")
    schools.add_parser("list")

    sub.add_parser("me", help="who the token belongs to, and when it expires")
    token = sub.add_parser("token").add_subparsers(dest="sub", required=True)
    tr = token.add_parser("rotate", help="a new token (printed once); the old one stops at once")
    tr.add_argument("--login", default=None, help="another member's (operator only); default: one's own")

    imp = sub.add_parser("import-csv")
    imp.add_argument("file")
    imp.add_argument("--school", type=int, required=True)

    audit = sub.add_parser("audit")
    audit.add_argument("--entity", default=None)
    audit.add_argument("--actor", default=None)
    audit.add_argument("--limit", type=int, default=50)

    for name in ("transfer", "refund", "correction"):
        m = sub.add_parser(name)
        m.add_argument("--key", default=None, help="Idempotency-Key (default: a new UUID)")
        if name == "transfer":
            m.add_argument("--from", dest="from_account_id", type=int, required=True)
            m.add_argument("--to", dest="to_account_id", type=int, required=True)
            m.add_argument("--amount", type=int, required=True)
        elif name == "refund":
            m.add_argument("--device", type=int, required=True)
            m.add_argument("--txn", type=int, required=True)
            m.add_argument("--amount", type=int, default=None)
        else:
            m.add_argument("--account", type=int, required=True)
            m.add_argument("--amount", type=int, required=True)
            m.add_argument("--reason", required=True)
    return p


def run(args: argparse.Namespace, client: Client) -> tuple[int, Any]:
    cmd, sub = args.command, getattr(args, "sub", None)
    if cmd == "pupils" and sub == "get":
        return client.call("GET", f"/pupils/{args.account_id}")
    if cmd == "pupils" and sub == "list":
        return client.call("GET", f"/schools/{args.school}/pupils", query={"class_name": args.class_name})
    if cmd == "pupils" and sub == "enrol":
        body: dict[str, Any] = {"full_name": args.name, "grade": args.grade, "class_name": args.class_name,
                                "free_meal_category": args.category, "family_id": args.family}
        if args.card_uid:
            body["card"] = {"uid": args.card_uid, "kind": args.card_kind}
        return client.call("POST", f"/schools/{args.school}/pupils", body)
    if cmd == "cards":
        if sub == "get":
            return client.call("GET", f"/cards/{args.uid}")
        if sub == "block":
            return client.call("POST", f"/cards/{args.uid}/block")
        if sub == "unbind":
            return client.call("DELETE", f"/cards/{args.uid}")
        if sub == "return":
            return client.call("POST", f"/cards/{args.uid}/return")
        if sub == "bind":
            return client.call("POST", f"/pupils/{args.account_id}/cards", {"uid": args.uid, "kind": args.kind})
        if sub == "temporary":
            return client.call("POST", f"/cards/{args.uid}/temporary",
                               {"reason": args.reason, "temporary_uid": args.temporary_uid})
    if cmd == "controls":
        if sub == "get":
            return client.call("GET", f"/pupils/{args.account_id}/controls")
        if args.json_file:
            body = json.loads(Path(args.json_file).read_text())
        else:
            body = {"daily_limit_kopecks": args.daily_limit, "banned_products": args.ban_product,
                    "blocked_allergens": args.block_allergen, "cashier_note": args.note}
        return client.call("PUT", f"/pupils/{args.account_id}/controls", body)
    if cmd == "schools":
        if sub == "list":
            return client.call("GET", "/schools")
        return client.call("POST", "/schools", {"name": args.name, "id": args.school_id,
                                                "utc_offset_minutes": args.utc_offset_minutes})
    if cmd == "me":
        return client.call("GET", "/me")
    if cmd == "token":
        path = "/me/token" if args.login is None else f"/staff/{urllib.parse.quote(args.login, safe='')}/token"
        return client.call("POST", path)
    if cmd == "import-csv":
        return client.call("POST", f"/schools/{args.school}/pupils/import", Path(args.file).read_bytes(),
                           content_type="text/csv")
    if cmd == "audit":
        return client.call("GET", "/audit", query={"entity": args.entity, "actor": args.actor, "limit": args.limit})
    if cmd in ("transfer", "refund", "correction"):
        headers = {"Idempotency-Key": args.key or str(uuid.uuid4())}
        if cmd == "transfer":
            return client.call("POST", "/money/transfers", {"from_account_id": args.from_account_id,
                               "to_account_id": args.to_account_id, "amount_kopecks": args.amount}, headers=headers)
        if cmd == "refund":
            return client.call("POST", "/money/refunds", {"device_id": args.device, "device_txn": args.txn,
                               "amount_kopecks": args.amount}, headers=headers)
        return client.call("POST", "/money/corrections", {"account_id": args.account, "amount_kopecks": args.amount,
                           "reason": args.reason}, headers=headers)
    raise SystemExit(f"unknown command {cmd} {sub or ''}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.token:
        print("error: --token or ECARD_STAFF_TOKEN is required", file=sys.stderr)
        return 2
    status, body = run(args, Client(args.url, args.token))
    text = json.dumps(body, ensure_ascii=False, indent=2)
    if status >= 400:
        print(f"HTTP {status}", file=sys.stderr)
        print(text, file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
