"""Compare what the simulators were told was accepted with what PostgreSQL holds.

- the journal's (device_id, device_txn) set equals the union of the devices'
  accepted logs, row for row the same kind, account, identifier, amount,
  direction, cashier and items;
- every pupil's balance = opening balance + cash top-ups - purchases (journal);
- the canteen revenue account holds the sum of purchases, each till's drawer
  minus the sum of its top-ups;
- the sum of all balances is zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from ledger.codes import AccountKind
from protocol.items import decode_items
from storage.demo_dataset import DEMO_OPENING_BALANCE_KOPECKS
from storage.snapshot import journal_row, journal_row_columns

from .device import KIND_PURCHASE, KIND_TOPUP, read_logs

MISMATCHES_SHOWN = 20


@dataclass
class Report:
    journal_rows: int = 0
    logged_accepts: int = 0
    purchases_kopecks: int = 0
    topups_kopecks: int = 0
    ledger_sum: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def verdict(self) -> str:
        head = "OK" if self.ok else "MISMATCH"
        line = (
            f"{head}: journal_rows={self.journal_rows} logged_accepts={self.logged_accepts} "
            f"purchases={self.purchases_kopecks} topups={self.topups_kopecks} ledger_sum={self.ledger_sum}"
        )
        if not self.ok:
            line += f" problems={len(self.problems)}: " + "; ".join(self.problems[:MISMATCHES_SHOWN])
        return line


def _logged_rows(log_dir: Path) -> dict[tuple[int, int], tuple]:
    rows = {}
    for device_id, state in read_logs(log_dir).items():
        for txn, rec in state.accepted.items():
            items = rec["items"] or None
            rows[(device_id, txn)] = (
                rec["kind"],
                rec["account_id"] or 0,  # a fire panel's row names no pupil: the journal's account 0
                rec["identifier"],
                rec["amount_kopecks"],
                rec["direction"],
                rec["cashier_id"],
                tuple(tuple(i) for i in items) if items else None,
            )
    return rows


async def verify(dsn: str, log_dir: Path, *, opening_kopecks: int = DEMO_OPENING_BALANCE_KOPECKS) -> Report:
    report = Report()
    logged = _logged_rows(Path(log_dir))
    report.logged_accepts = len(logged)
    conn = await asyncpg.connect(dsn)
    try:
        rows = [journal_row(r) for r in await conn.fetch(f"SELECT {journal_row_columns()} FROM journal")]
        accounts = await conn.fetch("SELECT id, kind, balance_kopecks FROM accounts ORDER BY id")
        drawers = dict(await conn.fetch("SELECT id, drawer_account_id FROM devices WHERE drawer_account_id IS NOT NULL"))
    finally:
        await conn.close()
    journal = {}
    for r in rows:
        items = None if r.items is None else tuple(decode_items(r.items))
        journal[(r.device_id, r.device_txn)] = (
            r.kind, r.account_id, r.identifier.hex(), r.amount_kopecks, r.direction, r.cashier_id, items
        )
    report.journal_rows = len(journal)
    p = report.problems
    for key in sorted(set(logged) - set(journal)):
        p.append(f"accepted but not journaled: device {key[0]} txn {key[1]} {logged[key]}")
    for key in sorted(set(journal) - set(logged)):
        p.append(f"journaled but never seen accepted: device {key[0]} txn {key[1]} {journal[key]}")
    for key in sorted(set(journal) & set(logged)):
        if journal[key] != logged[key]:
            p.append(f"differs: device {key[0]} txn {key[1]} journal {journal[key]} log {logged[key]}")

    # Money from the journal, checked against the ledger.
    expected: dict[int, int] = {}
    revenue_total = 0
    drawer_expected: dict[int, int] = {}
    for (device_id, _txn), (kind, account_id, _i, amount, _d, _c, _items) in journal.items():
        if kind == KIND_PURCHASE:
            expected[account_id] = expected.get(account_id, 0) - amount
            revenue_total += amount
        elif kind == KIND_TOPUP:
            expected[account_id] = expected.get(account_id, 0) + amount
            drawer = drawers.get(device_id)
            drawer_expected[drawer] = drawer_expected.get(drawer, 0) - amount
    report.purchases_kopecks = revenue_total
    report.topups_kopecks = sum(-v for v in drawer_expected.values())
    revenue_balance = 0
    for r in accounts:
        account_id, kind, balance = r["id"], r["kind"], r["balance_kopecks"]
        if kind == AccountKind.PUPIL:
            want = opening_kopecks + expected.get(account_id, 0)
            if balance != want:
                p.append(f"pupil {account_id}: balance {balance}, journal says {want}")
        elif kind == AccountKind.REVENUE:
            revenue_balance += balance
        elif kind == AccountKind.DRAWER:
            want = drawer_expected.get(account_id, 0)
            if balance != want:
                p.append(f"drawer {account_id}: balance {balance}, journal says {want}")
    if revenue_balance != revenue_total:
        p.append(f"revenue accounts hold {revenue_balance}, purchases sum to {revenue_total}")
    report.ledger_sum = sum(r["balance_kopecks"] for r in accounts)
    if report.ledger_sum != 0:
        p.append(f"sum of all balances is {report.ledger_sum}, not 0")
    return report
