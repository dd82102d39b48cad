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

        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _drain(self, stream) -> None:
        for line in iter(stream.readline, b""):
            self._log.write(line)
            self._log.flush()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM: the ordered shutdown."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()
