"""Channels: how one rendered notice reaches one representative.

A channel is anything with a ``name`` (the representatives table's channel name), the
``html`` flag (does it want the HTML rendering) and three coroutines:

- ``start()`` / ``close()``: open and release its connections;
- ``send(delivery, rendered)``: hand the message to the peer and return once the peer has
  it (SMTP 250, MQTT PUBACK). A failure raises ``TemporaryDeliveryError`` (retried with
  backoff: a 4xx, a refused or broken connection, a timeout) or ``PermanentDeliveryError``
  (dead at once: a 5xx refusal of the address, an address the channel cannot use). Any
  other exception is a bug in the channel and is treated as temporary.

Sends may run concurrently (the worker bounds them); a channel must be safe for that.
SMS (notifier/sms.py) plugs in the same way; so would USSD: add a class, its name to
``config.IMPLEMENTED_CHANNELS`` and its templates to ``templates/<channel>/``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import ssl
import time
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate
from pathlib import Path
from typing import Protocol

import aiomqtt
import aiosmtplib
import msgspec

from storage.deliveries import Claimed

from .config import NotifierConfig, Server
from .render import Rendered

log = logging.getLogger("ecard.notifier")


class DeliveryError(Exception):
    pass


class TemporaryDeliveryError(DeliveryError):
    """Worth trying again later."""


class PermanentDeliveryError(DeliveryError):
    """Trying again would give the same answer."""


class DeferDelivery(DeliveryError):
    """Not now (SMS quiet hours, the daily digest's time): pending again, due at ``until_ms``;
    not counted as an attempt."""

    def __init__(self, until_ms: int, reason: str) -> None:
        super().__init__(reason)
        self.until_ms = until_ms


class SkipDelivery(DeliveryError):
    """Nothing to send, and nothing to retry: ``status`` is cancelled (over the daily SMS cap)
    or sent (the event went out in the carrier of a daily digest)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Channel(Protocol):
    name: str
    html: bool

    async def start(self) -> None: ...

    async def send(self, delivery: Claimed, rendered: Rendered) -> None: ...

    async def close(self) -> None: ...


# -- e-mail ---------------------------------------------------------------------------------------


def message_id(delivery: Claimed, domain: str) -> str:
    """The same for every attempt of one delivery: a receiver that sees a message twice
    (the notifier died after the server took it) can tell it is one message."""
    return f"<delivery-{delivery.id}@{domain}>"


def build_email(delivery: Claimed, rendered: Rendered, *, sender: str, sender_name: str) -> Message:
    """multipart/alternative: the plain text first, the HTML second (the preferred one).

    Built with the compat32 MIME classes and ``Header``: the newer ``EmailMessage`` folds a
    long Cyrillic subject into encoded words that drop the space at the fold (CPython's
    folder), and mail clients then show two words run together.
    """
    text = MIMEText(rendered.text, "plain", "utf-8")
    if rendered.html is None:
        msg: Message = text
    else:
        msg = MIMEMultipart("alternative")
        msg.attach(text)
        msg.attach(MIMEText(rendered.html, "html", "utf-8"))
    msg["From"] = formataddr((sender_name, sender), charset="utf-8")
    msg["To"] = delivery.address
    msg["Subject"] = Header(rendered.subject, "utf-8")
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(delivery, sender.rsplit("@", 1)[1])
    msg["X-Ecard-Event"] = delivery.event_id
    return msg


# RFC 2047: an encoded word is at most 75 characters; "=?utf-8?b?" + base64 + "?=" leaves 63
# for the base64, that is 45 bytes of UTF-8 (cut at a character's boundary).
_ENCODED_WORD_BYTES_MAX = 45
# RFC 2045: base64 lines of at most 76 characters (57 bytes each).
_BASE64_LINE_BYTES = 57
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


def encoded_words(text: str) -> str:
    """``text`` as RFC 2047 encoded words (UTF-8, base64), folded one word a line: what
    ``email.header.Header(text, "utf-8").encode()`` writes, without its general machinery. The
    folds fall between encoded words, where a reader drops the whitespace, so no space of the
    text is lost or added at a fold."""
    words: list[str] = []
    chunk = bytearray()
    for ch in text:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > _ENCODED_WORD_BYTES_MAX:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode()}?=")
            chunk = bytearray()
        chunk += b
    if chunk or not words:
        words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode()}?=")
    return "\r\n ".join(words)


