"""The turnstiles' local allow-lists: what each school's turnstiles may decide alone when
they cannot reach the gateway (docs/building.md, docs/protocol.md section 4.15).

Per school: the identifiers of its pupils with what an offline turnstile does with them
(ALLOW an active card, BLOCK a blocked or suspended one: the hot list), a version, and the
log of the latest changes. A turnstile holding version V gets the changes after V (a
delta); one whose V the log no longer reaches (too old, or of an earlier gateway life: the
high 32 bits of a version are the lists' epoch) gets a full snapshot, page by page, and
then the delta after it. Pure: the machine answers LIST_SYNC from here, the state's
identifier changes feed it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from typing import Callable

from protocol import LIST_FLAG_MORE, LIST_FLAG_RESET, LIST_FLAG_SNAPSHOT, ListEntry, ListOp, ListPage
from protocol.limits import LIST_PAGE_ENTRIES_MAX

ALLOW, BLOCK, REMOVE = int(ListOp.ALLOW), int(ListOp.BLOCK), int(ListOp.REMOVE)
# Changes a school's log keeps: a term's card changes of a 1,500-pupil school (new cards,
# losses, temporary cards) are a few hundred; a turnstile further behind gets a snapshot,
# which costs it ~32 frames, so the log need not reach far.
LIST_LOG_CHANGES_MAX = 4_096
_SEQ_BITS = 32
_SEQ_MASK = (1 << _SEQ_BITS) - 1


class SchoolList:
    """A school's identifiers, sorted (a snapshot pages through them), and its change log.

    What each identifier's op is (ALLOW or BLOCK) is not stored twice: it is the card's state,
    read through the lists' ``op_of`` when a snapshot page is made. Memory: one pointer per
    card (16 MiB for 2 M cards) instead of a dict entry."""

    __slots__ = ("seq", "ids", "log")

    def __init__(self, ids: list[bytes] | None = None) -> None:
        self.seq = 0
        self.ids: list[bytes] = ids if ids is not None else []  # sorted
        self.log: deque[tuple[int, int, bytes]] = deque(maxlen=LIST_LOG_CHANGES_MAX)  # (seq, op, identifier)

    def change(self, identifier: bytes, op: int) -> None:
        ids = self.ids
        i = bisect_left(ids, identifier)
        present = i < len(ids) and ids[i] == identifier
        if op == REMOVE:
            if not present:
                return
            del ids[i]
        elif not present:
            ids.insert(i, identifier)
        self.seq += 1
        self.log.append((self.seq, op, identifier))


class AllowLists:
    """Every school's list; ``epoch`` makes versions of an earlier gateway life unreachable.
    ``op_of(identifier)`` is ALLOW or BLOCK as the card stands now (the state's)."""

    __slots__ = ("epoch", "schools", "op_of")

    def __init__(self, epoch: int, op_of: Callable[[bytes], int] = lambda _identifier: ALLOW) -> None:
        self.epoch = epoch & _SEQ_MASK
        self.schools: dict[int, SchoolList] = {}
        self.op_of = op_of

    def school(self, school_id: int) -> SchoolList:
        found = self.schools.get(school_id)
        if found is None:
            found = self.schools[school_id] = SchoolList()
        return found

    def version(self, school_id: int) -> int:
        return (self.epoch << _SEQ_BITS) | self.school(school_id).seq

    def page(self, school_id: int, version: int, after: bytes) -> ListPage:
        """The answer to LIST_SYNC(version, after) from a turnstile of ``school_id``."""
        school = self.school(school_id)
        epoch, seq = version >> _SEQ_BITS, version & _SEQ_MASK
        same_life = epoch == self.epoch and seq <= school.seq
        if after and same_life:
            return self._snapshot(school, version, after, first=False)
        log = school.log
        if same_life and (seq == school.seq or (log and log[0][0] <= seq + 1)):
            changes = [(s, op, ident) for s, op, ident in log if s > seq][:LIST_PAGE_ENTRIES_MAX]
            more = bool(changes) and changes[-1][0] < school.seq
            out_version = (self.epoch << _SEQ_BITS) | (changes[-1][0] if changes else seq)
            entries = tuple(ListEntry(op, ident) for _, op, ident in changes)
            return ListPage(out_version, LIST_FLAG_MORE if more else 0, entries)
        return self._snapshot(school, (self.epoch << _SEQ_BITS) | school.seq, b"", first=True)

    def _snapshot(self, school: SchoolList, base_version: int, after: bytes, *, first: bool) -> ListPage:
        """A page of the school's members in identifier order, after ``after``. Members that
        change while a turnstile pages are caught by the delta from the base version after."""
        members = school.ids
        start = bisect_right(members, after) if after else 0
        chunk = members[start : start + LIST_PAGE_ENTRIES_MAX]
        flags = LIST_FLAG_SNAPSHOT | (LIST_FLAG_RESET if first else 0)
        if start + len(chunk) < len(members):
            flags |= LIST_FLAG_MORE
        op_of = self.op_of
        return ListPage(base_version, flags, tuple(ListEntry(op_of(i), i) for i in chunk))
