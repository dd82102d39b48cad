"""Support for the desk reader tests: staff members, the staff API (in a thread or as a
process), pcscd with the virtual reader in a private network namespace, virtual cards and
the bridge as a process. Every wait polls a condition with a deadline; every process,
port, namespace and database is freed by its owner's ``close``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from support import ROOT, wait_until
from support import Clock, ThreadServer  # noqa: F401  (shared)

MSK = 180
# 2026-09-01 10:00 Moscow time (07:00 UTC)
T0 = 1_788_246_000_000
STAFF = {  # login: (role, school)
    "op": ("operator", None),
    "aud": ("auditor", None),
    "off1": ("officer", 1),
    "off2": ("officer", 2),
    "cash1": ("cashier", 1),
    "bridge1": ("officer", 1),  # the office-1 bridge's token: an officer of school 1
}
DESK = "office-1"

# Where vsmartcard's pieces are (Debian packages; docs/desk-reader.md).
DEBIAN_PYTHON = "/usr/bin/python3"
VIRTUALSMARTCARD_PATH = "/usr/lib/python3/site-packages/virtualsmartcard"
CRYPTODOME_PATH = "/usr/lib/python3/dist-packages/Cryptodome"
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
UIDCARD = Path(__file__).resolve().parent / "uidcard.py"
READER_00 = "Virtual PCD 00 00"
VPCD_PORT_00 = 35963  # /etc/reader.conf.d/vpcd: reader "Virtual PCD 00 00"
# pcscd's socket is machine-wide (/run/pcscd, not configurable): one lab at a time.
LAB_LOCK = Path("/tmp/ecard-deskreader-pcscd.lock")
LAB_LOCK_WAIT_S = 120.0
# Starting pcscd (reader.conf, the vpcd driver) and a virtual card (connect to vpcd) take
# well under a second here; these bound the waits generously for a loaded CI machine.
PCSCD_START_TIMEOUT_S = 20.0
CARD_START_TIMEOUT_S = 20.0
PROCESS_STOP_TIMEOUT_S = 15.0
# The staff API process: imports, migrations checked, pool made.
STAFF_API_START_TIMEOUT_S = 60.0


def run(coro):
    return asyncio.run(coro)


async def _fetch(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def sql(dsn: str, query: str, *args) -> list[asyncpg.Record]:
    return run(_fetch(dsn, query, *args))


def add_school2_and_staff(dsn: str) -> dict[str, str]:
    """School 2 with pupil 2000 (card 0a0b0c0d), the staff of STAFF; returns login -> token."""
    from staff_api.auth import token_sha256

    sql(dsn, "INSERT INTO schools (id, name, utc_offset_minutes) VALUES (2, 'ГБОУ Школа № 2', 180)")
    sql(dsn, "INSERT INTO accounts (id, kind, school_id, holder_name) VALUES (2000, 1, 2, 'Иванов Пётр')")
    sql(dsn, "INSERT INTO pupils (account_id, school_id, full_name, grade) VALUES (2000, 2, 'Иванов Пётр', 5)")
    sql(dsn, "INSERT INTO identifiers (identifier, account_id, kind) VALUES ($1, 2000, 1)", bytes.fromhex("0a0b0c0d"))
    tokens = {}
    for login, (role, school) in STAFF.items():
        token = f"token-{login}-{secrets.token_hex(8)}"
        sql(dsn, "INSERT INTO staff (login, role, school_id, token_sha256) VALUES ($1, $2, $3, $4)",
            login, role, school, token_sha256(token))
        tokens[login] = token
    return tokens


class Api:
    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.http = httpx.Client(base_url=url, timeout=30)

    def as_(self, login: str, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens.get(login, login)}"}
        return self.http.request(method, path, headers=headers, **kw)

    def close(self) -> None:
        self.http.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(PROCESS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(PROCESS_STOP_TIMEOUT_S)
    return proc.returncode


class StaffApiProcess:
    """``python -m staff_api serve`` on a free port against ``dsn``."""

    def __init__(self, dsn: str, log_path: Path) -> None:
        self.dsn, self.log_path = dsn, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StaffApiProcess":
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "staff_api", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--pg-dsn", self.dsn],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"staff API exited; see {self.log_path}"
            try:
                return httpx.get(f"{self.url}/schema/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, STAFF_API_START_TIMEOUT_S, "the staff API process to answer", interval_s=0.1)
        return self

    def close(self) -> None:
        _stop(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()


class BridgeProcess:
    """``python -m deskreader`` as the office runs it."""

    def __init__(self, staff_url: str, token: str, tmp: Path, *, reader: str = READER_00, desk: str = DESK) -> None:
        self.log_path = tmp / "deskreader.log"
        token_file = tmp / "bridge-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "ECARD_DESKREADER_DESK": desk, "ECARD_DESKREADER_TOKEN_FILE": str(token_file)}
        self.argv = [sys.executable, "-m", "deskreader", "--reader", reader, "--staff-url", staff_url,
                     "--context-retry-interval-ms", "300"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "BridgeProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout_s: float, *, count: int = 1) -> None:
        def seen() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"bridge exited:\n{self.log()}"
            return self.log().count(text) >= count

        try:
            wait_until(seen, timeout_s, f"{text!r} x{count} in the bridge's log", interval_s=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- bridge log ---\n{self.log()}") from None

    def stop(self) -> int | None:
        code = _stop(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        return code


def _pcscd_answers() -> bool:
    """Someone's pcscd listens on the machine-wide socket (a stale socket file does not count)."""
    if not PCSCD_SOCKET.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(PCSCD_SOCKET))
        except OSError:
            return False
    return True


