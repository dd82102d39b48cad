"""Pupils: enrol (one or a CSV file), read, change; their cards, controls and ledger."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, get, patch, post, put
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, QueryParameter

from ledger.codes import JournalKind
from protocol.items import decode_items
from protocol.limits import CASHIER_NOTE_BYTES_MAX
from storage import controls as controls_store
from storage import ledger_accounts, snapshot
from parents_api.hardening import INT64_MAX, NAME_PATTERN, name_problem, text_problem

from . import cards_core, db
from .auth import PrincipalDep
from .errors import Unprocessable, answers, invalid, refuse
from .refusals import Refusal
from .schemas import (
    TEXT_CHARS_MAX,
    CardBody,
    CardOut,
    ControlsBody,
    EnrolBody,
    ImportReport,
    Ledger,
    LedgerEntry,
    PupilList,
    PupilOut,
    PupilPatch,
    RowError,
)

WRITERS = ("operator", "officer")
CSV_COLUMNS = ("full_name", "grade", "class_name", "card_uid", "card_kind")
CSV_ROWS_MAX = 5_000
CSV_BYTES_MAX = 2_000_000
PAGE_MAX = 500
# The name filter of GET /schools/{id}/pupils (``name_words``, ``list_pupils``): a name is at most
# this long (a full name is three words of well under 30 letters each; a longer text is no name).
NAME_QUERY_CHARS_MAX = 100
# Case folding that does not depend on the database's locale (a database made with LC_CTYPE=C
# lowers ASCII only): lower() for the rest, then Russian capitals and Ё by hand; ё counts as е
# (lists and forms spell the same name both ways).
_CAPITALS_RU = "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯё"
_SMALL_RU = "абвгдеежзийклмнопрстуфхцчшщъыьэюяе"
# A hyphen separates words as a space does (Петрова-Водкина is found by "водкина"); a space is put
# in front, so that " " + word marks where a word begins.
NAME_FOLDED_SQL = f"(' ' || translate(lower(p.full_name), '{_CAPITALS_RU}-', '{_SMALL_RU} '))"
# The document shows the limits; the handler applies them itself (the shared text rule's own
# words, not a regular expression quoted back at the caller).
NameQuery = Annotated[str | None, QueryParameter(
    schema_extra={"maxLength": NAME_QUERY_CHARS_MAX, "pattern": NAME_PATTERN},
    description="pupils whose full name has a word beginning with each word of this (case, and ё/е, ignored): "
                "'кузнецова ан', 'Анна', 'сергеевна'")]
# The import's body as the OpenAPI document shows it (the handler reads the raw body itself).
CSV_REQUEST_BODY = {
    "required": True,
    "description": "UTF-8 CSV: a header line, then one pupil per line; columns " + ",".join(CSV_COLUMNS),
    "content": {"text/csv": {"schema": {"type": "string", "maxLength": CSV_BYTES_MAX}}},
}
PUPIL_KIND = 1


def name_words(name: str) -> list[str]:
    """The words of a name filter, folded as ``NAME_FOLDED_SQL`` folds the names they are looked
    for in (each, with the space put in front, must begin a word of the pupil's folded full name)."""
    folded = name.lower().translate(str.maketrans(_CAPITALS_RU + "-", _SMALL_RU + " "))
    return list(dict.fromkeys(" " + word for word in folded.split()))


async def insert_pupil(
    conn: asyncpg.Connection, account_id: int, school_id: int, data: EnrolBody, now_ms: int, actor: str
) -> list[bytes]:
    await conn.execute(
        "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES ($1, 1, $2, $3)",
        account_id, school_id, data.full_name,
    )
    await conn.execute(
        """
        INSERT INTO pupils (account_id, school_id, full_name, grade, class_name, photo_ref,
            free_meal_category, family_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        account_id, school_id, data.full_name, data.grade, data.class_name, data.photo_ref,
        data.free_meal_category, data.family_id,
    )
    touched: list[bytes] = []
    if data.card is not None:
        uid = db.parse_uid(data.card.uid)
        assert uid is not None  # the schema pattern checked it
        touched = await cards_core.bind(conn, account_id, uid, db.CARD_KINDS[data.card.kind], actor, now_ms,
                                        field="card.uid")
    await db.notify(conn, "account", account_id)
    return touched


async def load_pupil(conn: asyncpg.Connection, account_id: int) -> PupilOut:
    row = await conn.fetchrow(
        """
        SELECT p.account_id, p.school_id, p.full_name, p.grade, p.class_name, p.photo_ref,
               p.free_meal_category, p.family_id, a.status, a.balance_kopecks, a.daily_limit_kopecks
        FROM pupils p JOIN accounts a ON a.id = p.account_id WHERE p.account_id = $1
        """,
        account_id,
    )
    if row is None:
        raise refuse(NotFoundException, Refusal.NO_PUPIL, account_id=account_id)
    cards = await conn.fetch(
        f"SELECT {db.CARD_COLUMNS} FROM identifiers WHERE account_id = $1 ORDER BY bound_at_ms NULLS FIRST, identifier",
        account_id,
    )
    return PupilOut(
        account_id=row["account_id"], school_id=row["school_id"], full_name=row["full_name"],
        grade=row["grade"], class_name=row["class_name"], photo_ref=row["photo_ref"],
        free_meal_category=row["free_meal_category"], family_id=row["family_id"],
        status=db.ACCOUNT_STATUS_NAMES.get(row["status"], str(row["status"])),
        balance_kopecks=row["balance_kopecks"],
        cards=[CardOut(**db.card_view(c)) for c in cards],
        controls=await load_controls(conn, account_id),
    )


async def load_controls(conn: asyncpg.Connection, account_id: int) -> ControlsBody:
    return ControlsBody(**msgspec.structs.asdict(await controls_store.load(conn, account_id)))


def parse_csv(text: str) -> tuple[list[tuple[int, EnrolBody]], list[RowError]]:
    """Validate every row; returns the rows (line number, body) and the row errors."""
    rows: list[tuple[int, EnrolBody]] = []
    errors: list[RowError] = []
    reader = csv.reader(io.StringIO(text))
    try:
        return _parse_rows(reader, rows, errors)
    except csv.Error as exc:  # a cell over csv.field_size_limit(), a stray quote...: the file is refused
        return [], [RowError(row=max(reader.line_num, 1), field="file", message=f"not a CSV file the import reads: {exc}")]


def _parse_rows(
    reader: Any, rows: list[tuple[int, EnrolBody]], errors: list[RowError]
) -> tuple[list[tuple[int, EnrolBody]], list[RowError]]:
    header = next(reader, None)
    if header is None:
        return [], [RowError(row=1, field="header", message="empty file")]
    header = [h.strip().lower() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        return [], [RowError(row=1, field="header", message=f"missing columns: {', '.join(missing)}")]
    index = {name: header.index(name) for name in CSV_COLUMNS}
    seen_uids: dict[bytes, int] = {}
    for line_no, record in enumerate(reader, start=2):
        if not any(cell.strip() for cell in record):
            continue
        if len(rows) + len(errors) >= CSV_ROWS_MAX:
            errors.append(RowError(row=line_no, field="file", message=f"more than {CSV_ROWS_MAX} rows"))
            break
        cell = {name: (record[i].strip() if i < len(record) else "") for name, i in index.items()}
        row_errors: list[RowError] = []
        for name in ("grade", "card_uid", "card_kind"):
            problem = text_problem(cell[name])
            if problem is not None:
                row_errors.append(RowError(row=line_no, field=name, message=problem))
                cell[name] = ""
        if not cell["full_name"]:
            row_errors.append(RowError(row=line_no, field="full_name", message="required"))
        elif len(cell["full_name"]) > TEXT_CHARS_MAX:
            row_errors.append(RowError(row=line_no, field="full_name", message=f"longer than {TEXT_CHARS_MAX} characters"))
        elif (problem := name_problem(cell["full_name"])) is not None:
            row_errors.append(RowError(row=line_no, field="full_name", message=problem))
        grade = -1
        try:
            if not (cell["grade"].isascii() and cell["grade"].isdigit()):
                raise ValueError
            grade = int(cell["grade"])
            if not 0 <= grade <= 11:
                raise ValueError
        except ValueError:
            row_errors.append(RowError(row=line_no, field="grade", message="must be an integer 0..11"))
        if cell["class_name"] and (problem := name_problem(cell["class_name"])) is not None:
            row_errors.append(RowError(row=line_no, field="class_name", message=problem))
        if len(cell["class_name"]) > TEXT_CHARS_MAX:
            row_errors.append(RowError(row=line_no, field="class_name", message=f"longer than {TEXT_CHARS_MAX} characters"))
        card: CardBody | None = None
        if cell["card_uid"] or cell["card_kind"]:
            uid = db.parse_uid(cell["card_uid"])
            if uid is None:
                row_errors.append(RowError(row=line_no, field="card_uid", message="must be 4..16 bytes as hex"))
            elif uid in seen_uids:
                row_errors.append(RowError(row=line_no, field="card_uid",
                                           message=f"duplicate of line {seen_uids[uid]} in this file"))
            else:
                seen_uids[uid] = line_no
            kind = cell["card_kind"] or "service_card"
            if kind not in db.CARD_KINDS or kind == "temporary":
                row_errors.append(RowError(row=line_no, field="card_kind",
                                           message="one of service_card, social_card, bracelet, fob, muscovite_card"))
            if uid is not None and not row_errors:
                card = CardBody(uid=uid.hex(), kind=kind)  # type: ignore[arg-type]
        if row_errors:
            errors.extend(row_errors)
        else:
            rows.append((line_no, EnrolBody(full_name=cell["full_name"], grade=grade,
                                             class_name=cell["class_name"], card=card)))
    return rows, errors


class PupilController(Controller):
    tags = ["pupils"]

    @get("/schools/{school_id:int}/pupils")
    async def list_pupils(
        self, school_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
        class_name: FromQuery[str | None] = None,
        name: NameQuery = None,
        limit: int = Parameter(default=100, ge=1, le=PAGE_MAX),
        offset: int = Parameter(default=0, ge=0, le=INT64_MAX),
    ) -> PupilList:
        """Pupils of a school (optionally of one class, or whose name has a word beginning with each word of
        ``name``), by account id; no cards or controls."""
        principal.require_school(school_id, f"school {school_id}")
        words: list[str] = []
        if name is not None:
            problem = name_problem(name)
            if problem is not None:  # the text rule's own words (parents_api.hardening)
                raise Unprocessable("name", problem, source="query")
            if len(name) > NAME_QUERY_CHARS_MAX:
                raise invalid("name", Refusal.TOO_LONG_CHARS, source="query", chars_max=NAME_QUERY_CHARS_MAX)
            words = name_words(name)
        # A name is looked for in one school's pupils (the index pupils_school): each word typed
        # begins a word of the folded full name (strpos: nothing in it is a pattern).
        rows = await pool.fetch(
            f"""
            SELECT p.*, a.status, a.balance_kopecks FROM pupils p JOIN accounts a ON a.id = p.account_id
            WHERE p.school_id = $1 AND ($2::text IS NULL OR p.class_name = $2)
              AND NOT EXISTS (SELECT 1 FROM unnest($5::text[]) AS w(word) WHERE strpos({NAME_FOLDED_SQL}, w.word) = 0)
            ORDER BY p.account_id LIMIT $3 OFFSET $4
            """,
            school_id, class_name, limit + 1, offset, words,
        )
        pupils = [
            PupilOut(
                account_id=r["account_id"], school_id=r["school_id"], full_name=r["full_name"], grade=r["grade"],
                class_name=r["class_name"], photo_ref=r["photo_ref"], free_meal_category=r["free_meal_category"],
                family_id=r["family_id"], status=db.ACCOUNT_STATUS_NAMES.get(r["status"], "?"),
                balance_kopecks=r["balance_kopecks"],
            )
            for r in rows[:limit]
        ]
        return PupilList(pupils=pupils, next_offset=offset + limit if len(rows) > limit else None)

    @post("/schools/{school_id:int}/pupils", status_code=201, opt=answers(409))
    async def enrol(
        self, school_id: FromPath[int], data: JSONBody[EnrolBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> PupilOut:
        """Enrol one pupil: a personal account (next dense id), the pupil row, optionally a first card."""
        principal.require(*WRITERS, action="enrol pupils")
        principal.require_school(school_id, f"school {school_id}")
        async with pool.acquire() as conn, conn.transaction():
            await db.school_row(conn, school_id)
            if data.card is not None:
                uid = db.parse_uid(data.card.uid)
                assert uid is not None
                await cards_core.ensure_unbound(conn, uid, "card.uid", school_id)
            account_id = await ledger_accounts.next_account_id(conn)
            await insert_pupil(conn, account_id, school_id, data, now_ms, principal.login)
            out = await load_pupil(conn, account_id)
            await db.audit(conn, principal.login, "pupil.enrol", f"pupil:{account_id}", None,
                           msgspec.to_builtins(out), now_ms)
        return out

    @post("/schools/{school_id:int}/pupils/import", status_code=201, opt=answers(request_body=CSV_REQUEST_BODY))
    async def import_csv(
        self, school_id: FromPath[int], request: Request, principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs,
    ) -> ImportReport:
        """Bulk enrolment from CSV: every row valid, or nothing imported (422 with a per-row report).

        Body: ``Content-Type: text/csv``, UTF-8, header line then rows with the columns
        full_name,grade,class_name,card_uid,card_kind (card_uid hex 4..16 bytes; both card
        columns may be empty for a pupil without a card).
        """
        data = await request.body()
        principal.require(*WRITERS, action="import pupils")
        principal.require_school(school_id, f"school {school_id}")
        if len(data) > CSV_BYTES_MAX:
            raise invalid("body", Refusal.BODY_TOO_LARGE, bytes_max=CSV_BYTES_MAX)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise invalid("body", Refusal.NOT_UTF8) from None
        rows, errors = parse_csv(text)
        async with pool.acquire() as conn, conn.transaction():
            await db.school_row(conn, school_id)
            uids = {db.parse_uid(b.card.uid): line for line, b in rows if b.card is not None}
            if uids:
                bound = await conn.fetch(
                    "SELECT i.identifier, i.account_id, a.school_id FROM identifiers i JOIN accounts a ON a.id = i.account_id"
                    " WHERE i.identifier = ANY($1::bytea[])", list(uids)
                )
                for r in bound:
                    uid = bytes(r["identifier"])
                    whose = f"account {r['account_id']}" if r["school_id"] == school_id else "another account"
                    errors.append(RowError(row=uids[uid], field="card_uid",
                                           message=f"card {uid.hex()} is already bound to {whose}"))
            if not rows and not errors:
                errors.append(RowError(row=1, field="body", message="no rows"))
            if errors:
                errors.sort(key=lambda e: (e.row, e.field))
                raise invalid(errors[0].field, Refusal.CSV_ROW_ERRORS, count=len(errors), unnamed=True,
                              errors=[msgspec.to_builtins(e) for e in errors])
            next_id = await ledger_accounts.next_account_id(conn)
            ids: list[int] = []
            for _line, body in rows:
                await insert_pupil(conn, next_id, school_id, body, now_ms, principal.login)
                ids.append(next_id)
                next_id += 1
            await db.audit(conn, principal.login, "pupil.import", f"school:{school_id}", None,
                           {"account_ids": ids, "rows": [msgspec.to_builtins(b) for _l, b in rows]}, now_ms)
        return ImportReport(imported=len(ids), account_ids=ids)

    @get("/pupils/{account_id:int}")
    async def get_pupil(self, account_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep) -> PupilOut:
        """A pupil with balance, cards and parent controls."""
        async with pool.acquire() as conn:
            principal.require_own(await db.pupil_school(conn, account_id), db.pupil_not_found(account_id))
            return await load_pupil(conn, account_id)

    @patch("/pupils/{account_id:int}")
    async def patch_pupil(
        self, account_id: FromPath[int], data: JSONBody[PupilPatch], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> PupilOut:
        """Change grade, class, free-meal category, family, photo or account status (active/blocked)."""
        principal.require(*WRITERS, action="change pupils")
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        if not changes:
            raise invalid("body", Refusal.NOTHING_TO_CHANGE)
        async with pool.acquire() as conn, conn.transaction():
            principal.require_own(await db.pupil_school(conn, account_id, for_update=True), db.pupil_not_found(account_id))
            before = await load_pupil(conn, account_id)
            if "status" in changes:
                await conn.execute("UPDATE accounts SET status = $2 WHERE id = $1", account_id,
                                   db.ACCOUNT_STATUS[changes.pop("status")])
            columns = [c for c in ("grade", "class_name", "free_meal_category", "family_id", "photo_ref")
                       if c in changes]
            if columns:
                assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
                await conn.execute(f"UPDATE pupils SET {assignments} WHERE account_id = $1", account_id,
                                   *[changes[c] for c in columns])
            after = await load_pupil(conn, account_id)
            await db.audit(conn, principal.login, "pupil.update", f"pupil:{account_id}",
                           _pupil_fields(before), _pupil_fields(after), now_ms)
            await db.notify(conn, "account", account_id)
        return after

    @get("/pupils/{account_id:int}/controls")
    async def get_controls(self, account_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep) -> ControlsBody:
        async with pool.acquire() as conn:
            principal.require_own(await db.pupil_school(conn, account_id), db.pupil_not_found(account_id))
            return await load_controls(conn, account_id)

    @put("/pupils/{account_id:int}/controls")
    async def put_controls(
        self, account_id: FromPath[int], data: JSONBody[ControlsBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> ControlsBody:
        """Replace the parent controls (daily and per-period limits, bans, allergens, diet, note)."""
        principal.require(*WRITERS, action="set parent controls")
        if len(data.cashier_note.encode()) > CASHIER_NOTE_BYTES_MAX:
            raise invalid("cashier_note", Refusal.CASHIER_NOTE_TOO_LONG, bytes_max=CASHIER_NOTE_BYTES_MAX,
                          bytes_given=len(data.cashier_note.encode()))
        async with pool.acquire() as conn, conn.transaction():
            school_id = await db.pupil_school(conn, account_id, for_update=True)
            principal.require_own(school_id, db.pupil_not_found(account_id))
            try:
                _, after = await controls_store.replace(
                    conn, account_id, school_id, controls_store.Controls(**msgspec.structs.asdict(data)),
                    actor=principal.login, now_ms=now_ms)
            except controls_store.UnknownProducts as exc:
                raise Unprocessable("banned_products", str(exc)) from None
        return ControlsBody(**msgspec.structs.asdict(after))

    @post("/pupils/{account_id:int}/cards", status_code=201, opt=answers(409))
    async def bind_card(
        self, account_id: FromPath[int], data: JSONBody[CardBody], principal: PrincipalDep, pool: db.PoolDep, now_ms: db.NowMs
    ) -> CardOut:
        """Bind a permanent card; any active temporary card standing for a broken card is blocked."""
        principal.require(*WRITERS, action="bind cards")
        uid = db.parse_uid(data.uid)
        assert uid is not None
        async with pool.acquire() as conn, conn.transaction():
            principal.require_own(await db.pupil_school(conn, account_id, for_update=True), db.pupil_not_found(account_id))
            touched = await cards_core.bind(conn, account_id, uid, db.CARD_KINDS[data.kind], principal.login, now_ms)
            after = await cards_core.card_snapshot(conn, uid)
            await db.audit(conn, principal.login, "card.bind", f"card:{uid.hex()}", None, after, now_ms)
            for other in touched[1:]:
                await db.audit(conn, principal.login, "card.block", f"card:{other.hex()}",
                               {"status": "active"}, await cards_core.card_snapshot(conn, other), now_ms)
        assert after is not None
        return CardOut(**after)

    @get("/accounts/{account_id:int}/ledger")
    async def ledger(
        self, account_id: FromPath[int], principal: PrincipalDep, pool: db.PoolDep,
        limit: int = Parameter(default=50, ge=1, le=PAGE_MAX),
        offset: int = Parameter(default=0, ge=0, le=INT64_MAX),
    ) -> Ledger:
        """Journal rows of an account (as the tapping account, or debited, or credited), newest first."""
        async with pool.acquire() as conn:
            account = await conn.fetchrow(
                "SELECT school_id, balance_kopecks, kind FROM accounts WHERE id = $1", account_id
            )
            if account is None:
                raise db.account_not_found(account_id)
            principal.require_own(account["school_id"], db.account_not_found(account_id))
            # A pupil's rows: every device row names the pupil in account_id; a money
            # command may also credit or debit it as the other side (a transfer), which
            # the partial indexes of migration 0004 find. System accounts (revenue,
            # drawers) appear on every sale: their history is a report, scanned.
            condition = (
                "account_id = $1 OR (device_id = 0 AND (debit_account_id = $1 OR credit_account_id = $1))"
                if account["kind"] == 1
                else "account_id = $1 OR debit_account_id = $1 OR credit_account_id = $1"
            )
            rows = await conn.fetch(
                f"""
                SELECT {snapshot.journal_row_columns()} FROM journal
                WHERE {condition}
                ORDER BY decided_at_ms DESC, device_id DESC, device_txn DESC
                LIMIT $2 OFFSET $3
                """,
                account_id, limit + 1, offset,
            )
        entries = []
        for r in rows[:limit]:
            row = snapshot.journal_row(r)
            entries.append(
                LedgerEntry(
                    device_id=row.device_id, device_txn=row.device_txn, kind=JournalKind(row.kind).label,
                    account_id=row.account_id, identifier=row.identifier.hex(),
                    debit_account_id=row.debit_account_id, credit_account_id=row.credit_account_id,
                    amount_kopecks=row.amount_kopecks, balance_after_kopecks=row.balance_after_kopecks,
                    advice=row.advice, device_time_ms=row.device_time_ms, decided_at_ms=row.decided_at_ms,
                    happened_at_ms=row.happened_at_ms,
                    items=None if row.items is None else [list(line) for line in decode_items(row.items)],
                )
            )
        return Ledger(account_id=account_id, balance_kopecks=account["balance_kopecks"], entries=entries,
                      next_offset=offset + limit if len(rows) > limit else None)


def _pupil_fields(p: PupilOut) -> dict[str, Any]:
    d = msgspec.to_builtins(p)
    d.pop("cards", None)
    d.pop("controls", None)
    d.pop("balance_kopecks", None)
    return d
