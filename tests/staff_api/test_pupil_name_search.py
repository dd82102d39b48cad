"""The name filter of the pupils list (GET /schools/{id}/pupils?name=) against real PostgreSQL and
a real server: every word typed a substring of the full name (surname, first name, patronymic, or
the whole name), case and ё/е ignored, nothing in it a pattern; pages as the endpoint's; only the
school's own pupils; the text rule and the length limit (422); the OpenAPI document says so.
"""

from __future__ import annotations

import pytest

from parents_api.hardening import NAME_PATTERN
from staff_api.pupils import NAME_QUERY_CHARS_MAX, PAGE_MAX, name_words
from test_staff_api import Api, api, sql  # noqa: F401  (api: the fixture)

pytestmark = pytest.mark.processes  # a uvicorn server per test

SCHOOL_1 = {  # full name: class
    "Кузнецова Анна Сергеевна": "2Б",
    "Кузнецов Пётр Иванович": "3А",
    "Ёлкина Алёна Петровна": "2Б",
    "Елкин Семён Андреевич": "3А",
    "ANNA O'Brien": "3А",
    "Пак Ю_На 100%": "3А",
    "Петрова-Водкина Ольга": "3А",
}
# School 2 (besides make_api's pupil 2000, Иванов Пётр): names that would match school 1's searches.
SCHOOL_2 = {9001: "Кузнецова Анна Ивановна", 9002: "Ёлкина Мария"}


@pytest.fixture
def named(api: Api):
    ids = {}
    for full_name, class_name in SCHOOL_1.items():
        r = api.as_("off1", "POST", "/schools/1/pupils",
                    json={"full_name": full_name, "grade": int(class_name[0]), "class_name": class_name})
        assert r.status_code == 201, r.text
        ids[full_name] = r.json()["account_id"]
    for account_id, full_name in SCHOOL_2.items():
        sql(api.dsn, "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES ($1, 1, 2, $2)", account_id, full_name)
        sql(api.dsn, "INSERT INTO pupils (account_id, school_id, full_name, grade) VALUES ($1, 2, $2, 5)",
            account_id, full_name)
    return api, ids


def search(api: Api, name: str, login: str = "off1", school: int = 1, **params):
    return api.as_(login, "GET", f"/schools/{school}/pupils", params={"name": name, **params})


def found(r) -> list[str]:
    assert r.status_code == 200, r.text
    return [p["full_name"] for p in r.json()["pupils"]]


def test_name_words_fold_case_and_yo_and_drop_repeats():
    # each word with the space that marks where a word of the name begins
    assert name_words("  КузнецОВА\u00a0ан  Ёлкина ан ") == [" кузнецова", " ан", " елкина"]
    assert name_words("ПЁТР Alёna") == [" петр", " al\u0435na"]  # ё is the Cyrillic е
    assert name_words("Петрова-Водкина") == [" петрова", " водкина"]  # a hyphen parts words


MATCHES = [  # (name typed, the pupils found, by account id)
    ("кузнецов", ["Кузнецова Анна Сергеевна", "Кузнецов Пётр Иванович"]),  # by account id
    ("КУЗНЕЦОВА", ["Кузнецова Анна Сергеевна"]),
    ("знецо", []),  # a word typed begins a word of the name: not inside one
    ("ан", ["Кузнецова Анна Сергеевна", "Елкин Семён Андреевич"]),  # Анна, Андреевич; not Иванович
    ("водкина", ["Петрова-Водкина Ольга"]),  # after a hyphen, a word begins
    ("анна", ["Кузнецова Анна Сергеевна"]),  # the first name; Latin ANNA is other letters
    ("anna", ["ANNA O'Brien"]),
    ("o'brien", ["ANNA O'Brien"]),
    ("сергеевна", ["Кузнецова Анна Сергеевна"]),  # the patronymic
    ("кузнецова ан", ["Кузнецова Анна Сергеевна"]),
    ("ан кузнецова", ["Кузнецова Анна Сергеевна"]),  # any order
    ("Кузнецова Анна Сергеевна", ["Кузнецова Анна Сергеевна"]),  # the full name
    ("кузнецова пётр", []),  # every word must be there
    # ё and е are one letter, either way round
    ("елкин", ["Ёлкина Алёна Петровна", "Елкин Семён Андреевич"]),
    ("ЁЛКИН", ["Ёлкина Алёна Петровна", "Елкин Семён Андреевич"]),
    ("алена", ["Ёлкина Алёна Петровна"]),
    ("семён", ["Елкин Семён Андреевич"]),
    ("ПЕТР", ["Кузнецов Пётр Иванович", "Ёлкина Алёна Петровна", "Петрова-Водкина Ольга"]),
    # nothing typed is a pattern: % and _ are letters like any other
    ("%", []),
    ("100%", ["Пак Ю_На 100%"]),
    ("_", []),
    ("ю_на", ["Пак Ю_На 100%"]),
    ("ю%", []),
    ("\\", []),
]


