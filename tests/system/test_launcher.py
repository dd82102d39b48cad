"""`make run` (python -m launcher) and its Ctrl-C: the terminal sends SIGINT to the whole
foreground process group; the launcher alone must get it and stop the parts in reverse start
order (the gateway last of the parts: stop accepting, flush the journal, close; the MQTT broker
after the relay and the notifier that use it), each quietly, leaving no process and no port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from simulators.crash import free_port
from tests.support import ROOT, wait_until

pytestmark = [pytest.mark.processes]

START_TIMEOUT_S = 90.0  # nine processes importing at once on two shared cores, the demo data loaded
STOP_TIMEOUT_S = 60.0
# The launcher's parts in start order (launcher/__main__.py); they stop in the reverse one.
START_ORDER = ("gateway", "mqtt", "notifier", "relay", "staff-api", "acquirer", "payments", "autotopup", "parents-api")
BANNER = "ecard is running"

# Every port a part listens on, by the variable that moves it (launcher, gateway.config,
# relay.config, notifier.config): each gets a free one, so the test never meets a `make run`.
PORT_VARIABLES = (
    "ECARD_LISTEN_PORT",              # the gateway's devices [7700]
    "ECARD_METRICS_PORT",             # the gateway's metrics [9108]
    "ECARD_STAFF_API_PORT",           # [8800]
    "ECARD_PAYMENTS_PORT",            # [8810]
    "ECARD_SANDBOX_PORT",             # the sandbox acquirer [8900]
    "ECARD_PARENTS_API_PORT",         # [8820]
    "ECARD_RELAY_METRICS_PORT",       # [9109]
    "ECARD_NOTIFIER_METRICS_PORT",    # [9110]
    "ECARD_NOTIFIER_SMTP_SINK_PORT",  # the embedded SMTP sink [8025]
    "ECARD_NOTIFIER_SMSC_SIM_PORT",   # the embedded SMSC simulator [2775]
    "ECARD_RELAY_BROKER_PORT",        # the embedded MQTT broker [1884], as the relay (and the launcher) see it
)


def launcher_env(dsn: str, data_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(PORT_VARIABLES):
        ports = {name: free_port() for name in PORT_VARIABLES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECARD_")}  # no named broker, SMTP, ...
    env.update({name: str(p) for name, p in ports.items()})
    env.update({
        "ECARD_NOTIFIER_BROKER_PORT": str(ports["ECARD_RELAY_BROKER_PORT"]),  # the notifier's view of the same broker
        "ECARD_PG_DSN": dsn,
        "ECARD_DATA_DIR": str(data_dir),
        "ECARD_PROGRESS_INTERVAL_MS": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env, ports


class Launcher:
    """python -m launcher in a session of its own (a terminal's foreground process group), its
    output in a file."""

    def __init__(self, dsn: str, tmp_path: Path) -> None:
        self.env, self.ports = launcher_env(dsn, tmp_path / "data")
        self.log_path = tmp_path / "launcher.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher", "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.children: list[psutil.Process] = []

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_running(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the launcher exited with {self.proc.returncode}:\n{self.output()}")
            return BANNER in self.output()

        wait_until(up, START_TIMEOUT_S, "the launcher's banner", interval_s=0.2)
        self.children = psutil.Process(self.proc.pid).children(recursive=True)

    def listening_ports(self) -> set[int]:
        ports = set()
        for child in self.children:
            for conn in child.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    ports.add(conn.laddr.port)
        return ports

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for child in self.children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie not yet reaped by its new parent is not)."""
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def port_free(port: int) -> bool:
    """Nothing listens on it (a connection in TIME_WAIT does not count, as for a restarted server)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_ctrl_c_stops_the_parts_in_reverse_order_quietly(pg_dsn, tmp_path):
    launcher = Launcher(pg_dsn, tmp_path)
    try:
        launcher.wait_running()
        names = [" ".join(c.cmdline()[1:4]) for c in launcher.children]
        assert len(launcher.children) == len(START_ORDER), names
        # Every part runs, on the ports it was given and no other (no fixed port left).
        wait_until(lambda: launcher.listening_ports() == set(launcher.ports.values()), 30,
                   f"the parts listening on {sorted(launcher.ports.values())}", interval_s=0.2)
        # Each part in a process group (session) of its own: a Ctrl-C is the launcher's alone.
        assert all(os.getpgid(c.pid) == c.pid for c in launcher.children)

        signaled_at = len(launcher.output())
        os.killpg(launcher.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole foreground group
        assert launcher.proc.wait(STOP_TIMEOUT_S) == 0
        out = launcher.output()
    finally:
        launcher.close()

    assert "Traceback" not in out, out
    assert "Future exception was never retrieved" not in out, out
    assert "Invalid protocol" not in out, out  # the relay speaks 3.1.1 to the embedded amqtt at once
    assert "did not stop" not in out, out
    shutdown = out[signaled_at:].splitlines()
    # No part lost its broker while it still ran (the relay and the notifier log the disconnect).
    assert not [line for line in shutdown if "Disconnected" in line or "ERROR" in line], out

    stopped = [m.group(1) for m in map(re.compile(r"^\[launcher\] (\S+) stopped").match, shutdown) if m]
    assert stopped == list(reversed(START_ORDER)), out
    # Each stopped as it is told: exit code 0 or the SIGTERM it was sent (uvicorn's parts, the worker).
    assert all(re.fullmatch(r"\[launcher\] \S+ stopped( by SIGTERM)?", line)
               for line in shutdown if line.startswith("[launcher] ") and " stopped" in line), out

    def at(prefix: str, text: str = "") -> int:
        return next(i for i, line in enumerate(shutdown) if line.startswith(prefix) and text in line)

    # The gateway's ordered shutdown began after every other part was gone, the broker after
    # the relay and the notifier.
    gateway_down = at("[gateway] ", "shutting down")
    assert gateway_down > at("[launcher] mqtt stopped") > at("[launcher] notifier stopped") > at("[launcher] relay stopped")
    assert at("[relay] ", "relay stopped") < at("[launcher] relay stopped")
    assert gateway_down < at("[launcher] gateway stopped")
    # The banner names the data directory given, not ./var.
    banner = next(line for line in out.splitlines() if line.startswith(BANNER))
    assert f"what the notifier sent is under {tmp_path / 'data' / 'sent' / '<channel>'}/" in banner, banner

    assert not alive(launcher.children)  # the launcher waited for each
    wait_until(lambda: all(port_free(p) for p in launcher.ports.values()), 10, "every port free")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_parts_do_not_outlive_a_killed_launcher(pg_dsn, tmp_path):
    """In their own sessions the parts get no Ctrl-C; a launcher SIGKILLed cannot stop them
    either: the kernel sends each SIGTERM when the launcher dies (PR_SET_PDEATHSIG)."""
    launcher = Launcher(pg_dsn, tmp_path)
    try:
        launcher.wait_running()
        assert len(launcher.children) == len(START_ORDER)
        launcher.proc.kill()  # the launcher alone, not its group
        launcher.proc.wait(10)
        wait_until(lambda: not alive(launcher.children), STOP_TIMEOUT_S, "every part gone after its launcher",
                   interval_s=0.2)
        wait_until(lambda: all(port_free(p) for p in launcher.ports.values()), 10, "every port free")
    finally:
        launcher.close()
