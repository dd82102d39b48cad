"""The real-browser test support itself (tests/browser.py), against pages of a local server.

Skips (with the reason) where no system chromium can be had; see tests/browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import struct
import threading
from collections.abc import Iterator

import pytest

from tests import browser
from tests.browser import (  # noqa: F401  (browser_page is a fixture)
    SCREENSHOT_DIR,
    VIEWPORT,
    BrowserUnavailable,
    ChromiumUnavailable,
    axe_violations,
    browser_page,
    format_violations,
    open_page,
    run_async,
    screenshot,
)

# A 1x1 GIF, inline: the pages load nothing else.
PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"

# Russian text, lang="ru", landmarks, labelled input, image with alt: nothing for axe to flag.
GOOD_PAGE = f"""<!doctype html>
<html lang="ru">
<head><meta charset="utf-8"><title>Баланс карты</title></head>
<body>
<main>
  <h1>Баланс карты ученика</h1>
  <p>На карте <strong>350,00 ₽</strong>. Последнее пополнение — 1 сентября.</p>
  <img src="{PIXEL}" alt="Логотип школы" width="40" height="40">
  <form>
    <label for="amount">Сумма пополнения, ₽</label>
    <input id="amount" name="amount" type="number" min="1">
    <button type="submit">Пополнить</button>
  </form>
</main>
</body>
</html>
"""

# An image without alt and an input without a label: both are critical for axe.
BAD_PAGE = f"""<!doctype html>
<html lang="ru">
<head><meta charset="utf-8"><title>Плохая страница</title></head>
<body>
<main>
  <h1>Плохая страница</h1>
  <img id="no-alt" src="{PIXEL}" width="40" height="40">
  <form><input id="no-label" name="amount" type="text"></form>
</main>
</body>
</html>
"""

PAGES = {"/good": GOOD_PAGE, "/bad": BAD_PAGE}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        page = PAGES.get(self.path)
        body = (page or "not found").encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def site() -> Iterator[str]:
    """Base URL of a local HTTP server (free port) serving PAGES; stopped afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_page_loads_with_russian_text(site, browser_page):
    response = browser_page.goto(f"{site}/good")
    assert response is not None and response.status == 200
    assert browser_page.title() == "Баланс карты"
    assert browser_page.locator("h1").inner_text() == "Баланс карты ученика"
    assert browser_page.evaluate("document.documentElement.lang") == "ru"
    assert browser_page.evaluate("navigator.language") == "ru-RU"


def test_screenshot_is_a_png_under_test_artifacts(site, browser_page):
    browser_page.goto(f"{site}/good")
    path = screenshot(browser_page, "browser-support/good page")
    assert path == SCREENSHOT_DIR / "browser-support_good_page.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    # IHDR, the first chunk: width and height, big-endian, after its length and type.
    width, height = struct.unpack(">II", data[16:24])
    assert width == VIEWPORT["width"] and height > 0


def test_axe_flags_image_without_alt_and_input_without_label(site, browser_page):
    browser_page.goto(f"{site}/bad")
    violations = axe_violations(browser_page)
    by_id = {v["id"]: v for v in violations}
    assert {"image-alt", "label"} <= by_id.keys(), format_violations(violations)
    assert by_id["image-alt"]["impact"] == "critical"
    assert by_id["image-alt"]["nodes"][0]["target"] == ["#no-alt"]
    assert by_id["label"]["nodes"][0]["target"] == ["#no-label"]
    assert "#no-alt" in format_violations(violations)
    # A second run on the same page reuses the injected axe.
    assert [v["id"] for v in axe_violations(browser_page, impact_min="critical")] == [
        v["id"] for v in violations if v["impact"] == "critical"
    ]


def test_axe_finds_nothing_serious_on_a_good_page(site, browser_page):
    browser_page.goto(f"{site}/good")
    violations = axe_violations(browser_page)
    assert violations == [], format_violations(violations)


def test_axe_rejects_an_unknown_impact(site, browser_page):
    browser_page.goto(f"{site}/good")
    with pytest.raises(ValueError, match="impact_min"):
        axe_violations(browser_page, impact_min="severe")


def test_asyncio_works_beside_and_after_the_browser(site):
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    with contextlib.ExitStack() as stack:
        try:
            page = stack.enter_context(open_page())
        except BrowserUnavailable as exc:
            pytest.skip(f"no browser for browser tests: {exc}")
        page.goto(f"{site}/good")
        # The sync API's loop counts as running in this thread, so asyncio.run refuses...
        refused = answer()
        with pytest.raises(RuntimeError, match="running event loop"):
            asyncio.run(refused)
        refused.close()
        # ...and run_async (a worker thread) is the way.
        assert run_async(answer()) == 42
    # Closed: this thread is free for asyncio again.
    assert asyncio.run(answer()) == 42


# ensure_chromium's refusals, without a browser: chromium "missing", apt-get faked.


@pytest.fixture
def no_chromium(monkeypatch):
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.setattr(browser, "_chromium_failure", None)


def test_ensure_chromium_says_when_not_root(no_chromium, monkeypatch):
    monkeypatch.setattr(browser.os, "geteuid", lambda: 1000)
    with pytest.raises(ChromiumUnavailable, match="not root: apt-get install chromium"):
        browser.ensure_chromium()
    # Remembered: the next call does not try again.
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    with pytest.raises(ChromiumUnavailable, match="not root"):
        browser.ensure_chromium()


def test_ensure_chromium_reports_apt_errors(no_chromium, monkeypatch, tmp_path):
    fake_apt = tmp_path / "apt-get"
    fake_apt.write_text("#!/bin/sh\necho 'E: Unable to locate package chromium' >&2\nexit 100\n")
    fake_apt.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    with pytest.raises(ChromiumUnavailable, match=r"apt-get update failed \(exit 100\): E: Unable to locate"):
        browser.ensure_chromium()