def test_name_matches(named):
    api, _ids = named
    for name, expected in MATCHES:
        assert found(search(api, name)) == expected, name


def test_name_with_class_and_the_demo_pupils(named):
    api, _ids = named
    assert found(search(api, "кузнецов", class_name="2Б")) == ["Кузнецова Анна Сергеевна"]
    assert found(search(api, "елкин", class_name="3А")) == ["Елкин Семён Андреевич"]
    r = search(api, "ученик 99")  # the demo dataset's "Ученик N": each word begins a word of the name
    assert [p["account_id"] for p in r.json()["pupils"]] == [n for n in range(1, 1001) if str(n).startswith("99")]
    assert r.json()["next_offset"] is None


def test_name_search_pages_like_the_list(named):
    api, _ids = named
    first = search(api, "ученик", limit=PAGE_MAX)
    assert first.status_code == 200 and first.json()["next_offset"] == PAGE_MAX
    second = search(api, "ученик", limit=PAGE_MAX, offset=PAGE_MAX)
    assert second.status_code == 200 and second.json()["next_offset"] is None
    ids = [p["account_id"] for page in (first, second) for p in page.json()["pupils"]]
    assert ids == list(range(1, 1001))
    small = search(api, "ученик 1", limit=5, offset=5)
    assert [p["account_id"] for p in small.json()["pupils"]] == [n for n in range(1, 1001) if "1" in str(n)][5:10]
    assert small.json()["next_offset"] == 10
    assert search(api, "ученик", limit=PAGE_MAX + 1).status_code == 422


def test_other_schools_pupils_are_never_found(named):
    api, _ids = named
    for login in ("off1", "op", "aud", "cash1"):
        for name in ("кузнецова", "елкина", "иванов", "петр", "анна иван"):
            ids = [p["account_id"] for p in search(api, name, login=login).json()["pupils"]]
            assert not set(ids) & {2000, *SCHOOL_2}, (login, name, ids)
    # another school itself: 403 for a school-bound role, whatever the name
    for login in ("off1", "cash1"):
        r = search(api, "кузнецова", login=login, school=2)
        assert r.status_code == 403 and "bound to school 1" in r.json()["detail"], r.text
    # the city-level roles find school 2's pupils there, and only there
    assert found(search(api, "кузнецова", login="op", school=2)) == ["Кузнецова Анна Ивановна"]
    assert found(search(api, "ЕЛКИНА", login="aud", school=2)) == ["Ёлкина Мария"]


BAD_NAMES = [  # (name, a word of the refusal)
    ("", "empty"),
    ("   ", "white space"),
    ("ан\x00на", "control"),
    ("ан\nна", "control"),
    ("ан\u202eна", "bidi"),
    ("ан\u2066на", "bidi"),
    ("ан\x85на", "control"),
    ("я" * (NAME_QUERY_CHARS_MAX + 1), str(NAME_QUERY_CHARS_MAX)),
]


def test_bad_names_are_refused_with_422(api: Api):
    for name, words in BAD_NAMES:
        r = search(api, name)
        assert r.status_code == 422, (name, r.text)
        body = r.json()
        assert body["field"] == "name" and body["errors"][0]["source"] == "query", (name, body)
        assert words in body["detail"], (name, body)
        # the credentials first: no token, no word about the input
        assert api.as_(None, "GET", "/schools/1/pupils", params={"name": name}).status_code == 401
    assert found(search(api, "я" * NAME_QUERY_CHARS_MAX)) == []  # the longest name is taken


def test_the_openapi_document_says_what_the_code_does(api: Api):
    document = api.http.get("/schema/openapi.json").json()
    parameters = {p["name"]: p for p in document["paths"]["/schools/{school_id}/pupils"]["get"]["parameters"]}
    name = parameters["name"]
    assert name["in"] == "query" and name["required"] is False
    assert name["schema"]["maxLength"] == NAME_QUERY_CHARS_MAX and name["schema"]["pattern"] == NAME_PATTERN
    assert parameters["limit"]["schema"]["maximum"] == PAGE_MAX
