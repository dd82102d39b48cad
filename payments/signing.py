"""Webhook signatures, Stripe style.

Header ``X-Sandbox-Signature: t=<unix seconds>,v1=<hex>`` where
``hex = HMAC-SHA256(secret, "<t>.<raw body>")``. Several ``v1`` entries may be
present (secret rotation); one matching is enough. The timestamp is part of the
signed text, so a captured request cannot be replayed after the tolerance.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Sandbox-Signature"
# A signed request older (or further in the future) than this is refused: it bounds
# the replay window and tolerates ordinary clock skew between acquirer and ecard.
SIGNATURE_TOLERANCE_S = 300
# A header longer than this is malformed (a few v1 entries fit easily).
SIGNATURE_HEADER_BYTES_MAX = 1024


class SignatureError(Exception):
    """The request is not authentic. ``malformed``: header missing or unparsable (HTTP 400);
    otherwise the signature does not match or the timestamp is out of tolerance (HTTP 401)."""

    def __init__(self, message: str, malformed: bool) -> None:
        super().__init__(message)
        self.malformed = malformed


def compute(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={compute(secret, timestamp, body)}"


def verify(secret: str, header: str | None, body: bytes, now_s: float,
           tolerance_s: int = SIGNATURE_TOLERANCE_S) -> int:
    """Check ``header`` against ``body``; return the signed timestamp or raise SignatureError."""
    if not header:
        raise SignatureError("missing signature header", malformed=True)
    if len(header) > SIGNATURE_HEADER_BYTES_MAX:
        raise SignatureError("signature header too long", malformed=True)
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed signature header", malformed=True)
        if key == "t":
            # ASCII only: str.isdigit() also takes "²" and other scripts' digits, which int() refuses.
            if not (value.isascii() and value.isdigit()) or timestamp is not None:
                raise SignatureError("malformed signature timestamp", malformed=True)
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("signature header lacks t or v1", malformed=True)
    if abs(now_s - timestamp) > tolerance_s:
        raise SignatureError("signature timestamp outside tolerance", malformed=False)
    expected = compute(secret, timestamp, body).encode()
    ok = False
    for candidate in candidates:
        # Constant time; check every candidate so timing does not reveal which matched.
        ok |= hmac.compare_digest(expected, candidate.encode())
    if not ok:
        raise SignatureError("signature mismatch", malformed=False)
    return timestamp
