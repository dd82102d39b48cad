"""The ceiling: a bare uvloop server that reads protocol v1 frames and decides nothing.

It checks what any server of this protocol must (start byte, length, CRC) and
answers HELLO with a constant pre-encoded HELLO_ACK and every other frame with
a constant pre-encoded DECISION (ACCEPT). Whatever Python + uvloop can do per
request at best is what this server does; ecard is measured against it.

    python -m loadtests.ceiling [--host 127.0.0.1] [--port 0]

prints "ceiling listening on HOST:PORT" once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from binascii import crc_hqx

from protocol import Decision, HelloAck, Nak, NakReason, encode_frame
from protocol.connection import CRC_INIT
from protocol.limits import CRC_BYTES, HEADER_BYTES, PAYLOAD_BYTES_MAX, START_BYTE

from .frames import CRC, T_HELLO

HELLO_ACK_FRAME = encode_frame(0, 0, HelloAck(0, 0, 10_000), reply=True)
DECISION_FRAME = encode_frame(0, 1, Decision(1, 1, 0, 0, 0, 0xFF, 1, ()), reply=True)
NAK_CRC_FRAME = encode_frame(0, 0, Nak(int(NakReason.BAD_CRC), "CRC mismatch"), reply=True)
NAK_FATAL_FRAME = encode_frame(0, 0, Nak(int(NakReason.BAD_START_BYTE), "framing lost"), reply=True)


class CeilingProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        while len(buf) >= HEADER_BYTES:
            length = buf[3] | buf[4] << 8
            if buf[0] != START_BYTE or length > PAYLOAD_BYTES_MAX:
                self.transport.write(NAK_FATAL_FRAME)  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
                return
            end = HEADER_BYTES + length + CRC_BYTES
            if len(buf) < end:
                break
            frame = buf[:end]
            buf = buf[end:]
            if CRC.unpack_from(frame, end - CRC_BYTES)[0] != crc_hqx(frame[: end - CRC_BYTES], CRC_INIT):
                out.append(NAK_CRC_FRAME)
            elif frame[13] == T_HELLO:
                out.append(HELLO_ACK_FRAME)
            else:
                out.append(DECISION_FRAME)
        self.buf = buf
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(CeilingProtocol, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ceiling listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.ceiling")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
