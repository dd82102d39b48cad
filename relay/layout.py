"""The MQTT topic layout and message format of ecard's notices (v1), in one place.

Pure: no I/O. The relay publishes with it; consumers (the notifier, tests) parse with
it. Normative description: docs/notices.md.

    <prefix>/events/<school_id>/<kind>/<account_id>        the relay's stream (QoS 1)
    <prefix>/representatives/<representative_id>/...      per-person topics (the notifier's, later)

with ``<prefix>`` = ``ecard/v1``. The message is JSON::

    {"event_id": "12:345:purchase", "kind": "purchase", "account_id": 5,
     "created_at_ms": 1764050000000, "notice": {...the outbox row's payload as stored...}}

Delivery is at least once: consumers de-duplicate by ``event_id``.
"""

from __future__ import annotations

import re

import msgspec

from ledger.notices import NOTICE_DECODER, AnyNotice

EVENTS = "events"
REPRESENTATIVES = "representatives"
# A topic level must not be a wildcard or a separator; kinds are OutboxKind values.
_LEVEL = re.compile(r"^[a-z0-9_]{1,64}$")


class Message(msgspec.Struct, frozen=True, gc=False):
    """The MQTT payload of one outbox event (field order is the JSON's)."""

    event_id: str
    kind: str
    account_id: int
    created_at_ms: int
    notice: msgspec.Raw  # the outbox row's payload, byte for byte as PostgreSQL returned it


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Message).decode



def valid_prefix(prefix: str) -> bool:
    """A topic prefix: one or more non-empty levels, no wildcards, not a $SYS-like topic."""
    levels = prefix.split("/")
    return all(levels) and not any(c in prefix for c in "+#\0") and not prefix.startswith("$")

def event_topic(prefix: str, school_id: int, kind: str, account_id: int) -> str:
    assert _LEVEL.match(kind), f"outbox kind {kind!r} cannot be a topic level"
    return f"{prefix}/{EVENTS}/{int(school_id)}/{kind}/{int(account_id)}"


def events_filter(prefix: str, school_id: int | None = None) -> str:
    """Subscription to every event, or to one school's."""
    return f"{prefix}/{EVENTS}/#" if school_id is None else f"{prefix}/{EVENTS}/{int(school_id)}/#"


def representative_filter(prefix: str, representative_id: int | str) -> str:
    """What a representative's app subscribes to: its own topics only (the broker's ACL enforces it)."""
    return f"{prefix}/{REPRESENTATIVES}/{representative_id}/#"


def parse_event_topic(prefix: str, topic: str) -> tuple[int, str, int]:
    """(school_id, kind, account_id) of an event topic; ValueError for anything else."""
    head = f"{prefix}/{EVENTS}/"
    if not topic.startswith(head):
        raise ValueError(f"not an event topic: {topic!r}")
    levels = topic[len(head):].split("/")
    if len(levels) != 3 or not _LEVEL.match(levels[1]):
        raise ValueError(f"not an event topic: {topic!r}")
    return int(levels[0]), levels[1], int(levels[2])


def encode(event_id: str, kind: str, account_id: int, created_at_ms: int, notice: msgspec.Raw) -> bytes:
    return _encode(Message(event_id, kind, account_id, created_at_ms, notice))


def decode(payload: bytes) -> Message:
    return _decode(payload)


def decode_notice(message: Message) -> AnyNotice:
    """The notice as its ledger.notices Struct (the class chosen by its ``kind`` tag)."""
    return NOTICE_DECODER.decode(bytes(message.notice))
