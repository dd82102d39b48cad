"""A virtual contactless card that answers GET UID (``FF CA 00 00 00``) with its UID.

Run with the Debian Python (``/usr/bin/python3``) on the vsmartcard library, with the
``Crypto`` shim on PYTHONPATH (docs/desk-reader.md, /work/shared/COMPONENTS.md §1):

    PYTHONPATH=<shim>:/usr/lib/python3/site-packages/virtualsmartcard \\
        /usr/bin/python3 uidcard.py 04A1B2C3D4E5F6 [vpcd port, 35963 = reader "Virtual PCD 00 00"]

The card is "inserted" while this process runs and "removed" when it exits. The stock
``vicc`` crashes on ``FF CA`` (CLA FF is taken for secure messaging), so GET UID is
answered here and every other APDU goes to the stock ISO 7816 card, whose Python 3 bugs
are caught and answered 6D00 (instruction not supported) instead of killing the card.
"""

import logging
import sys

from virtualsmartcard.VirtualSmartcard import VirtualICC

GET_UID_HEADER = b"\xff\xca\x00\x00"
SW_OK = b"\x90\x00"
SW_INS_NOT_SUPPORTED = b"\x6d\x00"


class UidOS:
    def __init__(self, inner, uid: bytes) -> None:
        self.inner, self.uid = inner, uid

    def execute(self, msg: bytes) -> bytes:
        if msg[:4] == GET_UID_HEADER:
            return self.uid + SW_OK
        try:
            return self.inner.execute(msg)
        except Exception as exc:  # the stock card's Python 3 bugs: answer, do not die
            logging.warning("APDU %s failed: %r", msg.hex(), exc)
            return SW_INS_NOT_SUPPORTED

    def __getattr__(self, name):  # powerUp, powerDown, reset, getATR
        return getattr(self.inner, name)


def main() -> None:
    uid = bytes.fromhex(sys.argv[1])
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 35963
    card = VirtualICC(None, "iso7816", "127.0.0.1", port, logginglevel=logging.INFO)
    card.os = UidOS(card.os, uid)
    print(f"uidcard {uid.hex().upper()} on vpcd port {port}", flush=True)
    card.run()


if __name__ == "__main__":
    main()
