"""The I/O loop: pcscd through pyscard's ``smartcard.scard``, driven by ``Supervisor``.

One thread, one PC/SC context at a time, every call bounded: ``SCardGetStatusChange``
with ``status_timeout_ms``, the retry waits on the stop event. pyscard's CardMonitor is not
used: its thread dies for good on a pcscd restart (deskreader.supervisor).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from smartcard import scard

from . import apdu
from .supervisor import SCARD_S_SUCCESS, Do, Step, Supervisor

log = logging.getLogger("deskreader")

# SCardConnect: shared (another application may hold the reader too, e.g. pcsc_scan), any of
# T=0 and T=1 (contactless readers present their cards as T=1; the virtual reader as T=0/1).
SHARE_MODE = scard.SCARD_SHARE_SHARED
PREFERRED_PROTOCOLS = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1


def _code(value: int) -> int:
    return value & 0xFFFFFFFF


class ReaderLoop:
    """Watches one reader; ``on_uid(uid)`` is called (on this loop's thread) for each card read."""

    def __init__(self, supervisor: Supervisor, status_timeout_ms: int, on_uid: Callable[[bytes], None],
                 stop: threading.Event) -> None:
        self.supervisor = supervisor
        self.status_timeout_ms = status_timeout_ms
        self.on_uid = on_uid
        self.stop = stop
        self.context: int | None = None

    def run(self) -> None:
        step = self.supervisor.start()
        try:
            while not self.stop.is_set():
                if step.note:
                    log.info("%s", step.note)
                if step.delay_ms and self.stop.wait(step.delay_ms / 1000):
                    break
                step = self._do(step)
        finally:
            self._release()

    def _do(self, step: Step) -> Step:
        sup = self.supervisor
        if step.do is Do.ESTABLISH:
            self._release()
            code, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if _code(code) == SCARD_S_SUCCESS:
                self.context = context
            return sup.on_establish(code)
        assert self.context is not None, f"{step.do} without a context"
        if step.do is Do.FIND_READER:
            code, names = scard.SCardListReaders(self.context, [])
            return sup.on_readers(code, names if _code(code) == SCARD_S_SUCCESS else [])
        if step.do is Do.WAIT:
            assert sup.reader is not None
            code, states = scard.SCardGetStatusChange(self.context, self.status_timeout_ms,
                                                      [(sup.reader, sup.known_state)])
            event_state = states[0][1] if states else 0
            return sup.on_status(code, event_state)
        assert step.do is Do.READ_UID
        return self._read()

    def _read(self) -> Step:
        sup = self.supervisor
        assert sup.reader is not None
        code, card, protocol = scard.SCardConnect(self.context, sup.reader, SHARE_MODE, PREFERRED_PROTOCOLS)
        if _code(code) != SCARD_S_SUCCESS:
            return sup.on_read(code)
        try:
            code, response = scard.SCardTransmit(card, protocol, list(apdu.GET_UID_APDU))
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
        if _code(code) != SCARD_S_SUCCESS:
            return sup.on_read(code)
        try:
            answer = apdu.parse_uid_response(response)
        except apdu.ApduError as exc:
            return sup.on_read(SCARD_S_SUCCESS, f"card not read on {sup.reader!r}: {exc}")
        log.info("card %s on %r (GET UID %s -> SW %04X)", apdu.format_uid(answer.uid), sup.reader,
                 apdu.format_hex(apdu.GET_UID_APDU), answer.sw)
        self.on_uid(answer.uid)
        return sup.on_read(SCARD_S_SUCCESS)

    def _release(self) -> None:
        if self.context is not None:
            scard.SCardReleaseContext(self.context)  # fails harmlessly on a context pcscd forgot
            self.context = None
