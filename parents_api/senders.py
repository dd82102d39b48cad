"""Where one-time codes go: pluggable senders, one per channel.

- ``SmtpSender``: e-mail through an SMTP server with aiosmtplib (host, port, STARTTLS
  and login configurable; plain text and HTML parts).
- ``FileSender``: one human-readable file per message under ``<root>/<channel>/`` (what
  ``python -m parents_api`` does by default for both channels, under ``var/sent/``:
  ``var/sent/sms/`` stands where an SMSC would be, ``var/sent/email/`` for a machine
  without an SMTP server).

A sender raises on failure; the API logs it (the caller has already been answered the
same way for every contact, so a failure is never visible as a difference).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Message:
    channel: str  # "email" or "sms"
    to: str  # an e-mail address or an E.164 phone
    subject: str
    text: str
    html: str | None = None


class Sender(Protocol):
    async def send(self, message: Message) -> None: ...


@dataclass
class SmtpSender:
    host: str
    port: int
    from_address: str = "ecard <no-reply@ecard.local>"
    start_tls: bool = False  # a real relay: True (aiosmtplib would upgrade by itself if offered: keep it explicit)
    use_tls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float = 15.0

    async def send(self, message: Message) -> None:
        import aiosmtplib

        mail = EmailMessage()
        mail["From"] = self.from_address
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail.set_content(message.text)
        if message.html is not None:
            mail.add_alternative(message.html, subtype="html")
        await aiosmtplib.send(
            mail, hostname=self.host, port=self.port, start_tls=self.start_tls, use_tls=self.use_tls,
            username=self.username, password=self.password, timeout=self.timeout_s,
        )


_UNSAFE = re.compile(r"[^A-Za-z0-9@.+_-]")


class FileSender:
    """One file per message: ``<root>/<channel>/<ms>-<pid>-<n>-<to>.txt``."""

    def __init__(self, root: Path, clock=None) -> None:
        self.root = Path(root)
        self._seq = itertools.count(1)
        from .config import system_clock_ms

        self._clock = clock or system_clock_ms

    async def send(self, message: Message) -> None:
        directory = self.root / message.channel
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{self._clock()}-{os.getpid()}-{next(self._seq)}-{_UNSAFE.sub('_', message.to)}.txt"
        body = f"To: {message.to}\nSubject: {message.subject}\n\n{message.text}\n"
        tmp = directory / (name + ".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.rename(directory / name)  # a reader never sees half a message


@dataclass
class Senders:
    email: Sender
    sms: Sender

    def for_channel(self, channel: str) -> Sender:
        return self.email if channel == "email" else self.sms
