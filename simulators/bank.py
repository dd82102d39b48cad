"""The bank test's staff side and its ledger audit (Jepsen-style "bank" checks).

- ``PurchaseTail`` follows the tills' JSON-lines logs and knows which accepted
  purchases are durable (covered by a DURABLE_ACK): the originals of refunds.
- ``StaffLoad`` submits money commands straight to PostgreSQL through
  ``storage.commands.submit`` (as the staff API does): transfers between
  siblings (pupils 2k-1 and 2k are one family), refunds of durable purchases,
  corrections, plus some that must be refused (other family, too much, a refund
  beyond what is left). Each command has a unique idempotency key; some are
  submitted again with the same key, concurrently or later: one row, one seq.
- ``audit`` checks the end state: the ledger sums to zero; every account equals
  its opening balance plus its recorded history (journal credits minus debits);
  the journal's device rows equal the simulators' logs; every command is
  decided, an applied one has exactly one journal row and a refused one none;
  refunds never exceed their purchase; every captured card payment is credited
  exactly once (and a refunded one reversed exactly once), a failed or canceled one
  moves nothing.
- ``parent_session`` and ``pay_hosted``: a parent's side of a bank-card top-up. ecard
  takes no card number: a parent (a bearer session of the parents' API) asks ecard for a
  top-up and gets the acquirer's ``confirmation_url``; ``pay_hosted`` then acts as the
  parent's browser on the sandbox acquirer's hosted page (the card form, the
  3-D-Secure-like code, or the cancel button) with httpx, and returns where the acquirer
  sent the browser back.

Everything random comes from a ``random.Random`` the caller seeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import urllib.parse
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from ledger.codes import CommandKind
from storage import commands as command_store
from storage import parents as parent_store

from .device import KIND_PURCHASE, log_path
from .verify import verify

REQUESTED_BY = "staff:bank-test"
KIND_BANK_TOPUP, KIND_BANK_REFUND = CommandKind.bank_topup, CommandKind.bank_refund
KIND_REFUND = CommandKind.refund
PROBLEMS_SHOWN = 25
# simulators.verify's row-comparison problems (the rest are its balance checks).
_ROW_PROBLEMS = ("accepted but not journaled", "journaled but never seen accepted", "differs:")
_COMMAND_ROW_PROBLEM = "journaled but never seen accepted: device 0 "


# --------------------------------------------------------------------------- till logs


class PurchaseTail:
    """Incremental reader of till logs: accepted purchases of known pupils and durable watermarks."""

    def __init__(self, log_dir: Path, device_ids: list[int]) -> None:
        self._offsets = {device_id: 0 for device_id in device_ids}
        self._log_dir = Path(log_dir)
        self.purchases: dict[tuple[int, int], int] = {}  # (device id, txn) -> amount
        self.durable: dict[int, int] = {}

    def poll(self) -> None:
        for device_id, offset in self._offsets.items():
            path = log_path(self._log_dir, device_id)
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # complete lines only; the rest is read next time
            self._offsets[device_id] = offset + end
            for line in data[:end].splitlines():
                rec = json.loads(line)
                if rec["t"] == "accept" and rec["kind"] == KIND_PURCHASE and rec["account_id"] is not None:
                    self.purchases.setdefault((device_id, rec["txn"]), rec["amount_kopecks"])
                elif rec["t"] == "durable":
                    self.durable[device_id] = max(self.durable.get(device_id, 0), rec["txn"])

    def durable_purchases(self) -> list[tuple[int, int, int]]:
        """(device id, txn, amount) of every accepted purchase the gateway has made durable."""
        return sorted(
            (d, t, amount) for (d, t), amount in self.purchases.items() if t <= self.durable.get(d, 0)
        )


# --------------------------------------------------------------------------- a parent paying by card

PARENT_SESSION_TTL_MS = 86_400_000
# The sandbox's hosted page: a test card's expiry and CVC (any future month, any 3 digits).
TEST_EXPIRY, TEST_CVC = "12/30", "123"


async def parent_session(conn: asyncpg.Connection, contact: str, now_ms: int,
                         ttl_ms: int = PARENT_SESSION_TTL_MS) -> str:
    """A bearer token of the parents' API for ``contact`` (``phone:+7...``), as POST /auth/token
    would issue it after a one-time code: a parent_sessions row holding its SHA-256."""
    token = secrets.token_urlsafe(32)
    await parent_store.insert_session(conn, hashlib.sha256(token.encode()).digest(), contact, now_ms, now_ms + ttl_ms)
    return token


class HostedPageError(Exception):
    """The hosted page did not answer as a browser expects."""


class _PageParser(HTMLParser):
    """The forms of a page (action, named inputs), the sandbox's one-time code hint and the
    texts of role="alert" elements: what a payer reads and fills in."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.code_hint: str | None = None
        self.alerts: list[str] = []
        self._capture: str | None = None  # "code" | "alert"
        self._depth = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")
        if self._capture is not None:
            self._depth += 1
        elif a.get("id") == "sandbox-code" or a.get("role") == "alert":
            self._capture, self._depth, self._text = ("code" if a.get("id") == "sandbox-code" else "alert"), 1, []

    def handle_endtag(self, tag: str) -> None:
        if self._capture is None:
            return
        self._depth -= 1
        if self._depth == 0:
            text = " ".join("".join(self._text).split())
            if self._capture == "code":
                self.code_hint = text
            else:
                self.alerts.append(text)
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._text.append(data)


