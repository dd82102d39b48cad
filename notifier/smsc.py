"""An SMSC simulator: the SMPP 3.4 server of the ``smpp34`` package (PyPI).

``make run`` starts one inside the notifier when no ``smpp_url`` is named (like the SMTP
sink); the tests start it as a process of its own: ``python -m notifier.smsc --port N``,
which prints one JSON line per submit_sm it accepted (source, destination, esm_class,
data_coding, short_message in hex, the message id it gave) so that a test can read what
reached the SMSC.

It accepts any bind (smpp34's Server has no bind-authentication hook), answers every
submit_sm with a message id ``MSGnnnnnn`` and, when the submit asked for one
(registered_delivery & 1) and the session can receive, sends a ``stat:DELIVRD`` delivery
receipt (deliver_sm, esm_class 0x04).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import time
from typing import Callable

import smpp34

log = logging.getLogger("ecard.notifier.smsc")


class SubmitRecord(dict):
    """One accepted submit_sm, as a plain dict (JSON-able)."""


class SmscSimulator:
    def __init__(self, host: str, port: int, *, on_submit: Callable[[dict], None] | None = None,
                 receipts: bool = True) -> None:
        self.host = host
        self.port = port
        self.on_submit = on_submit
        self.receipts = receipts
        self.server = smpp34.Server(host=host, port=port, system_id="ECARDSIM")
        self._ids = itertools.count(1)
        self._sessions: dict[str, object] = {}
        self._task: asyncio.Task | None = None
        self.submitted = 0

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.create_task(self._serve(), name="smsc-simulator")

    async def _serve(self) -> None:
        while True:
            event = await self.server.next()
            if isinstance(event, smpp34.Esme):
                self._sessions[event.session_id] = event
            elif isinstance(event, smpp34.SubmitSmEvent):
                mid = "MSG%06d" % next(self._ids)
                event.accept(message_id=mid)
                self.submitted += 1
                record = {
                    "at": time.time(), "message_id": mid, "source": event.source_addr, "destination": event.destination_addr,
                    "esm_class": event.esm_class, "data_coding": event.data_coding,
                    "registered_delivery": event.registered_delivery, "short_message": bytes(event.short_message).hex(),
                }
                if self.on_submit is not None:
                    self.on_submit(record)
                esme = self._sessions.get(event.session_id)
                if self.receipts and event.registered_delivery & 1 and esme is not None and esme.can_receive:
                    receipt = (f"id:{mid} sub:001 dlvrd:001 submit date:2601010000 done date:2601010000 "
                               f"stat:DELIVRD err:000 text:").encode()
                    try:
                        await esme.deliver_sm(source_addr=event.destination_addr, destination_addr=event.source_addr,
                                              esm_class=0x04, short_message=receipt)
                    except Exception as exc:  # the session went away: the receipt is lost, as with a real SMSC
                        log.warning("receipt for %s not delivered: %s", mid, exc)
            else:  # Unbound
                self._sessions.pop(getattr(event, "session_id", None), None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.server.stop()


async def _main(host: str, port: int, receipts: bool) -> None:
    def printed(record: dict) -> None:
        print(json.dumps(record), flush=True)

    sim = SmscSimulator(host, port, on_submit=printed, receipts=receipts)
    await sim.start()
    print(json.dumps({"listening": port}), flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier.smsc", description="SMSC simulator (smpp34)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2775)
    parser.add_argument("--no-receipts", action="store_true")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.host, args.port, not args.no_receipts))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
