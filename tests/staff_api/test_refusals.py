"""The staff API's refusal codes and their Russian texts (pure: no database, no server).

Every refusal the package raises has a code (staff_api.refusals) with its English detail; every
code has a Russian text in the console's one place (console_ru.REFUSAL) using only the code's
parameters; the validation messages without a code have Russian too; and what the person reads
is Russian, the English only in the part folded away for the support desk.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import pytest

from parents_api.hardening import name_problem, text_problem
from staff_api import console_ru as ru
from staff_api.refusals import ENGLISH, Refusal, param_names, recognise

PACKAGE = Path(__file__).resolve().parents[2] / "staff_api"
# The exceptions that answer a client with a refusal (Litestar's and the package's own).
REFUSAL_EXCEPTIONS = {"Conflict", "Unprocessable", "NotFoundException", "PermissionDeniedException",
                      "NotAuthorizedException", "ClientException", "HTTPException", "InputRefused",
                      "ValidationException", "TooManyRequestsException", "MethodNotAllowedException"}
_RU_PARAM = re.compile(r"\{(\w+)\}")
# A Latin word in a Russian text: only the names a school office knows as they are.
_LATIN_WORD = re.compile(r"(?!(?:UID|UTF|CSV)\b)\b[A-Za-z]{3,}")


def test_every_code_has_one_english_template_and_a_russian_text_with_its_parameters():
    assert set(ENGLISH) == set(Refusal)
    assert set(ru.REFUSAL) == {code.value for code in Refusal}, "a code without Russian, or Russian without a code"
    for code in Refusal:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code.value), code
        english = param_names(ENGLISH[code])
        russian = set(_RU_PARAM.findall(ru.REFUSAL[code.value]))
        # The Russian may leave out a parameter that is English words for programs (a role's
        # "action", the "what" of another school) but never names one the code does not carry.
        assert russian <= english, (code, russian - english)
        assert not _LATIN_WORD.search(_RU_PARAM.sub("", ru.REFUSAL[code.value])), (code, ru.REFUSAL[code.value])


def test_an_english_detail_is_recognised_as_its_code():
    """``recognise`` (texts made from a template elsewhere: path ids, storage) finds the very code."""
    for code in Refusal:
        if code is Refusal.VALUE_NOT_STORABLE:
            continue  # "{reason}": anything
        params = {name: f"p{i}x" for i, name in enumerate(sorted(param_names(ENGLISH[code])))}
        found = recognise(code.detail(**params))
        assert found is not None, code
        if found[0] is not code:  # the same words under two codes ("must be 1..{n}"): either is right
            assert _shape(ENGLISH[found[0]]) == _shape(ENGLISH[code]), (code, found)
            continue
        assert found == (code, params), code
    assert recognise("no school 99999999999") == (Refusal.NO_SCHOOL, {"school_id": "99999999999"})
    assert recognise("Expected `int`, got `str`") is None


def _shape(template: str) -> str:
    return re.sub(r"\{\w+(?:![rs])?\}", "{}", template)


def _refusal_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in REFUSAL_EXCEPTIONS:
                yield name, node


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def test_no_refusal_of_the_package_is_made_from_a_literal_text():
    """Every refusal goes through a code: ``errors.refuse(Conflict, Refusal.X, ...)`` and
    ``errors.invalid(field, Refusal.X, ...)``, never ``Conflict(f"...")``. A text passed on from
    elsewhere (a variable) is allowed: the handler recognises it or the console falls back."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for name, call in _refusal_calls(ast.parse(path.read_text(), str(path))):
            args = list(call.args) + [k.value for k in call.keywords if k.arg in ("detail", "message")]
            if name in ("Unprocessable", "InputRefused") and call.args:
                args = args[1:]  # the first is the field's name
            if any(_is_text(a) for a in args):
                offenders.append(f"{path.name}:{call.lineno} {name}")
    assert not offenders, offenders


