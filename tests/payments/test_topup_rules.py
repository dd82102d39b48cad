"""Pure rules of the parents' top-ups: the allow-list of return URLs (no open redirect)."""

from __future__ import annotations

import pytest

from payments.topups import origin, return_url_allowed

ALLOWED = ("http://127.0.0.1:8820", "https://lk.school.example")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8820/topup-done",
    "http://127.0.0.1:8820",
    "http://127.0.0.1:8820/children/7?tab=money#top",
    "HTTP://127.0.0.1:8820/x",
    "https://lk.school.example/pay/done",
    "https://LK.school.example:443/pay/done",
])
def test_allowed(url):
    assert return_url_allowed(url, ALLOWED)


@pytest.mark.parametrize("url", [
    "",
    "/topup-done",
    "//127.0.0.1:8820/x",
    "http://127.0.0.1:8821/x",
    "https://127.0.0.1:8820/x",
    "http://127.0.0.1/x",
    "http://lk.school.example/x",  # http is another origin than https
    "https://lk.school.example.evil.example/x",
    "https://evil.example/?https://lk.school.example",
    "https://lk.school.example@evil.example/",
    "https://user:pass@lk.school.example/",
    "http://evil.example\\@127.0.0.1:8820/",
    "http://127.0.0.1:8820\\@evil.example/",
    "http://127.0.0.1:8820 /x",
    "http://127.0.0.1:8820/\nLocation: https://evil.example",
    "http://127.0.0.1:8820/\x00",
    "http://127.0.0.1:99999/x",
    "http://127.0.0.1:88a0/x",
    "javascript://127.0.0.1:8820/%0aalert(1)",
    "ftp://127.0.0.1:8820/",
    "http://127.0.0.1:8820/\u043f\u0443\u0442\u044c",
    "http://127.0.0.1:8820/" + "a" * 2_001,
])
def test_refused(url):
    assert not return_url_allowed(url, ALLOWED)


def test_origin_is_normalised():
    assert origin("HTTPS://Lk.School.Example/a") == "https://lk.school.example:443"
    assert origin("http://127.0.0.1:8820") == "http://127.0.0.1:8820"
    assert origin("mailto:a@b.ru") is None
