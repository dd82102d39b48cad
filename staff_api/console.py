"""The staff console: pages in Russian for the school office, the canteen, auditors and the city
operator (docs/staff-api.md "Console").

    GET  /console/signin             login and personal token
    POST /console/signin             a server-side session (sessions.sign_in), then /console
    POST /console/signout            the session ends, the cookies go
    GET  /console                    the start page of the person's role
    GET  /console/pupils             find a pupil: by account id, class or name (the list
                                     endpoint's own filters, a page at a time)
    GET  /console/pupils/{id}        a pupil: balance, cards, temporary cards (by UID typed, or
                                     presented on the school's desk reader), parent controls,
                                     representatives; cash taken at the desk (the cashier's)
    GET  /console/pupils/new         enrol one pupil
    GET  /console/pupils/import      enrol a class from a CSV file
    GET  /console/applications/new   register a representative's application
    GET  /console/schools/{id}/presence     who is inside now
    GET  /console/schools/{id}/fire-alarm   the muster list of the latest alarm, printable
    GET  /console/admin                     the operator's schools and staff: create a school, a staff
                                            member (the key shown once), rotate a key, deactivate
    GET  /console/schools/{id}/report       the day's sales, free meals (counts), cash, refunds,
                                            corrections (the auditor's report; CSV to download)

One definition of every rule: a page *reads* through the JSON API itself, in-process (httpx's
ASGI transport, with the person's own cookie), so it passes the same guard, roles, school scope
and error messages as any other client; and every *action* is the page's script calling the
JSON API endpoints (static/console.js), whose refusals the page shows. The console only decides
what to offer: a role that may not do something is not shown it, using the role tuples the
endpoints themselves check (``pupils.WRITERS``, ``representatives.READERS``, ...). A page for an
action the role may not take answers the API's own 403 (``Principal.require``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie, ResponseHeader
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from . import building, cards, console_ru as ru, desk, money, pupils, reports, representatives, sessions
from .auth import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, Principal, authenticate, csrf_matches, csrf_token
from .preorders import school_today

CONSOLE_PATH = "/console"
# Who sees the schools and the staff (GET /staff): the operator changes them, the auditor reads.
ADMIN_READERS = ("operator", "auditor")
STATIC_PATH = f"{CONSOLE_PATH}/static"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# The matches one page of a search shows (one page of GET /schools/{id}/pupils?name=&class_name=,
# which matches in SQL); the next ones are a link away, but more means the search should be narrower.
RESULTS_SHOWN_MAX = 200
# A search field longer than this is no name, class or id; it is cut.
QUERY_CHARS_MAX = 200
# Where a sign-in may send the person back to: a console page, never another site.
_NEXT = re.compile(r"^/console(?:/[A-Za-z0-9/_.-]*)?$")
_INTERNAL_BASE = "http://staff-api.internal"
CASH_KEY_BYTES = 16  # the Idempotency-Key of a cash top-up form: unguessable, one per page shown
DEFAULT_UTC_OFFSET_MINUTES = 180  # Moscow: for a city-level person with no school chosen yet
# Every console page: scripts and styles of this origin only (the pages have no inline code), no
# framing by another site (a "block card" button under someone else's page), nothing cached (the
# pages hold pupils' and parents' personal data).
PAGE_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value="default-src 'self'; frame-ancestors 'none'; "
                   "form-action 'self'; base-uri 'none'; object-src 'none'"),
    ResponseHeader(name="Cache-Control", value="no-store"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
]
# What the page's script needs from here (base.html puts it in the page as JSON): one definition.
CLIENT = {"console": CONSOLE_PATH, "csrf_cookie": CSRF_COOKIE, "csrf_header": CSRF_HEADER,
          "status_titles": ru.STATUS_TITLE, "desk": ru.DESK, "desk_failures": ru.DESK_FAILURES,
          "command_refusals": ru.COMMAND_REFUSAL, "refusal_texts": ru.REFUSAL, "param_names": ru.PARAM_NAMES,
          "validation": ru.VALIDATION, "refusal_unknown": ru.REFUSAL_UNKNOWN, "item_unknown": ru.ITEM_UNKNOWN,
          "support_summary": ru.SUPPORT_SUMMARY}


@dataclass(frozen=True)
class Answer:
    """One JSON API answer as a page uses it."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def detail(self) -> str:
        return str(self.body.get("detail", "")) if isinstance(self.body, dict) else str(self.body)


