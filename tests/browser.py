"""Real-browser test support: headless Debian chromium driven by Playwright (sync API).

Use in a test module (importing the fixture is what makes pytest see it):

    from tests.browser import axe_violations, browser_page, format_violations, screenshot  # noqa: F401

    def test_login_page(browser_page):
        browser_page.goto(url)
        screenshot(browser_page, "parents-login")
        violations = axe_violations(browser_page)
        assert not violations, format_violations(violations)

- The browser is Debian's ``chromium``: ``ensure_chromium`` installs it with apt-get when
  missing (as root). Playwright's own browser downloads are never used (not reachable here).
- ``browser_page`` is function-scoped: each test gets its own Playwright driver, browser and
  page (about 1.5 s), all closed at teardown. Not shared across tests on purpose: while a
  sync Playwright is alive, asyncio sees its loop as *running* in this thread, so
  ``asyncio.run`` fails there ("cannot be called from a running event loop"), in the test and
  in any fixture set up after ``browser_page``. So: list async fixtures (e.g. ``pg_dsn``)
  before ``browser_page`` in the test's arguments, run servers in other threads or processes,
  and run a coroutine inside a browser test with ``run_async`` (a worker thread).
  ``open_page()`` is the same as a context manager, for use outside fixtures.
- axe-core comes from the PyPI package ``axe-playwright-python`` (a dev dependency), which
  bundles ``axe.min.js``: nothing is fetched at run time.
- Screenshots go to ``test-artifacts/screenshots/`` at the repo root (git-ignored).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT_DIR = ROOT / "test-artifacts" / "screenshots"

# Debian names the binary `chromium`; Ubuntu's (snap) and some others `chromium-browser`.
CHROMIUM_NAMES = ("chromium", "chromium-browser")
# chromium, plus a font with Cyrillic glyphs so Russian text is not drawn as boxes.
APT_PACKAGES = ("chromium", "fonts-dejavu-core")
# apt-get update + install of chromium (about 110 MB to download): measured 11 s here for
# both; the limit allows for a slow mirror. Past it something hangs.
APT_TIMEOUT_S = 900
# How long apt-get waits for dpkg's own lock held by another apt user (not ours).
DPKG_LOCK_WAIT_S = 300
# One machine-wide lock file: parallel test processes (and checkouts) install only once.
APT_LOCK_FILE = Path(tempfile.gettempdir()) / "ecard-chromium-apt.lock"
# Waiting for another process's install: its update + install, with room to spare.
APT_LOCK_WAIT_S = 2 * APT_TIMEOUT_S + 60

# Chromium starts in ~0.3 s here; a cold disk or a loaded 2-core machine is far slower.
LAUNCH_TIMEOUT_MS = 60_000
# Default for every page action and navigation: local servers answer in milliseconds, so a
# wait this long means the page is broken, not slow.
PAGE_TIMEOUT_MS = 15_000
VIEWPORT = {"width": 1280, "height": 800}
LOCALE = "ru-RU"

# axe-core's impact levels, least to most severe.
IMPACTS = ("minor", "moderate", "serious", "critical")

T = TypeVar("T")


class BrowserUnavailable(RuntimeError):
    """No browser for the tests here; the message says why."""


class ChromiumUnavailable(BrowserUnavailable):
    """The system chromium is missing and could not be installed; the message says why."""


def chromium_path() -> str | None:
    """The system chromium binary (``/usr/bin/chromium`` on Debian), or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt(argv: list[str], what: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "-o", f"DPkg::Lock::Timeout={DPKG_LOCK_WAIT_S}", *argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=APT_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ChromiumUnavailable(f"{what} did not finish within {APT_TIMEOUT_S} s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ChromiumUnavailable(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")


def _install_chromium() -> None:
    if os.geteuid() != 0:
        raise ChromiumUnavailable(
            f"chromium is not installed and this is not root: apt-get install {' '.join(APT_PACKAGES)}"
        )
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailable("chromium is not installed and there is no apt-get: install chromium by hand")
    APT_LOCK_FILE.touch(exist_ok=True)
    with open(APT_LOCK_FILE) as lock:
        deadline = time.monotonic() + APT_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ChromiumUnavailable(
                        f"another process held {APT_LOCK_FILE} for over {APT_LOCK_WAIT_S} s"
                    ) from None
                time.sleep(1)
        # Another process may have installed it while this one waited for the lock.
        if chromium_path():
            return
        _apt(["update"], "apt-get update")
        _apt(["install", "-y", "--no-install-recommends", *APT_PACKAGES], "apt-get install chromium")
    # The lock is released when the file closes.


_chromium_failure: ChromiumUnavailable | None = None


def ensure_chromium() -> str:
    """The system chromium's path, installing it with apt-get first if it is missing.

    Raises ``ChromiumUnavailable`` saying why not (not root, no apt-get, apt's error). A
    failure is remembered for the rest of the process, so later tests do not retry apt.
    """
    global _chromium_failure
    path = chromium_path()
    if path:
        return path
    if _chromium_failure is not None:
        raise _chromium_failure
    try:
        _install_chromium()
        path = chromium_path()
        if not path:
            raise ChromiumUnavailable(
                f"apt-get installed {' '.join(APT_PACKAGES)} but no {' or '.join(CHROMIUM_NAMES)} is on PATH"
            )
    except ChromiumUnavailable as exc:
        _chromium_failure = exc
        raise
    return path


@contextlib.contextmanager
def open_page() -> Iterator[Any]:
    """A Playwright sync ``Page`` in headless system chromium (ru-RU locale, 1280x800).

    Page, browser and driver are closed on exit. Raises ``BrowserUnavailable`` when chromium
    cannot be had or Playwright's driver does not start; Playwright's own error when
    chromium is there but does not launch.
    """
    executable = ensure_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BrowserUnavailable(f"playwright is not installed ({exc}): run `make .venv/.installed`") from exc
    try:
        playwright = sync_playwright().start()
    except Exception as exc:  # the node driver shipped in the wheel did not start
        raise BrowserUnavailable(f"Playwright's node driver did not start: {exc}") from exc
    try:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"], timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            context = browser.new_context(locale=LOCALE, viewport=VIEWPORT)
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            try:
                yield context.new_page()
            finally:
                context.close()
        finally:
            browser.close()
    finally:
        playwright.stop()  # also unregisters its event loop: asyncio.run works again


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """``open_page()`` for one test; skips the test when no browser can be had.

    A broken chromium (installed but not launching) fails the test instead: worth seeing.
    """
    with contextlib.ExitStack() as stack:
        try:
            page = stack.enter_context(open_page())
        except BrowserUnavailable as exc:
            pytest.skip(f"no browser for browser tests: {exc}")
        yield page


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` in a worker thread: usable while ``browser_page`` is alive."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page PNG as ``test-artifacts/screenshots/<name>.png``; return its path.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` in ``name`` become ``_``.
    """
    safe = re.sub(r"[^\w.-]", "_", name).strip(".") or "screenshot"
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_script() -> str:
    """axe-core's ``axe.min.js``, as bundled by the ``axe-playwright-python`` wheel."""
    return (importlib.resources.files("axe_playwright_python") / "axe.min.js").read_text(encoding="utf-8")


def axe_violations(page: Any, *, impact_min: str = "serious") -> list[dict]:
    """Run axe-core on the page; the violations of impact ``impact_min`` or worse.

    Each is ``{"id", "impact", "help", "help_url", "nodes": [{"target", "html"}]}``, where
    ``target`` is axe's list of CSS selectors for the element.
    """
    if impact_min not in IMPACTS:
        raise ValueError(f"impact_min must be one of {IMPACTS}, not {impact_min!r}")
    floor = IMPACTS.index(impact_min)
    # evaluate() goes through the DevTools protocol, so a page's Content-Security-Policy
    # cannot block the injected script (an inline <script> tag could be).
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(axe_script())
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "help_url": v["helpUrl"],
            "nodes": [{"target": n["target"], "html": n["html"]} for n in v["nodes"]],
        }
        for v in results["violations"]
        if v["impact"] in IMPACTS and IMPACTS.index(v["impact"]) >= floor
    ]


def format_violations(violations: list[dict]) -> str:
    """A readable list for assertion messages: one line per violation and element."""
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} — {v['help_url']}")
        lines.extend(f"    {' '.join(n['target'])}: {n['html']}" for n in v["nodes"])
    return "\n".join(lines)
