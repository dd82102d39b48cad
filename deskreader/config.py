"""The bridge's configuration: one typed object, from the command line and the environment.

Every field is ``--field-name`` on the command line or ``ECARD_DESKREADER_<FIELD>`` in the
environment (the command line wins). Validated once at start; units are the last part of
every name; every default is a named limit with its reason (``deskreader.supervisor`` for
the PC/SC ones).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from .supervisor import CONTEXT_RETRY_INTERVAL_MS, STATUS_TIMEOUT_MS

# The staff API of `make run` (python -m staff_api serve).
DEFAULT_STAFF_URL = "http://127.0.0.1:8800"
# One HTTP request to the staff API (connect, send, answer). The officer is waiting at the
# desk: past a few seconds a person re-presents the card anyway, and a hung API must not
# hold the reader loop (card events queue in pcscd meanwhile and are seen afterwards).
HTTP_TIMEOUT_MS = 5_000
# A UID whose post failed in transport (connection refused, timeout, 5xx) is posted again
# this many times in all, this far apart: rides out a staff API restart of a second or so;
# a 4xx answer is final (no operation pending, wrong school, ...) and is only logged.
UID_POST_ATTEMPTS_MAX = 3
UID_POST_RETRY_INTERVAL_MS = 500
# A bearer token is 43 characters (staff_api.auth.TOKEN_BYTES = 32, urlsafe base64); the
# file may hold a newline. Anything much larger is the wrong file.
TOKEN_FILE_BYTES_MAX = 4_096
DESK_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # staff_api.desk.DESK_NAME_PATTERN (HTTP only: not imported)
ENV_PREFIX = "ECARD_DESKREADER_"


class ConfigError(ValueError):
    pass


class DeskReaderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reader: str  # the PC/SC reader's name, or a prefix of it ("Virtual PCD 00 00", "ACS ACR122U")
    desk: str  # the desk reader's name in the staff API (PUT /desk-readers/{desk})
    token_file: str  # a file holding the bridge's staff bearer token (an officer of the desk's school)
    staff_url: str = DEFAULT_STAFF_URL
    context_retry_interval_ms: int = CONTEXT_RETRY_INTERVAL_MS
    status_timeout_ms: int = STATUS_TIMEOUT_MS
    http_timeout_ms: int = HTTP_TIMEOUT_MS
    uid_post_attempts_max: int = UID_POST_ATTEMPTS_MAX
    uid_post_retry_interval_ms: int = UID_POST_RETRY_INTERVAL_MS

    def __post_init__(self) -> None:
        _require(1 <= len(self.reader) <= 200, "reader", "must be 1..200 characters")
        _require(re.match(DESK_NAME_PATTERN, self.desk) is not None, "desk", "must be 1..64 of [A-Za-z0-9._-]")
        parts = urlsplit(self.staff_url)
        _require(parts.scheme in ("http", "https") and bool(parts.hostname), "staff_url",
                 "must be http(s)://host[:port]")
        _require(10 <= self.context_retry_interval_ms <= 60_000, "context_retry_interval_ms", "must be 10..60000")
        _require(10 <= self.status_timeout_ms <= 60_000, "status_timeout_ms", "must be 10..60000")
        _require(100 <= self.http_timeout_ms <= 120_000, "http_timeout_ms", "must be 100..120000")
        _require(1 <= self.uid_post_attempts_max <= 10, "uid_post_attempts_max", "must be 1..10")
        _require(0 <= self.uid_post_retry_interval_ms <= 60_000, "uid_post_retry_interval_ms", "must be 0..60000")

    def token(self) -> str:
        """The bearer token, read from ``token_file`` (checked at start, read again by nobody else)."""
        path = Path(self.token_file)
        try:
            with path.open("rb") as f:
                data = f.read(TOKEN_FILE_BYTES_MAX + 1)
        except OSError as exc:
            raise ConfigError(f"token_file: {exc}") from None
        _require(len(data) <= TOKEN_FILE_BYTES_MAX, "token_file", f"longer than {TOKEN_FILE_BYTES_MAX} bytes")
        token = data.decode("ascii", errors="replace").strip()
        _require(bool(token) and re.fullmatch(r"[A-Za-z0-9._~+/=-]+", token) is not None, "token_file",
                 "must hold one bearer token")
        return token


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_config(env: dict[str, str] | None = None, **overrides: Any) -> DeskReaderConfig:
    """The environment, then ``overrides`` (the command line; None: not given)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field in DeskReaderConfig.__struct_fields__:
        if env_name(field) in env:
            values[field] = env[env_name(field)]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, DeskReaderConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None