def _base64_body(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"".join(base64.b64encode(data[i:i + _BASE64_LINE_BYTES]) + b"\r\n"
                    for i in range(0, len(data), _BASE64_LINE_BYTES))


def email_bytes(delivery: Claimed, rendered: Rendered, *, sender: str, from_header: str) -> bytes | None:
    """The message of ``build_email`` as the bytes sent (CRLF lines, base64 UTF-8 parts),
    written directly: the stdlib's MIME classes and generator cost about a millisecond of CPU a
    message, the largest share of the notifier's work in a morning rush. ``from_header`` is
    the From line's value, encoded once per channel. Returns None when the address or the
    event id is not plain ASCII without spaces (then ``build_email`` does it, with the general
    rules). The tests parse both with the stdlib and compare."""
    address, event_id = delivery.address, delivery.event_id
    if not (_HEADER_SAFE.fullmatch(address) and " " not in address and _HEADER_SAFE.fullmatch(event_id)):
        return None
    domain = sender.rsplit("@", 1)[1]
    head = (
        f"From: {from_header}\r\n"
        f"To: {address}\r\n"
        f"Subject: {encoded_words(rendered.subject)}\r\n"
        f"Date: {formatdate(localtime=False, usegmt=True)}\r\n"
        f"Message-ID: {message_id(delivery, domain)}\r\n"
        f"X-Ecard-Event: {event_id}\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode("ascii")
    text_part = (b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                 + _base64_body(rendered.text))
    if rendered.html is None:
        return head + text_part
    # Base64 lines never hold "-", so no line of a part can look like the boundary.
    boundary = f"==ecard-delivery-{delivery.id}==".encode()
    html_part = (b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                 + _base64_body(rendered.html))
    return (head + b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
            + b"--" + boundary + b"\r\n" + text_part
            + b"--" + boundary + b"\r\n" + html_part
            + b"--" + boundary + b"--\r\n")


class EmailChannel:
    """SMTP through aiosmtplib: a small pool of open connections, one per send in flight.

    STARTTLS only when configured (aiosmtplib would upgrade by itself whenever the server
    offers it; the local sink offers nothing); smtps:// is TLS from the first byte.
    """

    name = "email"
    html = True

    def __init__(self, server: Server, *, sender: str, sender_name: str, starttls: bool, timeout_ms: int,
                 connections_max: int, tls_context: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.sender = sender
        self.sender_name = sender_name
        self.starttls = starttls
        self.timeout_s = timeout_ms / 1000
        self.tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(connections_max)
        self._from_header = str(formataddr((sender_name, sender), charset="utf-8"))

    async def start(self) -> None:
        pass  # connections are opened on demand (a dead server must not stop the notifier)

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.server.host, port=self.server.port, timeout=self.timeout_s,
            use_tls=self.server.tls, start_tls=self.starttls, tls_context=self.tls_context,
            username=self.server.username, password=self.server.password,
        )
        await client.connect()
        return client

    async def send(self, delivery: Claimed, rendered: Rendered) -> None:
        raw = email_bytes(delivery, rendered, sender=self.sender, from_header=self._from_header)
        msg = raw if raw is not None else build_email(delivery, rendered, sender=self.sender,
                                                      sender_name=self.sender_name)
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            if client is None or not client.is_connected:
                try:
                    client = await self._connect()
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                    # Whatever the server says before the envelope is about the server, not the address.
                    raise TemporaryDeliveryError(f"SMTP {self.server.url}: {type(exc).__name__}: {exc}") from None
            try:
                if isinstance(msg, bytes):
                    await client.sendmail(self.sender, [delivery.address], msg)
                else:
                    await client.send_message(msg, sender=self.sender, recipients=[delivery.address])
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self._idle.append(client)  # aiosmtplib sent RSET: the connection is good
                refusal = exc.recipients[0]
                raise _by_code(refusal.code, f"SMTP {refusal.code} {refusal.message}") from None
            except aiosmtplib.SMTPSenderRefused as exc:
                # Our own address refused: a configuration matter, never the parent's; retried.
                await _close_quietly(client)
                raise TemporaryDeliveryError(f"SMTP {exc.code} {exc.message} (sender {self.sender})") from None
            except aiosmtplib.SMTPResponseException as exc:
                # The message refused after DATA: the envelope was reset; a 421 closes the connection.
                if client.is_connected and exc.code != 421:
                    self._idle.append(client)
                else:
                    await _close_quietly(client)
                raise _by_code(exc.code, f"SMTP {exc.code} {exc.message}") from None
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                await _close_quietly(client)
                raise TemporaryDeliveryError(f"SMTP {self.server.url}: {type(exc).__name__}: {exc}") from None
            self._idle.append(client)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), self.timeout_s)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                client.close()