@dataclass
class Page:
    """One answer of the hosted page as a browser sees it."""

    url: str
    status: int
    location: str | None  # a redirect's absolute target
    forms: list[tuple[str, dict[str, str]]]
    code_hint: str | None
    alerts: list[str]

    def form(self, action_suffix: str) -> tuple[str, dict[str, str]]:
        for action, fields in self.forms:
            if action.endswith(action_suffix):
                return action, fields
        raise HostedPageError(f"{self.url} ({self.status}) has no form posting to *{action_suffix}: {self.forms}")


async def browse(client: httpx.AsyncClient, method: str, url: str, data: dict[str, str] | None = None) -> Page:
    """GET or POST (form-encoded) like a browser, without following a redirect."""
    r = await client.request(method, url, data=data, follow_redirects=False)
    location = r.headers.get("location")
    parser = _PageParser()
    if r.headers.get("content-type", "").startswith("text/html"):
        parser.feed(r.text)
    return Page(url, r.status_code, urllib.parse.urljoin(url, location) if location else None,
                [(urllib.parse.urljoin(url, action), fields) for action, fields in parser.forms],
                parser.code_hint, parser.alerts)


async def submit(client: httpx.AsyncClient, page: Page, action_suffix: str, fields: dict[str, str]) -> Page:
    action, defaults = page.form(action_suffix)
    return await browse(client, "POST", action, {**defaults, **fields})


def wrong_code(code: str) -> str:
    return f"{(int(code) + 1) % 10_000:04d}"