class ApiReader:
    """GETs of the JSON API in-process, as the signed-in person (its cookie or bearer token)."""

    def __init__(self, request: Request) -> None:
        headers = {name: request.headers[name] for name in ("cookie", "authorization") if name in request.headers}
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=request.app), base_url=_INTERNAL_BASE,
                                         headers=headers)

    async def __aenter__(self) -> "ApiReader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def get(self, path: str, **params: Any) -> Answer:
        response = await self._client.get(path, params={k: v for k, v in params.items() if v is not None})
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        return Answer(response.status_code, body)


class ApiRefused(Exception):
    """A read the page needs was refused: the page shows the refusal (or, for 401, signs in)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.detail)
        self.answer = answer


def offers(principal: Principal) -> dict[str, bool]:
    """What the console offers a role: exactly what the endpoints behind it let the role do."""
    role = principal.role
    return {
        "enrol": role in pupils.WRITERS,
        "cards": role in cards.WRITERS,
        "representatives": role in representatives.READERS,
        "applications": role in representatives.WRITERS,
        "presence": role in building.READERS,
        "fire": role in building.READERS,
        "report": role in reports.READERS,
        "admin": role in ADMIN_READERS,
        "desk": role in desk.WRITERS,
        "cash": role in money.CASH_TAKERS,
    }


class SignInForm(msgspec.Struct):
    login: str = ""
    token: str = ""
    csrf_token: str = ""
    next: str = ""


class SignOutForm(msgspec.Struct):
    csrf_token: str = ""


def _secure(request: Request) -> bool:
    """Cookies are Secure behind TLS; `make run` serves plain HTTP on loopback."""
    return request.url.scheme == "https"


def _cookie(request: Request, key: str, value: str, max_age: int, *, httponly: bool) -> Cookie:
    return Cookie(key=key, value=value, max_age=max_age, path="/", httponly=httponly, samesite="strict",
                  secure=_secure(request))


def _signed_out(request: Request, to: str) -> Redirect:
    redirect = Redirect(to, status_code=303)
    redirect.cookies.extend([_cookie(request, SESSION_COOKIE, "", 0, httponly=True),
                             _cookie(request, CSRF_COOKIE, "", 0, httponly=False)])
    return redirect


def _now(request: Request) -> int:
    return request.app.state.clock()


async def _who(request: Request) -> Principal | None:
    try:
        return await authenticate(request, request.app.state.pool, _now(request))
    except (NotAuthorizedException, PermissionDeniedException):
        return None


def _to_signin(request: Request) -> Redirect:
    path = request.url.path
    return _signed_out(request, f"{CONSOLE_PATH}/signin" + (f"?next={path}" if _NEXT.match(path) else ""))


def _text(value: str) -> str:
    return value.strip()[:QUERY_CHARS_MAX]


_NUMBER = re.compile(r"^[0-9]{1,18}$")


def _int_or_none(value: str) -> int | None:
    value = value.strip()
    return int(value) if _NUMBER.match(value) else None


class Page:
    """What every console page has: the person, its role, the schools it may see, the reader."""

    def __init__(self, request: Request, principal: Principal, api: ApiReader, schools: list[dict]) -> None:
        self.request, self.principal, self.api, self.schools = request, principal, api, schools

    @property
    def school_ids(self) -> list[int]:
        return [s["id"] for s in self.schools]

    def school_name(self, school_id: int | None) -> str:
        return next((s["name"] for s in self.schools if s["id"] == school_id), f"Школа {school_id}")

    def chosen_school(self, text: str = "") -> int | None:
        """The school a page works in: the person's own, or the one chosen, or the only one."""
        if self.principal.school_id is not None:
            return self.principal.school_id
        chosen = _int_or_none(text)
        if chosen is not None:
            return chosen
        return self.schools[0]["id"] if len(self.schools) == 1 else None

    def offset(self, school_id: int | None) -> int:
        return next((s["utc_offset_minutes"] for s in self.schools if s["id"] == school_id),
                    DEFAULT_UTC_OFFSET_MINUTES)

    async def need(self, path: str, **params: Any) -> Any:
        answer = await self.api.get(path, **params)
        if not answer.ok:
            raise ApiRefused(answer)
        return answer.body

    def render(self, template: str, *, status_code: int = 200, section: str = "", **context: Any) -> Template:
        principal = self.principal
        session_id = self.request.cookies.get(SESSION_COOKIE, "")
        done = self.request.query_params.get("done", "")
        return Template(f"console/{template}", status_code=status_code, context={
            "me": principal, "role_name": ru.ROLE.get(principal.role, principal.role),
            "my_school": self.school_name(principal.school_id) if principal.school_id is not None else "",
            "offers": offers(principal), "schools": self.schools, "section": section, "ru": ru,
            "signout_csrf": csrf_token(session_id) if session_id else "",
            "done": ru.DONE.get(done, ""), "client": CLIENT, **context,
        })

    def refused(self, answer: Answer, *, section: str = "") -> Template:
        return self.render("error.html", status_code=answer.status, section=section, refusal=_refusal(answer))

    def denied(self, exc: PermissionDeniedException, *, section: str = "") -> Template:
        """The API's own 403 (``Principal.require``), as its JSON body would carry it."""
        body: dict[str, Any] = {"detail": exc.detail}
        code = getattr(exc, "code", None)
        if code is not None:
            body.update(code=code.value, params=getattr(exc, "params", {}))
        return self.refused(Answer(403, body), section=section)