def _by_code(code: int, text: str) -> DeliveryError:
    """RFC 5321: 5xx is a permanent refusal, 4xx a transient one."""
    return PermanentDeliveryError(text) if 500 <= code < 600 else TemporaryDeliveryError(text)


async def _close_quietly(client: aiosmtplib.SMTP | None) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:  # closing a broken transport: nothing else to do
            pass


# -- app push (MQTT) ------------------------------------------------------------------------------


def representative_topic(prefix: str, representative_id: int) -> str:
    """The representative's own topic; the broker's ACL lets only that representative read it
    (relay.mosquitto: ``pattern read <prefix>/representatives/%u/#``)."""
    return f"{prefix}/representatives/{int(representative_id)}/events"


def tv_topic(prefix: str, representative_id: int) -> str:
    """The Smart-TV app's topic of the representative (same ACL pattern as the app's)."""
    return f"{prefix}/representatives/{int(representative_id)}/tv"


class PushMessage(msgspec.Struct, frozen=True):
    """What the app receives (JSON). ``delivery_id`` is the same on a repeat: the app drops
    a message it has shown."""

    delivery_id: int
    event_id: str
    kind: str
    account_id: int
    school_id: int
    title: str
    text: str
    notice: msgspec.Raw  # the ledger.notices Struct, as the event carried it


_encode = msgspec.json.Encoder().encode


def push_payload(delivery: Claimed, rendered: Rendered) -> bytes:
    return _encode(PushMessage(delivery.id, delivery.event_id, delivery.kind, delivery.account_id, delivery.school_id,
                               rendered.subject, rendered.text.rstrip("\n"), msgspec.Raw(delivery.notice)))