async def pay_hosted(client: httpx.AsyncClient, confirmation_url: str, card: str, *, expiry: str = TEST_EXPIRY,
                     cvc: str = TEST_CVC, cardholder: str = "", wrong_codes: int = 0, cancel_on: str | None = None,
                     double_click: bool = False) -> Page:
    """Act as the payer's browser on the acquirer's hosted page: open it, fill in the card,
    go to the confirmation step, type ``wrong_codes`` wrong codes and then the right one (read
    from the page's hint, as a payer reads an SMS). ``cancel_on`` "card" or "3ds" presses the
    cancel button there instead; ``double_click`` sends the right code twice at once.
    Returns the last answer: a 303 whose ``location`` is the merchant's return URL, or the
    page still shown (more wrong codes allowed)."""
    page = await browse(client, "GET", confirmation_url)
    if page.location is not None:  # completed already: the page only sends the browser back
        return page
    if page.status != 200:
        raise HostedPageError(f"GET {confirmation_url}: {page.status}")
    if cancel_on == "card":
        return await submit(client, page, "/cancel", {})
    path = urllib.parse.urlsplit(confirmation_url).path
    page = await submit(client, page, path, {"card_number": card, "expiry": expiry, "cvc": cvc,
                                             "cardholder": cardholder})
    if page.location is None:
        raise HostedPageError(f"card form refused ({page.status}): {page.alerts}")
    page = await browse(client, "GET", page.location)
    if page.status != 200 or page.code_hint is None:
        raise HostedPageError(f"confirmation step {page.url}: {page.status}, code hint {page.code_hint!r}")
    code = page.code_hint
    for _ in range(wrong_codes):
        page = await submit(client, page, "/3ds", {"code": wrong_code(code)})
        if page.location is not None:  # out of attempts: the payment failed
            return page
    if cancel_on == "3ds":
        return await submit(client, page, "/cancel", {})
    if double_click:
        first, second = await asyncio.gather(submit(client, page, "/3ds", {"code": code}),
                                             submit(client, page, "/3ds", {"code": code}))
        if first.location != second.location:
            raise HostedPageError(f"a double click went two ways: {first.location} / {second.location}")
        return first
    return await submit(client, page, "/3ds", {"code": code})


# --------------------------------------------------------------------------- staff commands


@dataclass
class Submitted:
    key: str
    kind: str
    payload: dict[str, Any]
    seqs: list[int] = field(default_factory=list)  # the seq every submit of this key returned
    errors: list[str] = field(default_factory=list)