class PcscLab:
    """pcscd with the vsmartcard virtual reader in a private network namespace, and cards.

    vpcd listens on 0.0.0.0:35963/35964 (fixed by reader.conf): in a namespace of its own,
    which has only ``lo``, nobody else can reach it. Clients (pyscard in the bridge) use
    pcscd's Unix socket /run/pcscd/pcscd.comm, which works from outside the namespace.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.netns = f"ecard-dr-{os.getpid()}-{secrets.token_hex(3)}"
        self.pcscd: subprocess.Popen | None = None
        self.cards: list[subprocess.Popen] = []
        self._netns_made = False
        self._lock_file = None
        shim = tmp / "shim"
        shim.mkdir(exist_ok=True)
        if not (shim / "Crypto").exists():  # vicc imports PyCrypto as Crypto; Debian ships Cryptodome
            (shim / "Crypto").symlink_to(CRYPTODOME_PATH)
        self.card_env = {**os.environ, "PYTHONPATH": f"{shim}:{VIRTUALSMARTCARD_PATH}", "PYTHONUNBUFFERED": "1"}
        self._pcscd_starts = 0

    def open(self) -> "PcscLab":
        self._lock_file = open(LAB_LOCK, "w")
        deadline = time.monotonic() + LAB_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another test run holds {LAB_LOCK} (pcscd is machine-wide)")
                time.sleep(0.2)
        if _pcscd_answers():
            pytest.skip(f"a pcscd not started by this test is running ({PCSCD_SOCKET}): stop it to run the PC/SC tests")
        made = subprocess.run(["ip", "netns", "add", self.netns], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make a network namespace for pcscd (needs root): {made.stderr.strip()}")
        self._netns_made = True
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        return self

    def start_pcscd(self) -> None:
        assert self.pcscd is None or self.pcscd.poll() is not None
        self._pcscd_starts += 1
        log_path = self.tmp / f"pcscd-{self._pcscd_starts}.log"
        with open(log_path, "ab") as log:
            # `ip netns exec` execs pcscd: the process is pcscd itself, stopped by its PID
            self.pcscd = subprocess.Popen(["ip", "netns", "exec", self.netns, "pcscd", "--foreground", "--debug"],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.pcscd is not None and self.pcscd.poll() is None, f"pcscd exited: {log_path.read_text()}"
            return "daemon ready" in log_path.read_text(errors="replace") and PCSCD_SOCKET.exists()

        wait_until(ready, PCSCD_START_TIMEOUT_S, "pcscd to be ready", interval_s=0.05)

    def kill_pcscd(self) -> None:
        """SIGKILL: a crash, as when the service is restarted under a running bridge."""
        assert self.pcscd is not None
        _stop(self.pcscd, signal.SIGKILL)

    def insert(self, uid_hex: str, port: int = VPCD_PORT_00) -> subprocess.Popen:
        """A card on the reader: the UID card process, connected to vpcd."""
        log_path = self.tmp / f"card-{uid_hex}-{len(self.cards)}.log"
        log = open(log_path, "ab")
        card = subprocess.Popen(["ip", "netns", "exec", self.netns, DEBIAN_PYTHON, str(UIDCARD), uid_hex, str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=self.card_env, start_new_session=True)
        log.close()
        self.cards.append(card)

        def connected() -> bool:
            assert card.poll() is None, f"card process exited: {log_path.read_text()}"
            return "Connected to virtual PCD" in log_path.read_text(errors="replace")

        wait_until(connected, CARD_START_TIMEOUT_S, f"card {uid_hex} to connect to vpcd", interval_s=0.05)
        return card

    def remove(self, card: subprocess.Popen) -> None:
        """The card taken off the reader: its process killed."""
        _stop(card, signal.SIGKILL)

    def close(self) -> None:
        for card in self.cards:
            _stop(card, signal.SIGKILL)
        _stop(self.pcscd)
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            self._netns_made = False
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


@pytest.fixture(scope="session")
def deskreader_deps():
    """pcscd, vsmartcard and pyscard installed (once a session), or the tests skipped."""
    from deskreader.install import InstallError, ensure

    try:
        ensure(log=lambda line: print(line, file=sys.stderr))
    except InstallError as exc:
        pytest.skip(f"desk reader PC/SC tests skipped: {exc}")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"desk reader PC/SC tests skipped: installing their dependencies failed: {exc!r}")