def test_the_scan_finds_a_literal_refusal():
    """The scan above can fail: a literal detail, positional or by keyword, is found."""
    source = 'raise Conflict(f"device {d} is revoked")\nraise NotFoundException(detail="no such")\n' \
             'raise Unprocessable("grade", "too big")\nraise refuse(Conflict, Refusal.DEVICE_REVOKED, device_id=1)\n'
    found = [(name, call.lineno) for name, call in _refusal_calls(ast.parse(source))
             if any(_is_text(a) for a in (call.args[1:] if name == "Unprocessable" else call.args)
                    + [k.value for k in call.keywords])]
    assert found == [("Conflict", 1), ("NotFoundException", 2), ("Unprocessable", 3)]


def test_refusals_raised_carry_code_params_and_the_same_english():
    from litestar.exceptions import NotFoundException

    from staff_api.errors import Conflict, invalid, refuse

    exc = refuse(Conflict, Refusal.DEVICE_REVOKED, device_id=7)
    assert (exc.status_code, exc.detail, exc.code, exc.params) == (409, "device 7 is revoked", Refusal.DEVICE_REVOKED,
                                                                   {"device_id": 7})
    assert refuse(NotFoundException, Refusal.NO_STAFF_LOGIN, login="x").detail == "no staff login 'x'"
    exc = invalid("to_account_id", Refusal.TRANSFER_SAME_ACCOUNT)
    assert exc.detail == "to_account_id: must differ from from_account_id"
    assert exc.errors == [{"field": "to_account_id", "message": "must differ from from_account_id", "source": "body",
                           "code": "transfer_same_account", "params": {}}]
    assert Refusal.ROLE_FORBIDDEN.detail(role="cashier", action="block cards", allowed=["operator", "officer"]) == \
        "role 'cashier' may not block cards; allowed: operator, officer"


# --- msgspec's and the strict input's messages ----------------------------------------------------------------


class _Kind(msgspec.Struct):
    pass


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=9)] = 1
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=80, pattern="^[a-z]+$")] = "a"
    relation: Literal["parent", "nanny"] = "parent"
    day: dt.date = dt.date(2026, 9, 1)
    ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(default_factory=lambda: [1])
    maybe: int | None = None
    flag: bool = False


class _Required(msgspec.Struct):
    grade: int


def _msgspec_messages() -> list[str]:
    bodies = ['{"count": "x"}', '{"count": 0}', '{"count": 10}', '{"count": 1.5}', '{"count": null}',
              '{"name": ""}', '{"name": "' + "a" * 81 + '"}', '{"name": "A"}', '{"relation": "uncle"}',
              '{"relation": 1}', '{"day": "2026-13-01"}', '{"ids": []}', '{"ids": [1, 2, 3]}', '{"ids": ["a"]}',
              '{"maybe": "x"}', '{"flag": "yes"}', '{"other": 1}', '[1]']
    out = []
    for body in bodies:
        with pytest.raises(msgspec.ValidationError) as exc:
            msgspec.json.decode(body, type=_Body, strict=True)
        out.append(str(exc.value).split(" - at ")[0])
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.json.decode("{}", type=_Required)
    out.append(str(exc.value))
    return out


@pytest.mark.parametrize("message", [*_msgspec_messages(), text_problem("a\nb"), name_problem("  "),
                                     "must be between -9223372036854775808 and 9223372036854775807",
                                     "not a JSON document: Input data was truncated", "required",
                                     "must be an integer 0..11", "missing columns: grade", "no rows",
                                     "card 04000003 is already bound to account 3"])
def test_every_validation_message_has_russian(message):
    template = next((t for p, t in ru.VALIDATION if re.search(p, str(message))), "")
    assert template and ru.validation_text(str(message)), message
    assert not _LATIN_WORD.search(template), (message, template)  # the values filled in may be the input's


def test_the_validation_table_is_javascript_compatible():
    """The table goes to the script as it is (CLIENT.validation): no Python-only syntax."""
    for pattern, template in ru.VALIDATION:
        re.compile(pattern)
        assert "(?P" not in pattern and "(?<" not in pattern and "\\A" not in pattern and "\\Z" not in pattern
        groups = re.compile(pattern).groups
        assert set(_RU_PARAM.findall(template)) <= {str(i) for i in range(1, groups + 1)}, pattern


