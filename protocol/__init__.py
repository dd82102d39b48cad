"""ecard device protocol v1, sans-IO. Imports nothing of ecard's and does no I/O.

The normative description is docs/protocol.md.
"""

from .codes import (
    ALLOWANCE_FLAGS_KNOWN,
    DECISION_FLAG_DUPLICATE,
    NO_ITEM_INDEX,
    TXN_FLAG_ADVICE,
    DenyReason,
    DeviceKind,
    Direction,
    MessageType,
    NakReason,
    LIST_FLAG_MORE,
    LIST_FLAG_RESET,
    LIST_FLAG_SNAPSHOT,
    ListOp,
    Outcome,
    TurnstileMode,
)
from .connection import (
    CLOSED,
    NEED_DATA,
    Connection,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Retransmit,
    crc16,
    encode_frame,
    next_seq,
)
from .events import (
    EVENT_TYPES,
    AllowanceEntry,
    AllowancePage,
    AllowanceSync,
    BalanceQuery,
    CardPresented,
    Decision,
    DurableAck,
    Event,
    FireAlarm,
    FireReset,
    Heartbeat,
    Hello,
    HelloAck,
    Item,
    ListEntry,
    ListPage,
    ListSync,
    Mode,
    ModeApplied,
    Nak,
    Passage,
    PayloadError,
    PreorderLine,
    PupilInfo,
    PupilInfoQuery,
    Purchase,
    TopupCash,
)
from .state import Role, State

__all__ = [
    "BalanceQuery", "CLOSED", "CardPresented", "Connection", "DECISION_FLAG_DUPLICATE", "Decision",
    "DenyReason", "DeviceKind", "Direction", "DurableAck", "EVENT_TYPES", "Event", "Heartbeat", "Hello",
    "HelloAck", "Item", "LocalProtocolError", "MessageType", "NEED_DATA", "NO_ITEM_INDEX", "Nak",
    "NakReason", "Outcome", "Passage", "PayloadError", "PreorderLine", "ProtocolError", "PupilInfo", "PupilInfoQuery", "Purchase", "RemoteProtocolError",
    "Retransmit", "Role", "State", "TXN_FLAG_ADVICE", "TopupCash", "crc16", "encode_frame", "next_seq",
    "FireAlarm", "FireReset", "Mode", "ModeApplied", "TurnstileMode",
    "LIST_FLAG_MORE", "LIST_FLAG_RESET", "LIST_FLAG_SNAPSHOT", "ListEntry", "ListOp", "ListPage", "ListSync",
    "ALLOWANCE_FLAGS_KNOWN", "AllowanceEntry", "AllowancePage", "AllowanceSync",
]
