"""Test support: databases per test, gateway processes, waiting on conditions.

Nothing here sleeps blindly: every wait polls a condition with a deadline.
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
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on [\d.]+:(\d+), metrics on http://[\d.]+:(\d+)/metrics")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


async def async_wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


class GatewayProcess:
    """``python -m gateway run`` in a subprocess on free ports, against ``dsn``."""

    def __init__(self, dsn: str, log_path: Path, **env: str) -> None:
        self.dsn = dsn
        self.log_path = log_path
        self.env = {
            **os.environ,
            "ECARD_PG_DSN": dsn,
            "ECARD_LISTEN_PORT": "0",
            "ECARD_METRICS_PORT": "0",
            "ECARD_PROGRESS_INTERVAL_MS": "0",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0

    def start(self, timeout_s: float = 60.0) -> "GatewayProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while True:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"gateway did not start within {timeout_s} s; see {self.log_path}")
            line = self.proc.stdout.readline().decode()
            if not line:
                code = self.proc.wait(timeout=10)
                raise RuntimeError(f"gateway exited with {code} before listening; see {self.log_path}")
            m = _LISTENING.search(line)
            if m:
                self.port, self.metrics_port = int(m.group(1)), int(m.group(2))
                break
        # Keep draining stdout so the gateway never blocks on a full pipe.
        import threading

        self._drainer = threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True)
        self._drainer.start()
        return self

    def _close_log(self) -> None:
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            drainer.join(10)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def _drain(self, stream) -> None:
        for line in iter(stream.readline, b""):
            self._log.write(line)
            self._log.flush()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close_log()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM: the ordered shutdown."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        self._close_log()
        return code

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


class TcpProxy:
    """A TCP proxy the test controls, in its own thread: cut and restore connectivity.

    ``upstream`` is (host, port) or a Unix socket path (the embedded PostgreSQL
    listens on a socket only). While cut, open connections are dropped and new
    ones are closed as soon as they arrive.
    """

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        import threading

        self.upstream = upstream
        self.port = 0
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TcpProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("proxy did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(main())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            if isinstance(self.upstream, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def _on_proxy_thread(self, fn) -> None:
        """Run ``fn`` on the proxy's loop and return once it has run: a cut is in force when cut() returns."""
        import concurrent.futures

        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as exc:  # pragma: no cover - surfaced to the caller
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        done.result(10)

    def cut(self) -> None:
        def do() -> None:
            self._cut = True
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self._on_proxy_thread(do)

    def restore(self) -> None:
        self._on_proxy_thread(lambda: setattr(self, "_cut", False))

    def close(self) -> None:
        def do() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            self._loop.stop()

        self._loop.call_soon_threadsafe(do)
        self._thread.join(10)


def pg_upstream(dsn: str) -> tuple[tuple[str, int] | str, str]:
    """Where a DSN's server listens (for TcpProxy) and its database name."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(dsn)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    port = parts.port or 5432
    upstream: tuple[str, int] | str = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
    return upstream, parts.path.lstrip("/")


def proxied_dsn(dsn: str, proxy_port: int) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    return f"postgresql://{user}@127.0.0.1:{proxy_port}{parts.path}"


class Clock:
    """A clock the test sets (``fixed_ms``), or the wall clock while it is None."""

    def __init__(self, fixed_ms: int | None = None) -> None:
        self.fixed_ms = fixed_ms

    def __call__(self) -> int:
        return self.fixed_ms if self.fixed_ms is not None else time.time_ns() // 1_000_000


class ThreadServer:
    """An ASGI app under uvicorn in a background thread on a free loopback port."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def start(self) -> "ThreadServer":
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 20, "uvicorn to start")
        assert self.server.started, "uvicorn failed to start"
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "uvicorn did not stop"


# A child process of a test (a broker, the relay, the notifier) prints its ready line within
# this, even on a loaded CI machine; past it, it is hung.
PROCESS_START_TIMEOUT_S = 30.0


class LoggedProcess:
    """A child process whose output goes to a log file (read for its ready line first)."""

    proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict[str, str], log_path: Path, ready: str | None) -> str:
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        line = ""
        if ready is not None:
            deadline = time.monotonic() + PROCESS_START_TIMEOUT_S
            while ready not in line:
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(f"{argv[:4]} did not start within {PROCESS_START_TIMEOUT_S} s; see {log_path}")
                raw = self.proc.stdout.readline()
                if not raw:
                    code = self.proc.wait(timeout=10)
                    raise RuntimeError(f"{argv[:4]} exited with {code} before it was ready; see {log_path}")
                self._log.write(raw)
                self._log.flush()
                line = raw.decode(errors="replace")
        self._drainer = threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True)
        self._drainer.start()
        return line

    def _drain(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self._log.write(raw)
            self._log.flush()

    def _close_log(self) -> None:
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            drainer.join(10)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: nothing flushed, nothing acknowledged."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close_log()

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode


# How long the gateway thread may take to start (migrations, the load) and to stop.
GATEWAY_THREAD_START_S = 60.0
# The gateway listens for change notifications within this after it started.
GATEWAY_LISTEN_S = 10.0


class GatewayThread:
    """The real gateway (tests.gateway.test_gateway.running_gateway) on its own event loop in a
    thread: for tests whose own thread is taken (a browser's sync API owns its loop). ``gateway``
    is the running Gateway once entered; it listens for changes before the test goes on."""

    def __init__(self, dsn: str, **overrides) -> None:
        from simulators.crash import free_port

        self.dsn, self.port, self.overrides = dsn, free_port(), overrides
        self.gateway = None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        from tests.gateway.test_gateway import running_gateway

        async def main():
            async with running_gateway(self.dsn, listen_port=self.port, **self.overrides) as gateway:
                deadline = time.monotonic() + GATEWAY_LISTEN_S
                while not gateway.commands.connected and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)  # listening for changes before anything changes
                self.gateway = gateway
                self._ready.set()
                while not self._stop.is_set():
                    await asyncio.sleep(0.05)
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001  re-raised in the test
            self._error = exc
            self._ready.set()

    def __enter__(self) -> "GatewayThread":
        self._thread.start()
        assert self._ready.wait(GATEWAY_THREAD_START_S), "the gateway did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(GATEWAY_THREAD_START_S)
