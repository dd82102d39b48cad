"""The session registry: every open device session, by device and by school.

The fire alarm needs "every turnstile session of school S", the durable-ack
timer and reference changes need "the session of device D". The registry is
the one place that knows; a device's ledger state knows nothing of sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .server import DeviceSession


class SessionRegistry:
    __slots__ = ("connections", "by_device", "by_school")

    def __init__(self) -> None:
        self.connections: set[DeviceSession] = set()  # every connection, with or without a session
        self.by_device: dict[int, DeviceSession] = {}  # device id -> its open session
        self.by_school: dict[int, set[DeviceSession]] = {}  # school id -> open sessions

    def __len__(self) -> int:
        return len(self.connections)

    def connected(self, session: "DeviceSession") -> None:
        self.connections.add(session)

    def opened(self, session: "DeviceSession", device_id: int, school_id: int) -> "DeviceSession | None":
        """``session`` is now device ``device_id``'s; returns the session it replaces, if any."""
        previous = self.by_device.get(device_id)
        self.by_device[device_id] = session
        if previous is not None and previous is not session:
            self._leave_school(previous)
        self.by_school.setdefault(school_id, set()).add(session)
        return previous if previous is not session else None

    def _leave_school(self, session: "DeviceSession") -> None:
        device = session.device
        if device is None:
            return
        members = self.by_school.get(device.school_id)
        if members is not None:
            members.discard(session)
            if not members:
                del self.by_school[device.school_id]

    def closed(self, session: "DeviceSession") -> None:
        self.connections.discard(session)
        device = session.device
        if device is not None and self.by_device.get(device.device_id) is session:
            del self.by_device[device.device_id]
        self._leave_school(session)

    def of_device(self, device_id: int) -> "DeviceSession | None":
        return self.by_device.get(device_id)

    def of_school(self, school_id: int, kind: int | None = None) -> Iterator["DeviceSession"]:
        """Open sessions of a school, optionally of one device kind."""
        for session in list(self.by_school.get(school_id, ())):
            if kind is None or (session.device is not None and session.device.kind == kind):
                yield session

    def moved_school(self, session: "DeviceSession", old_school_id: int, new_school_id: int) -> None:
        members = self.by_school.get(old_school_id)
        if members is not None:
            members.discard(session)
        self.by_school.setdefault(new_school_id, set()).add(session)

    def connected_by_kind(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for session in self.by_device.values():
            if session.device is not None:
                counts[session.device.kind] = counts.get(session.device.kind, 0) + 1
        return counts
