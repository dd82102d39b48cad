"""The bridge: the reader loop on its thread, each UID posted to the staff API, ordered stop."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from . import apdu
from .config import DeskReaderConfig
from .staff import StaffClient
from .supervisor import Supervisor

log = logging.getLogger("deskreader")

# A stop request ends the loop within one status_timeout_ms (or one HTTP attempt in flight):
# waiting longer than this for the thread means it is stuck in a call that ignores its
# timeout, and the process exits without it.
STOP_JOIN_TIMEOUT_S = 10.0


def run(config: DeskReaderConfig) -> int:
    from .pcsc import ReaderLoop  # pyscard: imported only when a reader is really watched

    token = config.token()
    stop = threading.Event()
    staff = StaffClient(config, token, stop)

    def on_uid(uid: bytes) -> None:
        posted = staff.post_uid(apdu.format_uid(uid))
        log.info("uid %s -> desk %r: %s (attempts %d)", apdu.format_uid(uid), config.desk, posted.summary,
                 posted.attempts)

    supervisor = Supervisor(config.reader, retry_interval_ms=config.context_retry_interval_ms)
    loop = ReaderLoop(supervisor, config.status_timeout_ms, on_uid, stop)
    thread = threading.Thread(target=loop.run, name="deskreader-pcsc", daemon=True)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("desk %r, reader %r, staff API %s, context retry every %d ms", config.desk, config.reader,
             config.staff_url, config.context_retry_interval_ms)
    thread.start()
    while thread.is_alive() and not stop.wait(1.0):
        pass
    stop.set()
    thread.join(STOP_JOIN_TIMEOUT_S)
    staff.close()
    if thread.is_alive():
        log.error("the reader loop did not stop within %.0f s", STOP_JOIN_TIMEOUT_S)
        return 1
    log.info("stopped")
    return 0


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s deskreader: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # each UID's outcome is logged once, by on_uid