# --- what a page shows ------------------------------------------------------------------------------------------


def test_a_coded_refusal_reads_in_russian_with_its_parameters_named():
    view = ru.refusal_view(403, {"status_code": 403, "detail": "role 'cashier' may not block cards; allowed: operator",
                                 "code": "role_forbidden",
                                 "params": {"role": "cashier", "action": "block cards", "allowed": ["operator"]}})
    assert view["title"] == ru.STATUS_TITLE[403]
    assert view["text"] == "Роль «кассир столовой» не может блокировать карты. Это могут роли: оператор города."
    assert view["support"] == "role 'cashier' may not block cards; allowed: operator"
    # a parameter recognised from a text is a string; a list the text joined is named item by item
    view = ru.refusal_view(422, {"detail": "x", "errors": [{"field": "period", "message": "x",
                                                             "code": "not_a_meal_period",
                                                             "params": {"school_id": "1",
                                                                        "periods": "breakfast, lunch"}}]})
    assert view["items"] == [{"field": "period", "label": "", "text": "В школе № 1 нет такого приёма пищи. "
                                                                       "Есть: завтрак, обед."}]


def _role_check_actions() -> set[str]:
    """Every ``action`` the package's role checks name: ``require(..., action="...")`` literals, and
    the one f-string (``f"{action} representatives"``) over its table's keys."""
    actions: set[str] = set()
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "require"):
                continue
            for kw in node.keywords:
                if kw.arg != "action":
                    continue
                if isinstance(kw.value, ast.Constant):
                    actions.add(kw.value.value)
                elif isinstance(kw.value, ast.JoinedStr) and path.name == "representatives.py":
                    from staff_api.representatives import _TRANSITIONS

                    tail = "".join(v.value for v in kw.value.values if isinstance(v, ast.Constant))
                    actions.update(f"{key}{tail}" for key in _TRANSITIONS)
                else:
                    raise AssertionError(f"{path.name}:{node.lineno}: a role check's action this test cannot read")
    return actions


def test_every_action_a_role_check_names_reads_in_russian():
    actions = _role_check_actions()
    assert len(actions) >= 50 and "block cards" in actions and "suspend representatives" in actions
    assert actions <= set(ru.ACTION), sorted(actions - set(ru.ACTION))
    for phrase in ru.ACTION.values():
        assert not _LATIN_WORD.search(phrase), phrase
    view = ru.refusal_view(403, {"detail": "x", "code": "role_forbidden",
                                 "params": {"role": "auditor", "action": "suspend representatives",
                                            "allowed": ["operator", "officer"]}})
    assert view["text"].startswith("Роль «аудитор» не может приостанавливать доступ представителей. Это могут роли: ")


def test_money_parameters_are_rubles():
    assert ru._param_text("any", "amount_kopecks", 1_500_000) == "15\u00a0000,00\u00a0₽"


def test_an_unknown_refusal_is_a_russian_sentence_and_the_english_only_for_support():
    view = ru.refusal_view(405, {"status_code": 405, "detail": "Method Not Allowed"})
    assert view["text"] == ru.REFUSAL_UNKNOWN and view["support"] == "Method Not Allowed"
    view = ru.refusal_view(418, {"detail": "I'm a teapot", "code": "no_such_code"})
    assert view["title"] == ru.STATUS_TITLE[500] and view["text"] == ru.REFUSAL_UNKNOWN
    view = ru.refusal_view(422, {"detail": "x: y", "errors": [{"field": "x", "message": "something new"}]})
    assert view["items"] == [{"field": "x", "label": "", "text": ru.ITEM_UNKNOWN}]


def test_a_refused_money_command_reads_by_its_reason():
    view = ru.refusal_view(409, {"detail": "refused", "reason": "AMOUNT_INVALID",
                                 "result": {"params": [2_000_000, 1_500_000]}})
    assert view["text"] == "Неверная сумма: больше нуля и не больше 15\u00a0000,00\u00a0₽."
