"""Start ecard on embedded defaults: PostgreSQL, the gateway (demo data on an empty
database), the embedded MQTT broker, the notifier and the outbox relay, the staff API,
the parents' API and USSD, the sandbox acquirer, the payments webhook and the auto top-up
worker. Ctrl-C stops them in reverse order, then the database: each part runs in a session of
its own, so the terminal's Ctrl-C reaches the launcher alone, which sends each part SIGTERM and
waits for it before the next. On Linux a part also gets SIGTERM when the launcher dies (even by
SIGKILL), so none outlives it.

    python -m launcher [--data-dir var]

Ports (loopback), each from an environment variable, the default in brackets:

    ECARD_LISTEN_PORT          devices (the gateway's listener)                    [7700]
    ECARD_METRICS_PORT         the gateway's Prometheus metrics                    [9108]
    ECARD_STAFF_API_PORT       the staff API and console                           [8800]
    ECARD_PAYMENTS_PORT        payments (webhook, top-ups)                         [8810]
    ECARD_SANDBOX_PORT         the sandbox acquirer                                [8900]
    ECARD_PARENTS_API_PORT     the parents' API, USSD and personal account pages   [8820]
    ECARD_MQTT_URL             a real MQTT broker instead of the embedded amqtt one (then none is
                               started; default mqtt://127.0.0.1:1884, beside a system Mosquitto)
    ECARD_RELAY_METRICS_PORT   the outbox relay's metrics                          [9109]

The gateway and the relay read their variables themselves; the launcher passes the rest on
the command lines it starts. No secret goes on a command line (another user of the machine can
read every process's argv): the webhook secret reaches payments and the sandbox acquirer in
ECARD_WEBHOOK_SECRET. What the notifier sent is written under <data-dir>/sent/<channel>/. A
first operator token is written to <data-dir>/operator-token.txt.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# How long a part may take to start before the launcher gives up on it.
START_TIMEOUT_S = 120.0
# How long a part may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0
HOST = "127.0.0.1"  # every part listens on loopback only
# (environment variable, default): the ports the launcher itself hands out (the module docstring)
STAFF_API_PORT = ("ECARD_STAFF_API_PORT", 8800)
PAYMENTS_PORT = ("ECARD_PAYMENTS_PORT", 8810)
SANDBOX_PORT = ("ECARD_SANDBOX_PORT", 8900)
PARENTS_API_PORT = ("ECARD_PARENTS_API_PORT", 8820)
DEVICES_PORT = ("ECARD_LISTEN_PORT", 7700)  # read by the gateway itself (gateway.config)
METRICS_PORT = ("ECARD_METRICS_PORT", 9108)  # likewise


def port(setting: tuple[str, int], env: dict[str, str] | None = None) -> int:
    """A port from its environment variable, or its default."""
    name, default = setting
    text = (os.environ if env is None else env).get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 65_535:
        raise SystemExit(f"{name}={text!r} is not a TCP port (1..65535)")
    return int(text)


def _die_with_launcher(launcher_pid: int):
    """A preexec_fn for Part's children (Linux): the kernel sends the child SIGTERM when the
    launcher dies, even by SIGKILL, so no part outlives it (each in its own session, none would
    get the terminal's Ctrl-C either). Elsewhere None: a part outlives a killed launcher there."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1  # <linux/prctl.h>

    # The signal comes when the thread that started the child ends: Parts start on the main thread.
    def preexec() -> None:  # in the child, between fork and exec: no locks, no output
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
            os._exit(1)

    return preexec


class Part:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: str | None = None) -> None:
        self.name = name
        # Each part in its own session: a terminal's Ctrl-C (SIGINT to the whole foreground
        # process group) reaches the launcher alone, which stops the parts in reverse order
        # (stop()). The parts started after one may need it to the end (the relay and the
        # notifier the broker; everything the database), so none may stop on its own.
        self.proc = subprocess.Popen(
            [sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_launcher(os.getpid()),
        )
        self.ready = threading.Event()
        self._pump = threading.Thread(target=self._pump_output, args=(ready,), daemon=True)
        self._pump.start()

    def _pump_output(self, ready: str | None) -> None:
        if ready is None:
            self.ready.set()
        for line in iter(self.proc.stdout.readline, b""):  # type: ignore[union-attr]
            text = line.decode(errors="replace")
            if ready is not None and ready in text:
                self.ready.set()
            sys.stdout.write(f"[{self.name}] {text}")
            sys.stdout.flush()
        self.ready.set()

    def wait_ready(self, stop: threading.Event) -> None:
        """Until the part says it is ready; Interrupted if the launcher is told to stop first."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready.wait(0.1):
            if stop.is_set():
                raise Interrupted
            if time.monotonic() > deadline:
                break
        if not self.ready.is_set() or self.proc.poll() is not None:
            raise SystemExit(f"{self.name} did not start (exit code {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"[launcher] {self.name} did not stop within {STOP_TIMEOUT_S:g} s; killed", flush=True)
                self.proc.kill()
                self.proc.wait()
        self._pump.join(5.0)  # its last lines before the next part's first
        print(f"[launcher] {self.name} stopped{ending(self.proc.returncode)}", flush=True)


def ending(code: int) -> str:
    """How a part's process ended, for "<name> stopped...": by a signal, or with an exit code."""
    if code == 0:
        return ""
    if code < 0:
        try:
            return f" by {signal.Signals(-code).name}"
        except ValueError:
            return f" by signal {-code}"
    return f" with exit code {code}"


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while the parts were starting."""


def secret_file(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def start_mqtt(parts: list[Part], env: dict[str, str], stop: threading.Event) -> str:
    """The MQTT broker (embedded, unless ECARD_MQTT_URL names one), the notifier and the
    outbox relay, each in its own process; returns where they are, for the banner."""
    from notifier.app import READY_LINE as NOTIFIER_READY
    from notifier.config import load_config as notifier_config
    from relay.app import READY_LINE as RELAY_READY
    from relay.broker import READY_LINE as BROKER_READY
    from relay.config import ConfigError, broker, load_config

    try:
        config = load_config(env=env)
    except ConfigError as exc:
        raise SystemExit(f"relay configuration: {exc}") from None
    try:
        sent = notifier_config(env=env).sent_path
    except ConfigError as exc:
        raise SystemExit(f"notifier configuration: {exc}") from None
    target = broker(config)
    if target.embedded:
        mqtt_broker = Part(
            "mqtt", ["-m", "relay", "broker", "--host", target.host, "--port", str(target.port)], env, ready=BROKER_READY
        )
        parts.append(mqtt_broker)
        mqtt_broker.wait_ready(stop)
    # The notifier subscribes before the relay publishes: on a fresh broker, events published
    # before its first subscription would be lost (the relay marks them sent on PUBACK).
    notifier = Part("notifier", ["-m", "notifier"], env, ready=NOTIFIER_READY)
    parts.append(notifier)
    notifier.wait_ready(stop)
    # The embedded broker (amqtt) speaks MQTT 3.1.1 only: the relay need not try 5 first (amqtt
    # logs every such try as an invalid connection).
    relay_env = {**env, "ECARD_RELAY_MQTT_PROTOCOL": env.get("ECARD_RELAY_MQTT_PROTOCOL", "3.1.1")} \
        if target.embedded else env
    relay = Part("relay", ["-m", "relay", "run"], relay_env, ready=RELAY_READY)
    parts.append(relay)
    relay.wait_ready(stop)
    return (
        f"MQTT {target.url}{' (embedded amqtt)' if target.embedded else ''} with the parents' notices under "
        f"{config.topic_prefix}/events/# (relay metrics http://{config.metrics_host}:{config.metrics_port}/metrics); "
        + (f"what the notifier sent is under {sent / '<channel>'}/" if sent is not None
           else "the notifier keeps no copies of what it sent")
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("ECARD_DATA_DIR", "var"))
    args = parser.parse_args()
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # The parts run in sessions of their own (Part): a Ctrl-C reaches this process alone, which
    # then stops them in reverse order. Set before anything starts, so that a Ctrl-C while the
    # parts start stops those already running too.
    stop = threading.Event()
    # SIGHUP too: a closed terminal stops ecard in order, as Ctrl-C does.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    from storage import database

    dsn = os.environ.get("ECARD_PG_DSN", "")
    embedded = not dsn
    if embedded:
        dsn = database.start_embedded(data_dir)
    webhook_secret = secret_file(data_dir / "webhook-secret.txt")
    staff_port, payments_port, sandbox_port, parents_port = (
        port(STAFF_API_PORT), port(PAYMENTS_PORT), port(SANDBOX_PORT), port(PARENTS_API_PORT))
    devices_port, metrics_port = port(DEVICES_PORT), port(METRICS_PORT)
    env = {
        **os.environ,
        "ECARD_PG_DSN": dsn,
        "ECARD_DATA_DIR": str(data_dir),
        "ECARD_WEBHOOK_SECRET": webhook_secret,
        "ECARD_ACQUIRER_URL": f"http://{HOST}:{sandbox_port}",
        "ECARD_PAYMENTS_PUBLIC_URL": f"http://{HOST}:{payments_port}",
        # a top-up's return_url points to the parents' pages, wherever they listen
        "ECARD_PAYMENTS_RETURN_ORIGINS": os.environ.get("ECARD_PAYMENTS_RETURN_ORIGINS", f"http://{HOST}:{parents_port}"),
        "PYTHONUNBUFFERED": "1",
    }
    parts: list[Part] = []
    failed = False
    try:
        gateway = Part("gateway", ["-m", "gateway", "run", "--demo"], env, ready="ecard gateway listening")
        parts.append(gateway)
        gateway.wait_ready(stop)  # migrations and demo data are in place now
        token_path = data_dir / "operator-token.txt"
        if not token_path.exists():
            token = subprocess.run(
                [sys.executable, "-m", "staff_api", "create-staff", "--login", "operator", "--role", "operator"],
                env=env, capture_output=True, text=True, check=True, timeout=START_TIMEOUT_S,
                start_new_session=True,  # a Ctrl-C meanwhile is the launcher's (it stops after this)
            ).stdout.strip().split()[-1]
            token_path.write_text(token + "\n")
            token_path.chmod(0o600)
        mqtt = start_mqtt(parts, env, stop)
        # Started together, each then waited for (the line it prints once it listens): the
        # banner below is printed when every part is up.
        uvicorn_ready = "Uvicorn running on"  # uvicorn.run's log line (log_level info)
        rest = [
            Part(name, argv, env, ready=ready) for name, argv, ready in (
                ("staff-api", ["-m", "staff_api", "serve", "--host", HOST, "--port", str(staff_port)], uvicorn_ready),
                # payments and the sandbox acquirer read ECARD_WEBHOOK_SECRET themselves: no secret on an argv
                ("acquirer", ["-m", "payments.sandbox", "--host", HOST, "--port", str(sandbox_port)],
                 "sandbox acquirer listening"),
                ("payments", ["-m", "payments", "serve", "--host", HOST, "--port", str(payments_port)],
                 "payments listening"),
                ("autotopup", ["-m", "payments", "autotopup", "--interval-s", "30"], None),
                ("parents-api", ["-m", "parents_api", "--host", HOST, "--port", str(parents_port), "--sent-dir",
                                 str(data_dir / "sent"), "--payments-url", f"http://{HOST}:{payments_port}"],
                 uvicorn_ready),
            )
        ]
        parts.extend(rest)
        for part in rest:
            part.wait_ready(stop)
        print(
            f"ecard is running: devices {HOST}:{devices_port}, metrics http://{HOST}:{metrics_port}/metrics, "
            f"staff API http://{HOST}:{staff_port} (operator token in {token_path}), payments "
            f"http://{HOST}:{payments_port}, sandbox acquirer http://{HOST}:{sandbox_port}, parents' pages, API and "
            f"USSD http://{HOST}:{parents_port} (one-time codes written under {data_dir / 'sent'}), {mqtt}. "
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stop.is_set():
            for part in parts:
                if part.proc.poll() is not None:
                    print(f"[launcher] {part.name} exited with {part.proc.returncode}; stopping", flush=True)
                    failed = True
                    stop.set()
            stop.wait(1.0)
    except Interrupted:
        print("[launcher] stopping before everything started", flush=True)
    finally:
        for part in reversed(parts):
            part.stop()
        if embedded:
            database.stop_embedded(data_dir)
    return 1 if failed else 0  # a part that stopped on its own is a failure of `make run`


if __name__ == "__main__":
    sys.exit(main())