async def _page(request: Request, handler: Any) -> Template | Redirect:
    """Run a page as the signed-in person; to the sign-in page when there is none."""
    principal = await _who(request)
    if principal is None:
        return _to_signin(request)
    async with ApiReader(request) as api:
        schools = await api.get("/schools")
        if schools.status == 401:
            return _to_signin(request)
        page = Page(request, principal, api, schools.body if schools.ok else [])
        try:
            return await handler(page)
        except ApiRefused as exc:
            if exc.answer.status == 401:
                return _to_signin(request)
            return page.refused(exc.answer)


def _signin_page(request: Request, *, status_code: int = 200, error: str = "", login: str = "",
                 next_path: str = "", headers: dict[str, str] | None = None) -> Template:
    """The sign-in form with a CSRF token of its own (double submit: cookie and hidden field)."""
    token = request.cookies.get(CSRF_COOKIE, "") or sessions.new_form_token()
    return Template("console/signin.html", status_code=status_code, headers=headers, context={
        "error": error, "login": login, "csrf": token, "next": next_path if _NEXT.match(next_path) else "",
        "me": None, "client": CLIENT,
    }, cookies=[_cookie(request, CSRF_COOKIE, token, sessions.SIGNIN_FORM_TTL_S, httponly=False)])


class ConsoleController(Controller):
    path = CONSOLE_PATH
    include_in_schema = False
    response_headers = PAGE_HEADERS

    # --- sign-in and sign-out --------------------------------------------------------------

    @get("/signin")
    async def signin_form(self, request: Request, next: FromQuery[str] = "") -> Template | Redirect:  # noqa: A002
        if await _who(request) is not None:
            return Redirect(next if _NEXT.match(next) else CONSOLE_PATH, status_code=303)
        return _signin_page(request, next_path=next)

    @post("/signin")
    async def signin(
        self, request: Request, data: Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
    ) -> Template | Redirect:
        login = _text(data.login)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not data.csrf_token or not cookie or not sessions.form_token_matches(data.csrf_token, cookie):
            return _signin_page(request, status_code=403, login=login, next_path=data.next,
                                error="Форма входа устарела. Введите логин и ключ ещё раз.")
        try:
            session = await sessions.sign_in(request.app.state.pool, data.login, data.token, _now(request))
        except sessions.TooManyFailures as exc:
            minutes = -(-exc.retry_after_s // 60)
            return _signin_page(request, status_code=429, login=login, next_path=data.next,
                                headers={"Retry-After": str(exc.retry_after_s)},
                                error=f"Слишком много неудачных попыток входа с этим логином. "
                                      f"Попробуйте снова через {minutes} мин.")
        except sessions.SignInRefused:
            return _signin_page(request, status_code=401, login=login, next_path=data.next,
                                error="Неверный логин или ключ доступа.")
        previous = request.cookies.get(SESSION_COOKIE, "")
        if previous:  # signing in again in the same browser: the session it had ends
            await sessions.sign_out(request.app.state.pool, previous, _now(request))
        redirect = Redirect(data.next if _NEXT.match(data.next) else CONSOLE_PATH, status_code=303)
        max_age = max(1, (session.expires_at_ms - _now(request)) // 1000)
        redirect.cookies.extend([_cookie(request, SESSION_COOKIE, session.session_id, max_age, httponly=True),
                                 _cookie(request, CSRF_COOKIE, session.csrf_token, max_age, httponly=False)])
        return redirect

    @post("/signout")
    async def signout(
        self, request: Request, data: Annotated[SignOutForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
    ) -> Template | Redirect:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if session_id:
            if not csrf_matches(session_id, data.csrf_token, request.cookies.get(CSRF_COOKIE, "")):
                return _signin_page(request, status_code=403,
                                    error="Выход не выполнен: форма устарела. Обновите страницу и нажмите «Выйти» ещё раз.")
            await sessions.sign_out(request.app.state.pool, session_id, _now(request))
        return _signed_out(request, f"{CONSOLE_PATH}/signin")

    # --- pages -------------------------------------------------------------------------------

    @get("/")
    async def start(self, request: Request) -> Template | Redirect:
        async def page(p: Page) -> Template:
            return p.render("start.html", section="start")
        return await _page(request, page)

    @get("/pupils")
    async def find(
        self, request: Request, q: FromQuery[str] = "", class_name: FromQuery[str] = "",
        account_id: FromQuery[str] = "", school: FromQuery[str] = "", offset: FromQuery[str] = "",
    ) -> Template | Redirect:
        async def page(p: Page) -> Template | Redirect:
            query, klass, account = _text(q), _text(class_name), _text(account_id)
            school_id = p.chosen_school(school)
            context: dict[str, Any] = {"q": query, "class_name": klass, "account_id": account,
                                       "school_id": school_id, "results": None, "form_error": "", "refusal": None,
                                       "name_chars_max": pupils.NAME_QUERY_CHARS_MAX}
            if account:
                number = _int_or_none(account)
                if number is None:
                    context["form_error"] = "Номер лицевого счёта — это число, например 1042."
                    return p.render("find.html", status_code=422, section="find", **context)
                answer = await p.api.get(f"/pupils/{number}")
                if answer.status == 401:
                    raise ApiRefused(answer)
                if answer.ok:
                    return Redirect(f"{CONSOLE_PATH}/pupils/{number}", status_code=303)
                context["refusal"] = _refusal(answer)
                return p.render("find.html", status_code=answer.status, section="find", **context)
            if not (query or klass):
                return p.render("find.html", section="find", **context)
            if school_id is None:
                context["form_error"] = "Выберите школу."
                return p.render("find.html", status_code=422, section="find", **context)
            first = _int_or_none(offset) or 0
            chosen = str(school_id) if p.principal.school_id is None else ""
            answer = await p.api.get(f"/schools/{school_id}/pupils", name=query or None, class_name=klass or None,
                                     limit=RESULTS_SHOWN_MAX, offset=first)
            if answer.status in (401, 403):
                raise ApiRefused(answer)
            if not answer.ok:  # the API's 422 (a name it does not take): shown by the form
                context["refusal"] = _refusal(answer)
                return p.render("find.html", status_code=answer.status, section="find", **context)
            found = answer.body["pupils"]
            more = answer.body["next_offset"]
            context["results"] = [_pupil_row(x) for x in found]
            context["page"] = {"first": first + 1, "last": first + len(found), "more": more is not None,
                               "next": _find_link(query, klass, chosen, more) if more is not None else "",
                               "previous": _find_link(query, klass, chosen, max(0, first - RESULTS_SHOWN_MAX))
                               if first > 0 else ""}
            return p.render("find.html", section="find", **context)
        return await _page(request, page)

    @get("/pupils/new")
    async def enrol_form(self, request: Request, school: FromQuery[str] = "") -> Template | Redirect:
        async def page(p: Page) -> Template:
            try:
                p.principal.require(*pupils.WRITERS, action="enrol pupils")
            except PermissionDeniedException as exc:
                return p.denied(exc, section="enrol")
            return p.render("enrol.html", section="enrol", school_id=p.chosen_school(school),
                            grades=list(range(0, 12)))
        return await _page(request, page)

    @get("/pupils/import")
    async def import_form(self, request: Request, school: FromQuery[str] = "") -> Template | Redirect:
        async def page(p: Page) -> Template:
            try:
                p.principal.require(*pupils.WRITERS, action="import pupils")
            except PermissionDeniedException as exc:
                return p.denied(exc, section="import")
            return p.render("import.html", section="import", school_id=p.chosen_school(school),
                            columns=pupils.CSV_COLUMNS, rows_max=pupils.CSV_ROWS_MAX,
                            megabytes_max=pupils.CSV_BYTES_MAX / 1_000_000)
        return await _page(request, page)

    @get("/pupils/{account_id:int}")
    async def pupil(self, request: Request, account_id: FromPath[int]) -> Template | Redirect:
        async def page(p: Page) -> Template:
            pupil = await p.need(f"/pupils/{account_id}")
            school = await p.need(f"/schools/{pupil['school_id']}")
            reps = None
            if offers(p.principal)["representatives"]:
                reps = await p.need(f"/pupils/{account_id}/representatives")
            readers = None
            if offers(p.principal)["desk"]:
                readers = [r["name"] for r in await p.need("/desk-readers", school_id=pupil["school_id"])]
            return p.render("pupil.html", section="find", pupil=_pupil_view(pupil, school), school=school,
                            desk_readers=readers,
                            # one key per page shown: a retried press (lost answer, double click) is
                            # the same top-up; the page shown after it has a new one
                            cash_key=secrets.token_urlsafe(CASH_KEY_BYTES) if offers(p.principal)["cash"] else None,
                            controls=_controls_view(pupil["controls"], school),
                            representatives=None if reps is None else [_rep_view(r) for r in reps["representatives"]],
                            representatives_max=None if reps is None else reps["representatives_max"])
        return await _page(request, page)

    @get("/applications/new")
    async def application_form(self, request: Request, pupil: FromQuery[str] = "") -> Template | Redirect:
        async def page(p: Page) -> Template:
            try:
                p.principal.require(*representatives.WRITERS, action="register representatives")
            except PermissionDeniedException as exc:
                return p.denied(exc, section="application")
            child = None
            account_id = _int_or_none(pupil)
            if account_id is not None:
                child = await p.need(f"/pupils/{account_id}")
            school_id = child["school_id"] if child else p.principal.school_id
            today = school_today(_now(p.request), p.offset(school_id))
            return p.render("application.html", section="application", child=child, today=today.isoformat())
        return await _page(request, page)

    @get("/schools/{school_id:int}/presence")
    async def presence(self, request: Request, school_id: FromPath[int]) -> Template | Redirect:
        async def page(p: Page) -> Template:
            body = await p.need(f"/schools/{school_id}/presence")
            offset = p.offset(school_id)
            classes = [{"label": ru.class_label(c["grade"], c["class_name"]), "pupils": c["pupils"],
                        "inside": [{"account_id": x["account_id"], "full_name": x["full_name"],
                                    "since": ru.local_time(x["since_ms"], offset, date=False)} for x in c["inside"]]}
                       for c in body["classes"]]
            return p.render("presence.html", section="presence", school_id=school_id,
                            school_name=p.school_name(school_id), presence=body, classes=classes,
                            at=ru.local_time(body["at_ms"], offset))
        return await _page(request, page)

    @get("/admin")
    async def admin(self, request: Request) -> Template | Redirect:
        async def page(p: Page) -> Template:
            try:
                p.principal.require(*ADMIN_READERS, action="see the schools and the staff")
            except PermissionDeniedException as exc:
                return p.denied(exc, section="admin")
            staff = await p.need("/staff")
            members = staff if isinstance(staff, list) else staff.get("staff", [])
            names = {s["id"]: s["name"] for s in p.schools}
            rows = [{**m, "role_ru": ru.ROLE.get(m["role"], m["role"]),
                     "school": names.get(m["school_id"], "все школы" if m["school_id"] is None else m["school_id"]),
                     "expires": ru.local_time(m["token_expires_at_ms"], 180)} for m in members]
            return p.render("admin.html", section="admin", staff=rows, roles=ru.ROLE,
                            writer=p.principal.role == "operator")
        return await _page(request, page)

    @get("/schools/{school_id:int}/report")
    async def report(self, request: Request, school_id: FromPath[int], day: FromQuery[str] = "") -> Template | Redirect:
        async def page(p: Page) -> Template:
            try:
                p.principal.require(*reports.READERS, action="read the daily report")
            except PermissionDeniedException as exc:
                return p.denied(exc, section="report")
            chosen = _text(day) or school_today(_now(p.request), p.offset(school_id)).isoformat()
            answer = await p.api.get(f"/schools/{school_id}/reports/daily", day=chosen)
            if not answer.ok:
                raise ApiRefused(answer)
            body = answer.body
            money = [{**m, "kind_ru": ru.MONEY_LINE[m["kind"]],
                      "at": ru.local_time(m["at_ms"], p.offset(school_id)), "amount": ru.rubles(m["amount_kopecks"])}
                     for m in body["money"]]
            return p.render("report.html", section="report", school_id=school_id, school_name=p.school_name(school_id),
                            r=body, day=chosen, money=money, rubles=ru.rubles)
        return await _page(request, page)

    @get("/schools/{school_id:int}/fire-alarm")
    async def fire_alarm(self, request: Request, school_id: FromPath[int]) -> Template | Redirect:
        async def page(p: Page) -> Template:
            answer = await p.api.get(f"/schools/{school_id}/fire-alarm")
            offset = p.offset(school_id)
            context: dict[str, Any] = {"school_id": school_id, "school_name": p.school_name(school_id), "alarm": None,
                                       "printed": ru.local_time(_now(p.request), offset)}
            if answer.status == 404 and school_id in p.school_ids:
                return p.render("fire.html", section="fire", **context)  # no alarm yet: nothing to muster
            if not answer.ok:
                raise ApiRefused(answer)
            alarm = answer.body
            device = alarm["key"].split(":", 1)[0]
            context["alarm"] = {
                "raised": ru.local_time(alarm["raised_at_ms"], offset),
                "source": "из офиса школы" if device == "0" else f"пожарная панель № {device}",
                "active": alarm["active"], "reset": ru.local_time(alarm["reset_at_ms"], offset),
                "mustered": alarm["mustered"], "evacuated": alarm["evacuated"],
                "turnstiles": alarm["turnstiles"], "released": len(alarm["released"]),
                "classes": [{"label": ru.class_label(c["grade"], c["class_name"]),
                             "pupils": [{"full_name": x["full_name"], "account_id": x["account_id"],
                                         "left": ru.local_time(x["evacuated_at_ms"], offset, date=False)
                                         if x["evacuated_at_ms"] else ""} for x in c["pupils"]]}
                            for c in alarm["classes"]],
            }
            return p.render("fire.html", section="fire", **context)
        return await _page(request, page)


def _find_link(q: str, class_name: str, school: str, offset: int) -> str:
    params = {k: v for k, v in (("q", q), ("class_name", class_name), ("school", school)) if v}
    return f"{CONSOLE_PATH}/pupils?" + urlencode({**params, "offset": offset})


def _refusal(answer: Answer) -> dict[str, Any]:
    return ru.refusal_view(answer.status, answer.body)


def _pupil_row(p: dict) -> dict:
    return {"account_id": p["account_id"], "full_name": p["full_name"],
            "class": ru.class_label(p["grade"], p["class_name"]), "balance": ru.rubles(p["balance_kopecks"]),
            "status": ru.ACCOUNT_STATUS.get(p["status"], p["status"]), "blocked": p["status"] != "active"}


def _pupil_view(p: dict, school: dict) -> dict:
    offset = school["utc_offset_minutes"]
    cards_out = []
    for c in p["cards"]:
        cards_out.append({
            "uid": c["uid"], "kind": c["kind"], "status": c["status"],
            "kind_name": ru.CARD_KIND.get(c["kind"], c["kind"]), "status_name": ru.CARD_STATUS.get(c["status"], c["status"]),
            "expires": ru.local_time(c["expires_at_ms"], offset) if c["expires_at_ms"] else "",
            "replaces": c["replaces"] or "", "bound": ru.local_time(c["bound_at_ms"], offset),
            "temporary": c["kind"] == "temporary",
        })
    return {**_pupil_row(p), "school_id": p["school_id"], "grade": p["grade"], "family_id": p["family_id"],
            "free_meal": ru.FREE_MEAL.get(p["free_meal_category"], p["free_meal_category"]),
            "balance_kopecks": p["balance_kopecks"], "cards": cards_out,
            "originals": [c for c in cards_out if c["status"] == "active" and not c["temporary"]]}


def _controls_view(c: dict | None, school: dict) -> list[tuple[str, str]]:
    c = c or {}
    products = {x["code"]: x["name"] for x in school.get("products", [])}
    periods = c.get("period_limits_kopecks") or {}
    limit = c.get("daily_limit_kopecks")
    items = c.get("items_per_day_max")
    return [
        ("Дневной лимит", ru.rubles(limit) if limit is not None else "нет"),
        ("Лимиты по приёмам пищи", ", ".join(f"{ru.PERIOD.get(k, k)}: {ru.rubles(v)}" for k, v in periods.items())
         or "нет"),
        ("Покупок в день не больше", str(items) if items is not None else "без ограничения"),
        ("Запрещённые блюда", ", ".join(products.get(code, f"товар {code}") for code in c.get("banned_products", []))
         or "нет"),
        ("Запрещённые категории", ", ".join(c.get("banned_categories", [])) or "нет"),
        ("Аллергены (не продавать)", ru.names(ru.ALLERGEN, c.get("blocked_allergens", []), "нет")),
        ("Особое питание", ru.names(ru.DIET, c.get("required_diet", []), "нет")),
        ("Заметка для кассира", c.get("cashier_note") or "нет"),
    ]


def _rep_view(r: dict) -> dict:
    return {"id": r["id"], "full_name": r["full_name"], "relation": ru.RELATION.get(r["relation"], r["relation"]),
            "phone": r["phone"], "email": r["email"] or "—", "channels": ru.names(ru.CHANNEL, r["channels"]),
            "kinds": ru.names(ru.KIND, r["kinds"]), "status": ru.REPRESENTATIVE_STATUS.get(r["status"], r["status"]),
            "consent_date": ".".join(reversed(r["consent_date"].split("-"))), "pupil_ids": r["pupil_ids"]}