class PushChannel:
    """PUBLISH QoS 1, retain false, to ``delivery.address`` (the representative's topic, set
    when the delivery was made); done at PUBACK. One MQTT connection of its own (clean
    session), reconnected on the next send after it broke."""

    name = "app_push"
    html = False

    def __init__(self, server: Server, *, client_id: str, keepalive_s: int, timeout_ms: int,
                 tls_context: ssl.SSLContext | None = None, name: str = "app_push") -> None:
        self.name = name  # app_push, or tv_push (the Smart-TV app: the same PUBLISH to its own topic)
        self.server = server
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_ms / 1000
        self.tls_context = tls_context
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        pass  # connected on the first send

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is None:
                client = aiomqtt.Client(
                    self.server.host, self.server.port, identifier=self.client_id, clean_session=True,
                    username=self.server.username, password=self.server.password, keepalive=self.keepalive_s,
                    timeout=self.timeout_s, tls_context=self.tls_context,
                )
                await client.__aenter__()
                self._client = client
            return self._client

    async def send(self, delivery: Claimed, rendered: Rendered) -> None:
        try:
            client = await self._connected()
            await client.publish(delivery.address, push_payload(delivery, rendered), qos=1, retain=False,
                                 timeout=self.timeout_s)
        except (aiomqtt.MqttError, OSError, asyncio.TimeoutError) as exc:
            await self._drop()
            raise TemporaryDeliveryError(f"MQTT {self.server.url}: {type(exc).__name__}: {exc}") from None

    async def _drop(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except Exception:  # the connection is already broken
                pass

    async def close(self) -> None:
        await self._drop()


# -- what was sent, as files -----------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class RecordingChannel:
    """Wraps a channel: every message it sent is also written, readable by a person, as one
    file under ``<root>/<channel>/`` (make run's "what went out"). Written after the send
    succeeded, atomically (temporary file, then rename)."""

    def __init__(self, inner: Channel, root: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.html = inner.html
        self.directory = Path(root) / inner.name

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await self.inner.start()

    async def send(self, delivery: Claimed, rendered: Rendered) -> None:
        await self.inner.send(delivery, rendered)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.directory / f"{stamp}-d{delivery.id}-{_UNSAFE.sub('_', delivery.event_id)}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.describe(delivery, rendered), encoding="utf-8")
        os.replace(tmp, path)

    def describe(self, delivery: Claimed, rendered: Rendered) -> str:
        head = [
            f"Channel: {self.name}",
            f"To: {delivery.address}",
            f"Representative: {delivery.representative_id}",
            f"Event: {delivery.event_id} ({delivery.kind}, account {delivery.account_id})",
            f"Delivery: {delivery.id}, attempt {delivery.attempts}",
            f"Subject: {rendered.subject}",
        ]
        body = [rendered.text.rstrip("\n")]
        if self.name in ("app_push", "tv_push"):
            body += ["", "Payload:", msgspec.json.format(push_payload(delivery, rendered), indent=2).decode()]
        return "\n".join(head) + "\n\n" + "\n".join(body) + "\n"

    async def close(self) -> None:
        await self.inner.close()


def build_channels(config: NotifierConfig, smtp: Server, broker: Server, smsc: Server | None = None,
                   pool=None, renderer=None, reference=None) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    tls = ssl.create_default_context() if broker.tls else None
    for name in config.channels:
        if name == "email":
            channel: Channel = EmailChannel(
                smtp, sender=config.mail_from, sender_name=config.mail_from_name, starttls=config.smtp_starttls,
                timeout_ms=config.smtp_timeout_ms, connections_max=config.send_concurrency_max,
                tls_context=ssl.create_default_context() if (smtp.tls or config.smtp_starttls) else None,
            )
        elif name == "app_push":
            channel = PushChannel(broker, client_id=f"{config.client_id}-push", keepalive_s=config.keepalive_s,
                                  timeout_ms=config.push_timeout_ms, tls_context=tls)
        elif name == "tv_push":
            channel = PushChannel(broker, client_id=f"{config.client_id}-tv", keepalive_s=config.keepalive_s,
                                  timeout_ms=config.push_timeout_ms, tls_context=tls, name="tv_push")
        elif name == "sms":
            from .sms import SmsChannel

            assert smsc is not None
            sms = SmsChannel(smsc, pool=pool, renderer=renderer, reference=reference,
                             per_second=config.sms_per_second_max, timeout_ms=config.sms_submit_timeout_ms,
                             source_addr=config.sms_source_addr, sent_dir=config.sent_path)
            channels[name] = sms  # writes its own files (the text sent may be a digest)
            continue
        else:  # config validation lets only the implemented ones through
            raise AssertionError(name)
        sent = config.sent_path
        channels[name] = RecordingChannel(channel, sent) if sent is not None else channel
    return channels