class StaffLoad:
    """Money commands from "staff", straight into the ``commands`` table (never through the proxy)."""

    def __init__(self, pool: asyncpg.Pool, rng: random.Random, tail: PurchaseTail, *, pupils: int,
                 key_prefix: str, wait_ms: int = 100, retry_rate: float = 0.25) -> None:
        self.pool = pool
        self.rng = rng
        self.tail = tail
        self.pupils = pupils
        self.key_prefix = key_prefix
        self.wait_ms = wait_ms
        self.retry_rate = retry_rate
        self.submitted: dict[str, Submitted] = {}
        self.refunded_targets: list[tuple[int, int]] = []
        self._later: list[Submitted] = []  # to be submitted again with the same key
        self._n = 0

    async def _submit(self, cmd: Submitted) -> None:
        async with self.pool.acquire() as conn:
            try:
                result = await command_store.submit(
                    conn, cmd.key, cmd.kind, cmd.payload, REQUESTED_BY, wait_ms=self.wait_ms
                )
            except command_store.IdempotencyConflict as exc:
                cmd.errors.append(f"IdempotencyConflict on a faithful retry: {exc}")
                return
        cmd.seqs.append(result.seq)

    def _plan(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        r = rng.random()
        if r < 0.40:  # a transfer between siblings
            family = rng.randint(1, self.pupils // 2)
            a, b = 2 * family - 1, 2 * family
            if rng.random() < 0.5:
                a, b = b, a
            return "transfer", {"from_account_id": a, "to_account_id": b,
                                "amount_kopecks": rng.choice((100, 1_500, 5_000, 12_000, 30_000))}
        if r < 0.45:  # not one family: refused
            a = rng.randint(1, self.pupils // 2) * 2
            b = a + 1 if a < self.pupils else 1
            return "transfer", {"from_account_id": a, "to_account_id": b, "amount_kopecks": 1_000}
        if r < 0.50:  # more than anyone holds: refused (INSUFFICIENT_FUNDS)
            family = rng.randint(1, self.pupils // 2)
            return "transfer", {"from_account_id": 2 * family - 1, "to_account_id": 2 * family,
                                "amount_kopecks": 9_000_000}
        if r < 0.90:
            self.tail.poll()
            durable = self.tail.durable_purchases()
            if durable:
                if self.refunded_targets and rng.random() < 0.25:
                    device_id, txn = rng.choice(self.refunded_targets)  # again: maybe beyond what is left
                    amount = self.tail.purchases[(device_id, txn)]
                else:
                    device_id, txn, amount = rng.choice(durable)
                    self.refunded_targets.append((device_id, txn))
                part = None if rng.random() < 0.5 else rng.randint(1, amount)
                return "refund", {"device_id": device_id, "device_txn": txn, "amount_kopecks": part}
        pupil = rng.randint(1, self.pupils)
        amount = rng.choice((500, 2_000, 7_000))
        return "correction", {"account_id": pupil, "amount_kopecks": amount if rng.random() < 0.5 else -amount,
                              "reason": "bank test"}

    async def one(self) -> None:
        kind, payload = self._plan()
        self._n += 1
        cmd = Submitted(f"{self.key_prefix}:{self._n}", kind, payload)
        self.submitted[cmd.key] = cmd
        r = self.rng.random()
        if r < self.retry_rate / 2:  # the same key twice at once (a double click)
            await asyncio.gather(self._submit(cmd), self._submit(cmd))
        else:
            await self._submit(cmd)
            if r < self.retry_rate:
                self._later.append(cmd)  # a retry after a lost answer, some time later

    async def run(self, stop: asyncio.Event, interval_s: float, workers: int = 3) -> None:
        async def worker() -> None:
            while not stop.is_set():
                await self.one()
                if self._later and self.rng.random() < 0.3:
                    await self._submit(self._later.pop(self.rng.randrange(len(self._later))))
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass

        await asyncio.gather(*(worker() for _ in range(workers)))
        for cmd in self._later:  # the retries still owed
            await self._submit(cmd)
        self._later.clear()


async def undecided_commands(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM commands WHERE status = 0")


# --------------------------------------------------------------------------- the audit


@dataclass
class Audit:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def verdict(self) -> str:
        head = "BANK OK" if self.ok else f"BANK MISMATCH ({len(self.problems)} problems)"
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"{head}: {counts}" + "".join(f"\n  {p}" for p in self.problems[:PROBLEMS_SHOWN])


async def audit(
    dsn: str,
    log_dir: Path,
    opening: dict[int, int],
    submitted: dict[str, Submitted],
    acquirer_payments: dict[str, dict[str, Any]],
) -> Audit:
    """The end state against the histories. ``opening``: every account's balance before the
    run; ``acquirer_payments``: payment id -> the acquirer's own view (status, amount,
    refunded_kopecks) of every card payment started in the run."""
    out = Audit()
    p = out.problems
    conn = await asyncpg.connect(dsn)
    try:
        accounts = dict(await conn.fetch("SELECT id, balance_kopecks FROM accounts"))
        journal = await conn.fetch(
            "SELECT device_id, device_txn, kind, account_id, amount_kopecks, debit_account_id, credit_account_id"
            " FROM journal"
        )
        cmds = await conn.fetch(
            "SELECT seq, idempotency_key, kind, payload::text, status, result::text FROM commands ORDER BY seq"
        )
        key_counts = await conn.fetch(
            "SELECT idempotency_key, count(*) FROM commands GROUP BY idempotency_key HAVING count(*) > 1"
        )
        card_payments = {r["payment_id"]: r for r in await conn.fetch(
            "SELECT payment_id, account_id, amount_kopecks, status FROM card_payments")}
    finally:
        await conn.close()

    # 1. Conservation: the ledger sums to zero, to the kopeck.
    total = sum(accounts.values())
    out.counts["ledger_sum"] = total
    if total != 0:
        p.append(f"sum of all balances is {total}, not 0")
    if sum(opening.values()) != 0:
        p.append(f"opening balances sum to {sum(opening.values())}, not 0")

    # 2. Every account equals its opening balance plus its recorded history.
    expected = dict(opening)
    for r in journal:
        amount = r["amount_kopecks"]
        if not amount:
            continue
        debit, credit = r["debit_account_id"], r["credit_account_id"]
        if debit is None or credit is None:
            p.append(f"journal row {r['device_id']}/{r['device_txn']} moves {amount} without both sides")
            continue
        expected[debit] = expected.get(debit, 0) - amount
        expected[credit] = expected.get(credit, 0) + amount
    for account_id in sorted(set(accounts) | set(expected)):
        if accounts.get(account_id) != expected.get(account_id, 0):
            p.append(f"account {account_id}: balance {accounts.get(account_id)}, history says {expected.get(account_id, 0)}")

    # 3. Device rows: exactly what the simulators were told was accepted. simulators.verify
    # compares them row for row (it owns the journal's column layout); its balance checks
    # assume purchases and cash top-ups only, so only its row comparison is taken here
    # (device 0 holds the money commands, checked below).
    rows_report = await verify(dsn, Path(log_dir))
    out.counts["device_rows"] = sum(1 for r in journal if r["device_id"] != 0)
    out.counts["logged_accepts"] = rows_report.logged_accepts
    for problem in rows_report.problems:
        if problem.startswith(_ROW_PROBLEMS) and not problem.startswith(_COMMAND_ROW_PROBLEM):
            p.append(problem)
    if out.counts["device_rows"] != rows_report.logged_accepts:
        p.append(f"{out.counts['device_rows']} device rows in the journal, {rows_report.logged_accepts} accepts logged")

    # 4. Commands: one row per key, all decided, applied <-> exactly one journal row.
    for key, n in key_counts:
        p.append(f"idempotency key {key!r} has {n} command rows")
    by_key = {r["idempotency_key"]: r for r in cmds}
    command_rows = {r["device_txn"]: r for r in journal if r["device_id"] == 0}
    applied_seqs = set()
    refunded_of: dict[tuple[int, int], int] = {}
    for r in cmds:
        seq, kind, status = r["seq"], r["kind"], r["status"]
        result = msgspec.json.decode(r["result"]) if r["result"] is not None else None
        row = command_rows.get(seq)
        out.counts[f"cmd_{kind}_{('pending', 'applied', 'refused')[status]}"] = \
            out.counts.get(f"cmd_{kind}_{('pending', 'applied', 'refused')[status]}", 0) + 1
        if status == command_store.STATUS_PENDING:
            p.append(f"command {seq} ({r['idempotency_key']}) never decided")
        elif status == command_store.STATUS_APPLIED:
            applied_seqs.add(seq)
            if row is None:
                p.append(f"command {seq} ({kind}) applied but has no journal row")
                continue
            if row["kind"] != CommandKind[kind] or result is None or row["amount_kopecks"] != result["amount_kopecks"]:
                p.append(f"command {seq} ({kind}, {result}) and its journal row {dict(row)} disagree")
            if kind == "refund":
                payload = msgspec.json.decode(r["payload"])
                target = (payload["device_id"], payload["device_txn"])
                refunded_of[target] = refunded_of.get(target, 0) + row["amount_kopecks"]
        elif row is not None:
            p.append(f"command {seq} ({kind}) refused ({result}) but journaled: {dict(row)}")
    for seq in sorted(set(command_rows) - applied_seqs):
        p.append(f"journal row 0/{seq} belongs to no applied command")

    # 5. Refunds never exceed their purchase (and only purchases are refunded).
    purchases = {(r["device_id"], r["device_txn"]): r for r in journal if r["device_id"] != 0}
    for target, amount in sorted(refunded_of.items()):
        original = purchases.get(target)
        if original is None or original["kind"] != KIND_PURCHASE:
            p.append(f"refund of {target}: not a journaled purchase")
        elif amount > original["amount_kopecks"]:
            p.append(f"purchase {target} of {original['amount_kopecks']} refunded {amount}")
    out.counts["purchases_refunded"] = len(refunded_of)

    # 6. What the load submitted: every key is there once, every submit of a key got the same seq.
    for key, cmd in submitted.items():
        for error in cmd.errors:
            p.append(f"{key}: {error}")
        row = by_key.get(key)
        if row is None:
            p.append(f"submitted {key} ({cmd.kind}) is not in commands")
        elif set(cmd.seqs) != {row["seq"]}:
            p.append(f"{key}: submits returned seqs {cmd.seqs}, the row is {row['seq']}")
        elif row["kind"] != cmd.kind or msgspec.json.decode(row["payload"]) != cmd.payload:
            p.append(f"{key}: stored {row['kind']} {row['payload']} but submitted {cmd.kind} {cmd.payload}")
    out.counts["staff_keys"] = len(submitted)

    # 7. Card payments: the acquirer's view = ecard's; captured credited exactly once, refunds reversed once.
    bank_credits: dict[str, list] = {}
    bank_debits: dict[str, list] = {}
    for r in cmds:
        key = r["idempotency_key"]
        if not key.startswith("bank:"):
            continue
        _, pid, what = key.split(":")
        row = command_rows.get(r["seq"])
        if row is not None:
            (bank_credits if what == "captured" else bank_debits).setdefault(pid, []).append(row)
    for pid, view in sorted(acquirer_payments.items()):
        mine = card_payments.get(pid)
        if mine is None:
            p.append(f"payment {pid}: acquirer says {view['status']}, ecard has no row")
            continue
        if mine["status"] != view["status"]:
            p.append(f"payment {pid}: acquirer says {view['status']}, ecard says {mine['status']}")
        if (mine["account_id"], mine["amount_kopecks"]) != (int(view["account_ref"]), view["amount_kopecks"]):
            p.append(f"payment {pid}: ecard row {dict(mine)} disagrees with the acquirer {view}")
        credits, debits = bank_credits.get(pid, []), bank_debits.get(pid, [])
        if view["status"] in ("failed", "canceled"):
            if credits or debits:
                p.append(f"{view['status']} payment {pid} moved money: {[dict(x) for x in credits + debits]}")
            continue
        if view["status"] == "pending":
            p.append(f"payment {pid} is still pending at the acquirer: its page was never completed")
            continue
        if len(credits) != 1:
            p.append(f"captured payment {pid} credited {len(credits)} times")
        elif (credits[0]["kind"], credits[0]["credit_account_id"], credits[0]["amount_kopecks"]) != (
                KIND_BANK_TOPUP, int(view["account_ref"]), view["amount_kopecks"]):
            p.append(f"payment {pid}: credit {dict(credits[0])} is not {view['amount_kopecks']} to {view['account_ref']}")
        want_debits = 1 if view["status"] == "refunded" else 0
        if len(debits) != want_debits:
            p.append(f"payment {pid} ({view['status']}) reversed {len(debits)} times")
        elif debits and (debits[0]["kind"], debits[0]["debit_account_id"], debits[0]["amount_kopecks"]) != (
                KIND_BANK_REFUND, int(view["account_ref"]), view["refunded_kopecks"]):
            p.append(f"payment {pid}: reversal {dict(debits[0])} is not {view['refunded_kopecks']}")
    for pid in sorted(set(card_payments) - set(acquirer_payments)):
        p.append(f"card payment {pid} unknown to the acquirer")
    for pid in sorted((set(bank_credits) | set(bank_debits)) - set(acquirer_payments)):
        p.append(f"money moved for payment {pid} unknown to the acquirer")
    bank_topup_rows = sum(1 for r in journal if r["device_id"] == 0 and r["kind"] == KIND_BANK_TOPUP)
    out.counts["bank_credits"] = bank_topup_rows
    if bank_topup_rows != sum(len(v) for v in bank_credits.values()):
        p.append(f"{bank_topup_rows} bank_topup journal rows, {sum(len(v) for v in bank_credits.values())} keyed by a payment")
    out.counts["card_payments"] = len(acquirer_payments)
    return out
