#!/usr/bin/env python3
"""Generate tests/vectors/protocol_v1.json from the reference implementation in protocol/.

    python tests/vectors/generate.py           # rewrite protocol_v1.json
    python tests/vectors/generate.py --check   # exit 1 if the committed file differs

The file is committed; tests/protocol/test_protocol_vectors.py checks that it equals
what this script renders, so the vectors and the code cannot drift apart.
Everything here is deterministic: fixed keys, nonces, clocks and amounts.

Valid frames are produced by real ``Connection`` objects playing whole
sessions, so their sequence numbers and flags are the ones the state machine
puts on the wire. Invalid frames are built by hand (``raw_frame``) and each
names the NAK reason a receiver in the given state must answer with.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from protocol import (  # noqa: E402
    DECISION_FLAG_DUPLICATE,
    AllowanceEntry,
    AllowancePage,
    AllowanceSync,
    EVENT_TYPES,
    NO_ITEM_INDEX,
    TXN_FLAG_ADVICE,
    BalanceQuery,
    CardPresented,
    Connection,
    Decision,
    DenyReason,
    DeviceKind,
    Direction,
    DurableAck,
    Event,
    FireAlarm,
    FireReset,
    Heartbeat,
    Hello,
    HelloAck,
    Item,
    MessageType,
    ListEntry,
    ListPage,
    ListSync,
    Mode,
    ModeApplied,
    Nak,
    NakReason,
    Outcome,
    Passage,
    PreorderLine,
    PupilInfo,
    PupilInfoQuery,
    Purchase,
    RemoteProtocolError,
    Role,
    State,
    TopupCash,
    LIST_FLAG_MORE,
    LIST_FLAG_RESET,
    LIST_FLAG_SNAPSHOT,
    ListOp,
    TurnstileMode,
    crc16,
)
from protocol.auth import sign_hello  # noqa: E402
from protocol.limits import (  # noqa: E402
    ALLOWANCE_PAGE_ENTRIES_MAX,
    CRC_BYTES,
    HEADER_BYTES,
    FIRMWARE_BYTES_MAX,
    IDENTIFIER_BYTES_MAX,
    IDENTIFIER_BYTES_MIN,
    ITEMS_MAX,
    NAK_DETAIL_BYTES_MAX,
    PAYLOAD_BYTES_MAX,
    PENDING_FRAMES_MAX,
    PROTOCOL_VERSION,
    START_BYTE,
    TXN_GAP_MAX,
)

OUT = Path(__file__).with_name("protocol_v1.json")

DEVICE_TO_GATEWAY = "device->gateway"
GATEWAY_TO_DEVICE = "gateway->device"

TURNSTILE_ID = 1_000_001
TILL_ID = 2_000_001
STRANGER_ID = 1_000_002  # a turnstile whose HELLO is refused
PANEL_ID = 3_000_001  # the school's fire panel
KINDERGARTEN_TURNSTILE_ID = 1_000_101  # a turnstile of a kindergarten (escorts required)
KEYS = {
    KINDERGARTEN_TURNSTILE_ID: bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
    PANEL_ID: bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f"),
    TURNSTILE_ID: bytes.fromhex("00112233445566778899aabbccddeeff"),
    TILL_ID: bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    STRANGER_ID: bytes.fromhex("deadbeefdeadbeefdeadbeefdeadbeef"),
}
T0 = 1_764_000_000_000  # 2025-11-24 16:00:00 UTC in ms: the clock of the examples
CARD = bytes.fromhex("04000000000007")  # a 7-byte ISO 14443 UID
UNKNOWN = bytes.fromhex("08000000000001")
CHILD = bytes.fromhex("04000000000321")  # a kindergarten child's card
GRANNY = bytes.fromhex("0b0000000000a1")  # her trusted person's own card
# Pupils' cards of the till's offline allowances (section 4.16, 10.14).
PUPIL_A = bytes.fromhex("04000000000021")  # buys at this till: its holder
PUPIL_B = bytes.fromhex("04000000000022")  # will buy online at the other till (2000002)
PUPIL_D = bytes.fromhex("04000000000024")  # will be reported lost (blocked)
_HEADER = struct.Struct("<BBBHIIB")


# --------------------------------------------------------------------------- field codec


def to_json(value: Any) -> Any:
    """Decoded field values as JSON: bytes as hex, items as objects, tuples as lists."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ListEntry):
        return {"op": value.op, "identifier": value.identifier.hex()}
    if isinstance(value, AllowanceEntry):
        return {"op": value.op, "delta_kopecks": value.delta_kopecks, "identifier": value.identifier.hex()}
    if isinstance(value, (Item, PreorderLine)):
        return {f: getattr(value, f) for f in value.__struct_fields__}
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    return value


def fields_of(event: Event) -> dict[str, Any]:
    return {name: to_json(getattr(event, name)) for name in event.__struct_fields__}


# --------------------------------------------------------------------------- frames


def raw_frame(
    device_id: int,
    seq: int,
    mtype: int,
    payload: bytes,
    *,
    flags: int = 0,
    start: int = START_BYTE,
    version: int = PROTOCOL_VERSION,
    length: int | None = None,
    crc_xor: int = 0,
) -> bytes:
    """A frame built by hand, with a correct CRC unless ``crc_xor`` spoils it."""
    head = _HEADER.pack(start, version, flags, len(payload) if length is None else length, device_id, seq, mtype)
    body = head + payload
    return body + struct.pack("<H", crc16(body) ^ crc_xor)


def hello(device_id: int, kind: int, firmware: str, durable_txn: int, clock: int, nonce_byte: int) -> Hello:
    unsigned = Hello(kind, firmware, durable_txn, clock, bytes([nonce_byte]) * 16, bytes(16))
    return sign_hello(KEYS[device_id], device_id, unsigned)


def decision(txn: int, reason: DenyReason, balance: int, template: int, *params: int, flags: int = 0,
             item_index: int = NO_ITEM_INDEX) -> Decision:
    outcome = Outcome.ACCEPT if reason is DenyReason.OK else Outcome.DENY
    return Decision(txn, int(outcome), int(reason), flags, balance, item_index, template, tuple(params))


# --------------------------------------------------------------------------- sessions

# Each step: (vector name, sender, event, summary). Played through a real device
# Connection and a real gateway Connection; the bytes on the wire become the vectors.
Step = tuple[str, str, Event, str]

LUNCH = (Item(1, 1, 9_500), Item(4, 2, 4_500))  # breakfast + two juices = 185.00 rubles
BREAKFAST = (Item(1, 1, 9_500),)  # one breakfast, 95.00 rubles: sold offline
# Offline allowances: epoch 7 (this gateway life) in the high 32 bits of a version, the
# number of pages sent to the till in the low 32; the school's floor and sales per card.
ALLOWANCE_EPOCH = 7
OFFLINE_FLOOR = 30_000  # 300.00 rubles: the most one pupil may spend offline, over all tills
OFFLINE_SALES_PER_CARD = 3
BUFFET = (Item(2, 10, 16_500),)  # ten lunches for a class trip, sold offline
# A corrupt counter: far more than TXN_GAP_MAX above txn 6, the highest the gateway knows.
CORRUPT_TXN = 6 + TXN_GAP_MAX + 1

SESSIONS: list[tuple[str, int, str, list[Step]]] = [
    (
        "turnstile",
        TURNSTILE_ID,
        "A turnstile opens a session, lets a pupil in, reports the passage, keeps the session alive "
        "and is refused an unknown card. The connection then drops before txn 2 is durable.",
        [
            ("turnstile.hello", DEVICE_TO_GATEWAY,
             hello(TURNSTILE_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 0, T0, 0xA1),
             "HELLO: turnstile, nothing durable seen yet, MAC under the device key"),
            ("turnstile.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 3, 0, 10_000),
             "HELLO_ACK: server clock, durable watermark 0, heartbeat every 10 s"),
            ("turnstile.card_presented", DEVICE_TO_GATEWAY,
             CardPresented(1, 0, Direction.IN, T0 + 1_000, CARD),
             "CARD_PRESENTED txn 1, direction IN"),
            ("turnstile.decision_accept", GATEWAY_TO_DEVICE, decision(1, DenyReason.OK, 0, 100),
             "DECISION ACCEPT, template 100 (ACCEPT_ENTRY)"),
            ("turnstile.durable_ack", GATEWAY_TO_DEVICE, DurableAck(1),
             "DURABLE_ACK: txn 1 and below are on disk (unsolicited, seq 0)"),
            ("turnstile.passage", DEVICE_TO_GATEWAY,
             Passage(2, TXN_FLAG_ADVICE, Direction.IN, T0 + 2_500, 1, CARD),
             "PASSAGE txn 2 (the holder of granted txn 1 went through), ADVICE"),
            ("turnstile.decision_passage", GATEWAY_TO_DEVICE, decision(2, DenyReason.OK, 0, 105),
             "DECISION ACCEPT for the passage, template 105 (PASSAGE_RECORDED)"),
            ("turnstile.heartbeat", DEVICE_TO_GATEWAY, Heartbeat(T0 + 10_000), "HEARTBEAT with the device clock"),
            ("turnstile.heartbeat_reply", GATEWAY_TO_DEVICE, Heartbeat(T0 + 10_002),
             "HEARTBEAT reply with the gateway clock"),
            ("turnstile.card_unknown", DEVICE_TO_GATEWAY,
             CardPresented(3, 0, Direction.OUT, T0 + 11_000, UNKNOWN),
             "CARD_PRESENTED txn 3, direction OUT, a card bound to no account"),
            ("turnstile.decision_unknown_card", GATEWAY_TO_DEVICE, decision(3, DenyReason.UNKNOWN_CARD, 0, 1),
             "DECISION DENY UNKNOWN_CARD, template 1"),
        ],
    ),
    (
        "turnstile_reconnect",
        TURNSTILE_ID,
        "The same turnstile reconnects. Its HELLO reports durable_txn 1, the highest watermark it has "
        "seen. A HELLO_ACK confirms nothing, so the device replays everything it keeps (here accepted "
        "txn 2, whose DURABLE_ACK never came in the first session) before anything new: the gateway had "
        "decided it, answers the stored result with DUPLICATE and applies nothing. The DURABLE_ACK 2 "
        "that follows the DECISION in this session lets the device drop txn 2 (section 10.4).",
        [
            ("turnstile_reconnect.hello", DEVICE_TO_GATEWAY,
             hello(TURNSTILE_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 1, T0 + 60_000, 0xA2),
             "HELLO: durable_txn 1 seen, fresh nonce"),
            ("turnstile_reconnect.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 60_001, 1, 10_000),
             "HELLO_ACK: gateway watermark 1; it drops nothing on the device"),
            ("turnstile_reconnect.passage_replay", DEVICE_TO_GATEWAY,
             Passage(2, TXN_FLAG_ADVICE, Direction.IN, T0 + 2_500, 1, CARD),
             "PASSAGE txn 2 again (ADVICE), now with seq 1 of the new session"),
            ("turnstile_reconnect.decision_duplicate", GATEWAY_TO_DEVICE,
             decision(2, DenyReason.OK, 0, 105, flags=DECISION_FLAG_DUPLICATE),
             "DECISION ACCEPT with flag DUPLICATE: the stored result, nothing applied"),
            ("turnstile_reconnect.durable_ack", GATEWAY_TO_DEVICE, DurableAck(2),
             "DURABLE_ACK 2 after the DECISION for txn 2 in this session: the device drops txn 2"),
        ],
    ),
    (
        "turnstile_grants",
        TURNSTILE_ID,
        "The turnstile again, in a new session. A pupil is let in (grant txn 4) and goes through "
        "(PASSAGE txn 5 names grant 4). A PASSAGE naming txn 3, which was a DENY, is refused NO_GRANT "
        "and not counted. Then the device's counter jumps (corrupt) more than TXN_GAP_MAX above the "
        "highest txn the gateway knows: NAK TXN_OUT_OF_RANGE, nothing decided, the txn does not count "
        "as sent. The device moves its counter above the highest txn it used (6) and sends the tap "
        "again as txn 7 in the same session.",
        [
            ("turnstile_grants.hello", DEVICE_TO_GATEWAY,
             hello(TURNSTILE_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 2, T0 + 120_000, 0xA3),
             "HELLO: durable_txn 2, the highest watermark seen"),
            ("turnstile_grants.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 120_001, 2, 10_000),
             "HELLO_ACK: gateway watermark 2; nothing kept, nothing to replay"),
            ("turnstile_grants.card_presented", DEVICE_TO_GATEWAY,
             CardPresented(4, 0, Direction.IN, T0 + 121_000, CARD), "CARD_PRESENTED txn 4, direction IN"),
            ("turnstile_grants.decision_accept", GATEWAY_TO_DEVICE, decision(4, DenyReason.OK, 0, 100),
             "DECISION ACCEPT: a grant for this card at this device"),
            ("turnstile_grants.passage", DEVICE_TO_GATEWAY,
             Passage(5, TXN_FLAG_ADVICE, Direction.IN, T0 + 122_000, 4, CARD),
             "PASSAGE txn 5 names grant 4 (same device, same identifier), ADVICE as on every PASSAGE"),
            ("turnstile_grants.decision_passage", GATEWAY_TO_DEVICE, decision(5, DenyReason.OK, 0, 105),
             "DECISION ACCEPT, template 105: counted as an entry"),
            ("turnstile_grants.passage_no_grant", DEVICE_TO_GATEWAY,
             Passage(6, TXN_FLAG_ADVICE, Direction.IN, T0 + 123_000, 3, CARD),
             "PASSAGE txn 6 names txn 3, which the gateway denied (UNKNOWN_CARD, another card)"),
            ("turnstile_grants.decision_no_grant", GATEWAY_TO_DEVICE, decision(6, DenyReason.NO_GRANT, 0, 23),
             "DECISION DENY NO_GRANT, template 23 (the reason number), balance 0: not counted"),
            ("turnstile_grants.card_txn_out_of_range", DEVICE_TO_GATEWAY,
             CardPresented(CORRUPT_TXN, 0, Direction.IN, T0 + 124_000, CARD),
             f"CARD_PRESENTED txn {CORRUPT_TXN}: more than 2^32 above 6, the highest txn the gateway knows"),
            ("turnstile_grants.nak_txn_out_of_range", GATEWAY_TO_DEVICE,
             Nak(int(NakReason.TXN_OUT_OF_RANGE), f"txn {CORRUPT_TXN} more than 2^32 above 6"),
             "NAK TXN_OUT_OF_RANGE: takes the seq, nothing decided, the txn does not count as sent"),
            ("turnstile_grants.card_renumbered", DEVICE_TO_GATEWAY,
             CardPresented(7, 0, Direction.IN, T0 + 124_000, CARD),
             "The same tap as txn 7: one above max(HELLO_ACK durable_txn 2, highest txn used 6)"),
            ("turnstile_grants.decision_renumbered", GATEWAY_TO_DEVICE, decision(7, DenyReason.OK, 0, 100),
             "DECISION ACCEPT"),
            ("turnstile_grants.durable_ack", GATEWAY_TO_DEVICE, DurableAck(7),
             "DURABLE_ACK 7: txns 4, 5 and 7 were accepted in this session before it, so they are dropped"),
        ],
    ),
    (
        "till",
        TILL_ID,
        "A till: balance query, a purchase, a cash top-up, a purchase refused for funds, an offline "
        "sale replayed as ADVICE (balance goes negative), a txn out of order, then DURABLE_ACK.",
        [
            ("till.hello", DEVICE_TO_GATEWAY, hello(TILL_ID, DeviceKind.TILL, "till-1.0.7", 0, T0, 0xB1),
             "HELLO: till"),
            ("till.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 1, 0, 10_000), "HELLO_ACK"),
            ("till.balance_query", DEVICE_TO_GATEWAY, BalanceQuery(CARD), "BALANCE_QUERY"),
            ("till.decision_balance", GATEWAY_TO_DEVICE, decision(0, DenyReason.OK, 50_000, 104, 50_000),
             "DECISION ACCEPT, txn 0, template 104 (BALANCE) params (balance)"),
            ("till.purchase", DEVICE_TO_GATEWAY, Purchase(1, 0, T0 + 5_000, 18_500, CARD, LUNCH),
             "PURCHASE txn 1: 1 x 95.00 + 2 x 45.00 = 185.00 rubles"),
            ("till.decision_purchase", GATEWAY_TO_DEVICE, decision(1, DenyReason.OK, 31_500, 102, 18_500, 31_500),
             "DECISION ACCEPT, template 102 (ACCEPT_PURCHASE) params (total, balance)"),
            ("till.topup_cash", DEVICE_TO_GATEWAY, TopupCash(2, 0, T0 + 6_000, 100_000, 7, CARD),
             "TOPUP_CASH txn 2: 1000.00 rubles taken by cashier 7"),
            ("till.decision_topup", GATEWAY_TO_DEVICE, decision(2, DenyReason.OK, 131_500, 103, 100_000, 131_500),
             "DECISION ACCEPT, template 103 (ACCEPT_TOPUP) params (amount, balance)"),
            ("till.purchase_too_big", DEVICE_TO_GATEWAY,
             Purchase(3, 0, T0 + 7_000, 165_000, CARD, BUFFET), "PURCHASE txn 3: 1650.00 rubles"),
            ("till.decision_insufficient_funds", GATEWAY_TO_DEVICE,
             decision(3, DenyReason.INSUFFICIENT_FUNDS, 131_500, 6, 165_000, 131_500),
             "DECISION DENY INSUFFICIENT_FUNDS, template 6"),
            ("till.purchase_advice", DEVICE_TO_GATEWAY,
             Purchase(4, TXN_FLAG_ADVICE, T0 + 8_000, 165_000, CARD, BUFFET),
             "PURCHASE txn 4 with ADVICE: a sale made while offline; never declined"),
            ("till.decision_advice", GATEWAY_TO_DEVICE,
             decision(4, DenyReason.OK, -33_500, 102, 165_000, -33_500),
             "DECISION ACCEPT: the balance is now negative"),
            ("till.purchase_out_of_order", DEVICE_TO_GATEWAY, Purchase(2, 0, T0 + 9_000, 3_500, CARD, (Item(3, 1, 3_500),)),
             "PURCHASE with txn 2 after txn 4 in the same session"),
            ("till.nak_txn_out_of_order", GATEWAY_TO_DEVICE,
             Nak(int(NakReason.TXN_OUT_OF_ORDER), "txn 2 after txn 4"),
             "NAK TXN_OUT_OF_ORDER (the frame took its sequence number)"),
            ("till.durable_ack", GATEWAY_TO_DEVICE, DurableAck(4), "DURABLE_ACK 4"),
            ("till.pupil_info_query", DEVICE_TO_GATEWAY, PupilInfoQuery(CARD),
             "PUPIL_INFO_QUERY: the cashier wants the photo, the parent's note and today's pre-order"),
            ("till.pupil_info", GATEWAY_TO_DEVICE,
             PupilInfo(1, 0, "photos/1/7.jpg", "Аллергия на орехи", (PreorderLine(2, 1),)),
             "PUPIL_INFO ACCEPT: photo reference, cashier note (UTF-8), one pre-ordered line (product 2 x 1)"),
        ],
    ),
    (
        "turnstile_doors",
        TURNSTILE_ID,
        "The turnstile in a school with hard anti-passback. The pupil of txn 4 went in (PASSAGE 5, "
        "turnstile_grants): the same card presented IN again is refused ANTI_PASSBACK. A grant whose "
        "PASSAGE comes later than passage_window_ms (10 s) after it on the turnstile's own clock is "
        "refused GRANT_EXPIRED: the arm had locked again.",
        [
            ("turnstile_doors.hello", DEVICE_TO_GATEWAY,
             hello(TURNSTILE_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 7, T0 + 180_000, 0xA4),
             "HELLO: durable_txn 7"),
            ("turnstile_doors.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 180_001, 7, 10_000), "HELLO_ACK"),
            ("turnstile_doors.card_inside", DEVICE_TO_GATEWAY,
             CardPresented(8, 0, Direction.IN, T0 + 181_000, CARD), "CARD_PRESENTED txn 8 IN: the pupil is inside"),
            ("turnstile_doors.decision_anti_passback", GATEWAY_TO_DEVICE,
             decision(8, DenyReason.ANTI_PASSBACK, 0, 24),
             "DECISION DENY ANTI_PASSBACK, template 24: the arm stays locked"),
            ("turnstile_doors.card_out", DEVICE_TO_GATEWAY,
             CardPresented(9, 0, Direction.OUT, T0 + 182_000, CARD), "CARD_PRESENTED txn 9 OUT"),
            ("turnstile_doors.decision_out", GATEWAY_TO_DEVICE, decision(9, DenyReason.OK, 0, 101),
             "DECISION ACCEPT, template 101 (ACCEPT_EXIT): a grant"),
            ("turnstile_doors.passage_late", DEVICE_TO_GATEWAY,
             Passage(10, TXN_FLAG_ADVICE, Direction.OUT, T0 + 182_000 + 10_001, 9, CARD),
             "PASSAGE txn 10 names grant 9, 10.001 s after it on the turnstile's clock"),
            ("turnstile_doors.decision_grant_expired", GATEWAY_TO_DEVICE,
             decision(10, DenyReason.GRANT_EXPIRED, 0, 25), "DECISION DENY GRANT_EXPIRED, template 25: not counted"),
        ],
    ),
    (
        "turnstile_list",
        TURNSTILE_ID,
        "The turnstile keeps its school's allow-list for when it cannot reach the gateway. Holding "
        "nothing (version 0), it is sent a snapshot: the first page (RESET: drop the list) with MORE, "
        "the next page after the last identifier, then the changes after the snapshot's base version "
        "(here one: a card blocked, the hot list). Versions: list epoch 7 in the high 32 bits, the "
        "school's change count in the low 32.",
        [
            ("turnstile_list.hello", DEVICE_TO_GATEWAY,
             hello(TURNSTILE_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 10, T0 + 190_000, 0xA6), "HELLO"),
            ("turnstile_list.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 190_001, 10, 10_000), "HELLO_ACK"),
            ("turnstile_list.sync_none", DEVICE_TO_GATEWAY, ListSync(0), "LIST_SYNC version 0: no list yet"),
            ("turnstile_list.snapshot_first", GATEWAY_TO_DEVICE,
             ListPage((7 << 32) | 40, LIST_FLAG_SNAPSHOT | LIST_FLAG_RESET | LIST_FLAG_MORE,
                      (ListEntry(int(ListOp.ALLOW), CARD), ListEntry(int(ListOp.BLOCK), bytes.fromhex("04000000000008")))),
             "LIST_PAGE: snapshot at base version 7:40, first page (RESET), MORE"),
            ("turnstile_list.sync_after", DEVICE_TO_GATEWAY, ListSync((7 << 32) | 40, bytes.fromhex("04000000000008")),
             "LIST_SYNC: the next snapshot page after the last identifier"),
            ("turnstile_list.snapshot_last", GATEWAY_TO_DEVICE,
             ListPage((7 << 32) | 40, LIST_FLAG_SNAPSHOT, (ListEntry(int(ListOp.ALLOW), bytes.fromhex("04000000000009")),)),
             "LIST_PAGE: the last snapshot page (no MORE)"),
            ("turnstile_list.sync_delta", DEVICE_TO_GATEWAY, ListSync((7 << 32) | 40),
             "LIST_SYNC: the changes after the snapshot's base version"),
            ("turnstile_list.delta", GATEWAY_TO_DEVICE,
             ListPage((7 << 32) | 41, 0, (ListEntry(int(ListOp.BLOCK), CARD),)),
             "LIST_PAGE: one change (the card blocked), version 7:41; nothing more"),
        ],
    ),
    (
        "till_allowance",
        TILL_ID,
        "The till of the 'till' session fetches its offline allowances (section 4.16). Holding none "
        "(version 0), it gets a fresh start: a RESET page with MORE (a real one carries up to 40 "
        "entries) making it the holder of three pupils with min(floor, balance + grace) each: 300.00, "
        "300.00 and 200.00 rubles (balances 500.00, 420.00 and 200.00, no grace), with the school's "
        "floor (300.00 rubles) and 3 offline sales per card. Asking again with that version confirms "
        "the page. The next page has no flags and two releases: the pupil of 04000000000022 bought "
        "95.00 online at till 2000002 meanwhile (accepted: 420.00 - 300.00 reserved here - 95.00 >= 0; "
        "the holder moved there), and 04000000000024 was reported lost (BLOCK: refused offline). "
        "Versions: epoch 7 in the high 32 bits, the pages sent to this till in the low 32.",
        [
            ("till_allowance.hello", DEVICE_TO_GATEWAY,
             hello(TILL_ID, DeviceKind.TILL, "till-1.0.7", 4, T0 + 600_000, 0xB2), "HELLO: durable_txn 4"),
            ("till_allowance.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 600_001, 4, 10_000),
             "HELLO_ACK: nothing kept, nothing to replay"),
            ("till_allowance.sync_none", DEVICE_TO_GATEWAY, AllowanceSync(0),
             "ALLOWANCE_SYNC version 0: the till holds no allowances"),
            ("till_allowance.page_reset", GATEWAY_TO_DEVICE,
             AllowancePage((ALLOWANCE_EPOCH << 32) | 1, LIST_FLAG_RESET | LIST_FLAG_MORE, OFFLINE_FLOOR,
                           OFFLINE_SALES_PER_CARD,
                           (AllowanceEntry(int(ListOp.ALLOW), 30_000, PUPIL_A),
                            AllowanceEntry(int(ListOp.ALLOW), 30_000, PUPIL_B),
                            AllowanceEntry(int(ListOp.ALLOW), 20_000, PUPIL_D))),
             "ALLOWANCE_PAGE 7:1, RESET | MORE: forget everything, then three cards with positive deltas"),
            ("till_allowance.sync_confirm", DEVICE_TO_GATEWAY, AllowanceSync((ALLOWANCE_EPOCH << 32) | 1),
             "ALLOWANCE_SYNC 7:1: page 7:1 applied (a confirmation); what changed since?"),
            ("till_allowance.page_release", GATEWAY_TO_DEVICE,
             AllowancePage((ALLOWANCE_EPOCH << 32) | 2, 0, OFFLINE_FLOOR, OFFLINE_SALES_PER_CARD,
                           (AllowanceEntry(int(ListOp.ALLOW), -30_000, PUPIL_B),
                            AllowanceEntry(int(ListOp.BLOCK), -20_000, PUPIL_D))),
             "ALLOWANCE_PAGE 7:2, no flags: two releases (negative deltas), one card blocked; they stay "
             "reserved until the till confirms 7:2"),
        ],
    ),
    (
        "till_offline",
        TILL_ID,
        "The same till lost the gateway and sold a breakfast alone to 04000000000021 (allowance "
        "300.00 rubles, no offline sale yet, 95.00 under the floor): it lowered the allowance to "
        "205.00, kept the sale as txn 5 with its reader time. On reconnect it replays the sale as an "
        "ADVICE first, then syncs: its version 7:2 confirms the releases, and the next page tops the "
        "holder up by what the sale used (+95.00).",
        [
            ("till_offline.hello", DEVICE_TO_GATEWAY,
             hello(TILL_ID, DeviceKind.TILL, "till-1.0.7", 4, T0 + 2_400_000, 0xB3), "HELLO: durable_txn 4"),
            ("till_offline.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 2_400_001, 4, 10_000), "HELLO_ACK"),
            ("till_offline.purchase_advice", DEVICE_TO_GATEWAY,
             Purchase(5, TXN_FLAG_ADVICE, T0 + 1_800_000, 9_500, PUPIL_A, BREAKFAST),
             "PURCHASE txn 5 with ADVICE: the offline sale, with the reader time at which it was made"),
            ("till_offline.decision_advice", GATEWAY_TO_DEVICE,
             decision(5, DenyReason.OK, 40_500, 102, 9_500, 40_500),
             "DECISION ACCEPT: posted at its reader time; the balance 500.00 - 95.00"),
            ("till_offline.durable_ack", GATEWAY_TO_DEVICE, DurableAck(5),
             "DURABLE_ACK 5: the till drops the sale (no sale awaits synchronisation any more)"),
            ("till_offline.sync", DEVICE_TO_GATEWAY, AllowanceSync((ALLOWANCE_EPOCH << 32) | 2),
             "ALLOWANCE_SYNC 7:2, after the replay: page 7:2 applied"),
            ("till_offline.page_refill", GATEWAY_TO_DEVICE,
             AllowancePage((ALLOWANCE_EPOCH << 32) | 3, 0, OFFLINE_FLOOR, OFFLINE_SALES_PER_CARD,
                           (AllowanceEntry(int(ListOp.ALLOW), 9_500, PUPIL_A),)),
             "ALLOWANCE_PAGE 7:3: the holder back to min(floor, balance) = 300.00 (hold 205.00 + 95.00)"),
        ],
    ),
    (
        "kindergarten",
        KINDERGARTEN_TURNSTILE_ID,
        "A kindergarten's turnstile (its school requires escorts). A child's card alone is refused "
        "ESCORT_REQUIRED. The grandmother's own card (a trusted person's) is accepted with template 108 "
        "(ESCORT_ACCEPTED); the child's card right after it is accepted, and its PASSAGE will name her.",
        [
            ("kindergarten.hello", DEVICE_TO_GATEWAY,
             hello(KINDERGARTEN_TURNSTILE_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 0, T0 + 300_000, 0xE1),
             "HELLO"),
            ("kindergarten.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 300_001, 0, 10_000), "HELLO_ACK"),
            ("kindergarten.child_alone", DEVICE_TO_GATEWAY,
             CardPresented(1, 0, Direction.IN, T0 + 301_000, CHILD), "CARD_PRESENTED txn 1: the child's card alone"),
            ("kindergarten.decision_escort_required", GATEWAY_TO_DEVICE,
             decision(1, DenyReason.ESCORT_REQUIRED, 0, 26), "DECISION DENY ESCORT_REQUIRED, template 26"),
            ("kindergarten.adult", DEVICE_TO_GATEWAY,
             CardPresented(2, 0, Direction.IN, T0 + 302_000, GRANNY), "CARD_PRESENTED txn 2: the grandmother's card"),
            ("kindergarten.decision_escort", GATEWAY_TO_DEVICE, decision(2, DenyReason.OK, 0, 108),
             "DECISION ACCEPT, template 108 (ESCORT_ACCEPTED): she goes in"),
            ("kindergarten.child", DEVICE_TO_GATEWAY,
             CardPresented(3, 0, Direction.IN, T0 + 305_000, CHILD), "CARD_PRESENTED txn 3: the child, 3 s later"),
            ("kindergarten.decision_child", GATEWAY_TO_DEVICE, decision(3, DenyReason.OK, 0, 100),
             "DECISION ACCEPT, template 100: with her"),
        ],
    ),
    (
        "fire_panel",
        PANEL_ID,
        "The school's fire panel raises the alarm and later resets it: numbered, journaled "
        "transactions like a sale, kept by the panel until durable.",
        [
            ("fire_panel.hello", DEVICE_TO_GATEWAY,
             hello(PANEL_ID, DeviceKind.FIRE_PANEL, "panel-3.1", 0, T0 + 200_000, 0xD1), "HELLO: fire panel"),
            ("fire_panel.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 200_001, 0, 10_000), "HELLO_ACK"),
            ("fire_panel.fire_alarm", DEVICE_TO_GATEWAY, FireAlarm(1, 0, T0 + 201_000),
             "FIRE_ALARM txn 1: the alarm went off"),
            ("fire_panel.decision_alarm", GATEWAY_TO_DEVICE, decision(1, DenyReason.OK, 0, 106),
             "DECISION ACCEPT, template 106 (FIRE_ALARM_ACCEPTED): turnstiles released, muster taken"),
            ("fire_panel.durable_ack", GATEWAY_TO_DEVICE, DurableAck(1), "DURABLE_ACK 1"),
            ("fire_panel.fire_reset", DEVICE_TO_GATEWAY, FireReset(2, 0, T0 + 900_000),
             "FIRE_RESET txn 2: the alarm is over"),
            ("fire_panel.decision_reset", GATEWAY_TO_DEVICE, decision(2, DenyReason.OK, 0, 107),
             "DECISION ACCEPT, template 107 (FIRE_RESET_ACCEPTED)"),
        ],
    ),
    (
        "turnstile_fire",
        TURNSTILE_ID,
        "A turnstile of that school during the alarm: MODE RELEASED arrives unsolicited (seq 0, like "
        "DURABLE_ACK), the turnstile confirms with MODE_APPLIED (answered with HEARTBEAT); at the reset "
        "MODE NORMAL, confirmed the same way.",
        [
            ("turnstile_fire.hello", DEVICE_TO_GATEWAY,
             hello(TURNSTILE_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 10, T0 + 200_500, 0xA5),
             "HELLO: durable_txn 10"),
            ("turnstile_fire.hello_ack", GATEWAY_TO_DEVICE, HelloAck(T0 + 200_501, 10, 10_000), "HELLO_ACK"),
            ("turnstile_fire.mode_applied_normal", DEVICE_TO_GATEWAY, ModeApplied(int(TurnstileMode.NORMAL), 0),
             "MODE_APPLIED after HELLO_ACK: the turnstile says it is in NORMAL"),
            ("turnstile_fire.heartbeat_normal", GATEWAY_TO_DEVICE, Heartbeat(T0 + 200_502),
             "HEARTBEAT: the answer to MODE_APPLIED"),
            ("turnstile_fire.mode_released", GATEWAY_TO_DEVICE, Mode(int(TurnstileMode.RELEASED), T0 + 201_002),
             "MODE RELEASED with the alarm's time (gateway clock): free passage both ways"),
            ("turnstile_fire.mode_applied_released", DEVICE_TO_GATEWAY,
             ModeApplied(int(TurnstileMode.RELEASED), T0 + 201_002), "MODE_APPLIED RELEASED: recorded as released"),
            ("turnstile_fire.heartbeat_released", GATEWAY_TO_DEVICE, Heartbeat(T0 + 201_010), "HEARTBEAT"),
            ("turnstile_fire.mode_normal", GATEWAY_TO_DEVICE, Mode(int(TurnstileMode.NORMAL), 0),
             "MODE NORMAL after the reset"),
            ("turnstile_fire.mode_applied_back", DEVICE_TO_GATEWAY, ModeApplied(int(TurnstileMode.NORMAL), 0),
             "MODE_APPLIED NORMAL"),
            ("turnstile_fire.heartbeat_back", GATEWAY_TO_DEVICE, Heartbeat(T0 + 900_010), "HEARTBEAT"),
        ],
    ),
    (
        "refused",
        STRANGER_ID,
        "A HELLO whose MAC does not verify: the gateway answers NAK AUTH_FAILED with seq 0 and closes.",
        [
            ("refused.hello", DEVICE_TO_GATEWAY,
             msgspec.structs.replace(
                 hello(STRANGER_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 0, T0, 0xC1), mac=bytes(16)
             ),
             "HELLO with an all-zero MAC"),
            ("refused.nak_auth_failed", GATEWAY_TO_DEVICE, Nak(int(NakReason.AUTH_FAILED), "bad MAC"),
             "NAK AUTH_FAILED, seq 0; both sides are CLOSED"),
        ],
    ),
]


def play_sessions() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Play every session through real Connections; return (vectors, session index)."""
    vectors: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    for session_name, device_id, description, steps in SESSIONS:
        device = Connection(Role.DEVICE, device_id)
        gateway = Connection(Role.GATEWAY)
        for name, sender, event, summary in steps:
            if sender == DEVICE_TO_GATEWAY:
                data, receiver = device.send(event), gateway
            else:
                data, receiver = gateway.send(event), device
            receiver.receive_data(data)
            received = receiver.next_event()
            assert received == event, (name, received, event)
            _, _, flags, _, frame_device, seq, mtype = _HEADER.unpack_from(data, 0)
            vectors.append(
                {
                    "name": name,
                    "role": sender,
                    "summary": summary,
                    "message_type": MessageType(mtype).name,
                    "device_id": frame_device,
                    "seq": seq,
                    "flags": flags,
                    "hex": data.hex(),
                    "fields": fields_of(event),
                }
            )
        assert device.state is gateway.state, (session_name, device.state, gateway.state)
        index.append({"name": session_name, "device_id": device_id, "description": description,
                      "frames": [step[0] for step in steps], "end_state": gateway.state.name,
                      "closes": gateway.state is State.CLOSED})
    return vectors, index


# --------------------------------------------------------------------------- invalid frames

RECEIVER_STATES = {
    "gateway:IDLE": {
        "receiver": "gateway",
        "setup": [],
        "description": "A new gateway connection: nothing received yet.",
    },
    "gateway:READY": {
        "receiver": "gateway",
        "setup": ["turnstile.hello", "turnstile.hello_ack"],
        "description": "The gateway has taken turnstile.hello and sent turnstile.hello_ack: the session "
        "of device 1000001 is open and the next request must carry seq 1.",
    },
    "device:HELLO": {
        "receiver": "device",
        "device_id": TURNSTILE_ID,
        "setup": ["turnstile.hello"],
        "description": "Device 1000001 has sent turnstile.hello and waits for HELLO_ACK (seq 0).",
    },
    "device:BUSY": {
        "receiver": "device",
        "device_id": TURNSTILE_ID,
        "setup": ["turnstile.hello", "turnstile.hello_ack", "turnstile.card_presented"],
        "description": "Device 1000001 has sent turnstile.card_presented (seq 1) and waits for its reply.",
    },
}


def invalid_frames() -> list[dict[str, Any]]:
    T = TURNSTILE_ID
    card = CardPresented(1, 0, Direction.IN, T0 + 1_000, CARD)
    card_payload = card.encode_payload()
    card_type = int(MessageType.CARD_PRESENTED)
    good = raw_frame(T, 1, card_type, card_payload)
    out: list[dict[str, Any]] = []

    def add(name: str, state: str, data: bytes, reason: NakReason, fatal: bool, takes_seq: bool | None,
            description: str, *, one_read: bool = False) -> None:
        gateway_side = state.startswith("gateway")
        out.append(
            {
                "name": name,
                "role": DEVICE_TO_GATEWAY if gateway_side else GATEWAY_TO_DEVICE,
                "receiver_state": state,
                "hex": data.hex(),
                "one_read": one_read,
                "nak_reason": reason.name,
                "nak_reason_code": int(reason),
                "fatal": fatal,
                # Only a refused HELLO closes without being fatal, and that is decided above the
                # Connection (registry, MAC): see the "refused" session. For the frames here a
                # gateway closes exactly when the error is fatal.
                "closes": fatal if gateway_side else None,
                "takes_seq": takes_seq,
                "description": description,
            }
        )

    def purchase_payload(txn: int, total: int, identifier: bytes, items: tuple[Item, ...]) -> bytes:
        head = struct.pack("<QBQI", txn, 0, T0, total) + bytes((len(identifier),)) + identifier
        return head + bytes((len(items),)) + b"".join(
            struct.pack("<IHI", i.product_code, i.quantity, i.unit_price_kopecks) for i in items
        )

    def card_with(identifier: bytes, *, txn: int = 1, flags: int = 0, direction: int = 1) -> bytes:
        return struct.pack("<QBBQ", txn, flags, direction, T0) + bytes((len(identifier),)) + identifier

    R, I = "gateway:READY", "gateway:IDLE"
    M = NakReason.MALFORMED_PAYLOAD
    # ---- framing: fatal, the connection closes
    add("bad_start_byte", R, b"\x55" + good[1:], NakReason.BAD_START_BYTE, True, None,
        "The first byte is not 0xEC; detected on the first byte.")
    add("http_request", I, b"GET / HTTP/1.1\r\n", NakReason.BAD_START_BYTE, True, None,
        "Someone speaks HTTP to the device port.")
    add("bad_version", R, raw_frame(T, 1, card_type, card_payload, version=2), NakReason.UNSUPPORTED_VERSION,
        True, None, "Version byte 2 (correct CRC): answered with a v1 NAK, then closed.")
    add("oversized_length", R, _HEADER.pack(START_BYTE, 1, 0, PAYLOAD_BYTES_MAX + 1, T, 1, card_type),
        NakReason.FRAME_TOO_LARGE, True, None,
        f"Only a header declaring a {PAYLOAD_BYTES_MAX + 1}-byte payload: refused before the body arrives.")
    add("device_mismatch", R, raw_frame(T + 1, 1, card_type, card_payload), NakReason.DEVICE_MISMATCH, True, None,
        "A frame of device 1000002 on the session of device 1000001.")
    other = hello(STRANGER_ID, DeviceKind.TURNSTILE, "turnstile-2.4.1", 0, T0, 0xC2)
    add("hello_other_device", R, raw_frame(STRANGER_ID, 0, int(MessageType.HELLO), other.encode_payload()),
        NakReason.DEVICE_MISMATCH, True, None,
        "A HELLO of device 1000002 (correctly signed) on the open session of device 1000001: refused from "
        "the header (NAK seq 0), the connection closes, the session is not handed over.")
    flood = b"".join(
        raw_frame(T, seq, int(MessageType.HEARTBEAT), Heartbeat(T0 + seq).encode_payload())
        for seq in range(1, PENDING_FRAMES_MAX + 2)
    )
    add("too_many_pending", R, flood, NakReason.TOO_MANY_PENDING, True, None,
        f"{PENDING_FRAMES_MAX + 1} well-formed HEARTBEATs (seq 1..{PENDING_FRAMES_MAX + 1}) in one read: none is "
        "answered; one NAK with seq 0 and the session's device id, then the connection closes.", one_read=True)
    flood_idle = bytes.fromhex(json_hello_payload_frame()) + b"".join(
        raw_frame(T, seq, int(MessageType.HEARTBEAT), Heartbeat(T0 + seq).encode_payload())
        for seq in range(1, PENDING_FRAMES_MAX + 1)
    )
    add("too_many_pending_with_hello", I, flood_idle, NakReason.TOO_MANY_PENDING, True, None,
        f"turnstile.hello followed by {PENDING_FRAMES_MAX} HEARTBEATs in one read: not even the HELLO is "
        "decided; the NAK carries device id 0 and seq 0.", one_read=True)
    # ---- refused before taking a sequence number: non-fatal
    add("bad_crc", R, good[:-2] + bytes((good[-2] ^ 0x01, good[-1])), NakReason.BAD_CRC, False, False,
        "turnstile.card_presented with the low CRC byte flipped.")
    add("unknown_type", R, raw_frame(T, 1, 0x55, b""), NakReason.UNKNOWN_MESSAGE, False, False,
        "Message type 0x55 is not defined in v1.")
    add("reserved_flag_secure_block", R, raw_frame(T, 1, card_type, card_payload, flags=0x02),
        NakReason.UNSUPPORTED_FLAGS, False, False, "Header flag bit 1 (secure channel) is reserved: must be 0.")
    add("reserved_flag_mac", R, raw_frame(T, 1, card_type, card_payload, flags=0x04),
        NakReason.UNSUPPORTED_FLAGS, False, False, "Header flag bit 2 (per-frame MAC) is reserved: must be 0.")
    add("reply_flag_from_device", R, raw_frame(T, 1, card_type, card_payload, flags=0x01),
        NakReason.UNSUPPORTED_FLAGS, False, False, "A device frame must not carry the REPLY flag.")
    add("bad_sequence", R, raw_frame(T, 2, card_type, card_payload), NakReason.BAD_SEQUENCE, False, False,
        "seq 2 where seq 1 is expected.")
    add("sequence_reused", R, raw_frame(T, 0, card_type, card_payload), NakReason.SEQUENCE_REUSED, False, False,
        "seq 0 after HELLO: 0 belongs to the HELLO.")
    add("request_before_hello", I, good, NakReason.OUT_OF_STATE, False, False,
        "A request on a connection without a session.")
    add("hello_nonzero_seq", I, raw_frame(T, 1, int(MessageType.HELLO), bytes.fromhex(
        json_hello_payload())), NakReason.BAD_SEQUENCE, False, False, "HELLO must carry seq 0.")
    hello_head = struct.pack("<BB", DeviceKind.TURNSTILE, FIRMWARE_BYTES_MAX + 1) + b"f" * (FIRMWARE_BYTES_MAX + 1)
    add("hello_firmware_too_long", I,
        raw_frame(T, 0, int(MessageType.HELLO), hello_head + bytes(16 + 32)), M, False, False,
        f"Firmware string of {FIRMWARE_BYTES_MAX + 1} bytes (at most {FIRMWARE_BYTES_MAX}).")
    add("hello_firmware_not_utf8", I,
        raw_frame(T, 0, int(MessageType.HELLO), struct.pack("<BB", 1, 2) + b"\xff\xfe" + bytes(48)), M, False, False,
        "Firmware bytes that are not UTF-8.")
    add("hello_unknown_kind", I,
        raw_frame(T, 0, int(MessageType.HELLO), struct.pack("<BB", 9, 0) + bytes(48)), M, False, False,
        "Device kind 9 is not defined.")
    add("hello_truncated", I, raw_frame(T, 0, int(MessageType.HELLO), struct.pack("<BB", 1, 0) + bytes(47)),
        M, False, False, "HELLO one byte short of its fields (the MAC is cut).")
    # ---- taken: the frame took its sequence number, the NAK is the reply to it
    add("request_reply_type_from_device", R,
        raw_frame(T, 1, int(MessageType.DECISION), decision(1, DenyReason.OK, 0, 100).encode_payload()),
        NakReason.OUT_OF_STATE, False, True, "A device sends DECISION, a gateway-only message.")
    add("truncated_payload", R, raw_frame(T, 1, card_type, card_payload[:-3]), M, False, True,
        "CARD_PRESENTED whose identifier is 3 bytes shorter than its length byte says (length and CRC consistent).")
    add("trailing_bytes", R, raw_frame(T, 1, card_type, card_payload + b"\x00"), M, False, True,
        "CARD_PRESENTED with one byte after the identifier.")
    add("identifier_too_short", R, raw_frame(T, 1, card_type, card_with(bytes(IDENTIFIER_BYTES_MIN - 1))),
        M, False, True, f"A {IDENTIFIER_BYTES_MIN - 1}-byte identifier (at least {IDENTIFIER_BYTES_MIN}).")
    add("identifier_too_long", R, raw_frame(T, 1, card_type, card_with(bytes(IDENTIFIER_BYTES_MAX + 1))),
        M, False, True, f"A {IDENTIFIER_BYTES_MAX + 1}-byte identifier (at most {IDENTIFIER_BYTES_MAX}).")
    add("txn_zero", R, raw_frame(T, 1, card_type, card_with(CARD, txn=0)), M, False, True,
        "txn 0 is not a transaction number.")
    add("unknown_txn_flag", R, raw_frame(T, 1, card_type, card_with(CARD, flags=0x02)), M, False, True,
        "Transaction flag 0x02 is not defined.")
    add("bad_direction", R, raw_frame(T, 1, card_type, card_with(CARD, direction=3)), M, False, True,
        "Direction 3 (only 1 IN and 2 OUT exist).")
    add("passage_granted_not_before", R, raw_frame(T, 1, int(MessageType.PASSAGE),
        struct.pack("<QBBQQ", 5, 1, 1, T0, 5) + bytes((len(CARD),)) + CARD), M, False, True,
        "PASSAGE whose granted_txn is not below its txn.")
    add("purchase_total_mismatch", R, raw_frame(T, 1, int(MessageType.PURCHASE),
        purchase_payload(1, 18_000, CARD, LUNCH)), M, False, True,
        "PURCHASE total 180.00 where the items sum to 185.00.")
    add("purchase_zero_items", R, raw_frame(T, 1, int(MessageType.PURCHASE), purchase_payload(1, 0, CARD, ())),
        M, False, True, "PURCHASE with no items.")
    many = (Item(1, 1, 100),) * (ITEMS_MAX + 1)
    add("purchase_too_many_items", R, raw_frame(T, 1, int(MessageType.PURCHASE),
        purchase_payload(1, 100 * (ITEMS_MAX + 1), CARD, many)), M, False, True,
        f"PURCHASE with {ITEMS_MAX + 1} items (at most {ITEMS_MAX}).")
    add("purchase_count_mismatch", R, raw_frame(T, 1, int(MessageType.PURCHASE),
        purchase_payload(1, 18_500, CARD, LUNCH)[:-10]), M, False, True,
        "PURCHASE whose item count says 2 but holds 1 item.")
    add("purchase_zero_quantity", R, raw_frame(T, 1, int(MessageType.PURCHASE),
        purchase_payload(1, 0, CARD, ())[:-1] + b"\x01" + struct.pack("<IHI", 1, 0, 100)), M, False, True,
        "An item with quantity 0.")
    add("topup_zero_amount", R, raw_frame(T, 1, int(MessageType.TOPUP_CASH),
        struct.pack("<QBQII", 1, 0, T0, 0, 7) + bytes((len(CARD),)) + CARD), M, False, True,
        "TOPUP_CASH of 0 kopecks.")
    add("topup_zero_cashier", R, raw_frame(T, 1, int(MessageType.TOPUP_CASH),
        struct.pack("<QBQII", 1, 0, T0, 100, 0) + bytes((len(CARD),)) + CARD), M, False, True,
        "TOPUP_CASH with cashier id 0.")
    add("balance_query_trailing", R, raw_frame(T, 1, int(MessageType.BALANCE_QUERY),
        bytes((len(CARD),)) + CARD + b"\x00"), M, False, True, "BALANCE_QUERY with a byte after the identifier.")
    add("heartbeat_wrong_length", R, raw_frame(T, 1, int(MessageType.HEARTBEAT), bytes(7)), M, False, True,
        "HEARTBEAT with a 7-byte payload (must be 8).")
    add("allowance_sync_wrong_length", R, raw_frame(T, 1, int(MessageType.ALLOWANCE_SYNC), bytes(7)), M, False,
        True, "ALLOWANCE_SYNC with a 7-byte payload (must be 8). Checked before the device kind: a malformed "
        "payload is refused by any receiver.")
    # ---- frames a device receives (a device never sends NAK: it logs and drops, or closes if fatal)
    B = "device:BUSY"
    dec = int(MessageType.DECISION)

    def decision_payload(outcome: int, reason: int, flags: int = 0, params: tuple[int, ...] = ()) -> bytes:
        return struct.pack("<QBBBqBHB", 1, outcome, reason, flags, 0, NO_ITEM_INDEX, 100, len(params)) + b"".join(
            struct.pack("<q", p) for p in params
        )

    add("decision_without_reply_flag", B, raw_frame(T, 1, dec, decision_payload(1, 0)),
        NakReason.UNSUPPORTED_FLAGS, False, None, "A gateway frame must carry the REPLY flag.")
    add("decision_wrong_seq", B, raw_frame(T, 2, dec, decision_payload(1, 0), flags=1),
        NakReason.BAD_SEQUENCE, False, None, "A reply to seq 2 while seq 1 is in flight.")
    add("decision_too_many_params", B, raw_frame(T, 1, dec, decision_payload(1, 0, params=(1, 2, 3, 4, 5)), flags=1),
        M, False, None, "DECISION with 5 display parameters (at most 4).")
    add("decision_accept_with_reason", B, raw_frame(T, 1, dec, decision_payload(1, 6), flags=1), M, False, None,
        "ACCEPT goes with reason OK (0) only.")
    add("decision_deny_with_ok", B, raw_frame(T, 1, dec, decision_payload(0, 0), flags=1), M, False, None,
        "DENY goes with a reason other than OK (0).")
    add("decision_bad_outcome", B, raw_frame(T, 1, dec, decision_payload(2, 1), flags=1), M, False, None,
        "Outcome 2 (only 0 DENY and 1 ACCEPT exist).")
    add("decision_unknown_flag", B, raw_frame(T, 1, dec, decision_payload(1, 0, flags=0x02), flags=1), M, False,
        None, "DECISION flag 0x02 is not defined.")
    page_type = int(MessageType.ALLOWANCE_PAGE)

    def allowance_page_payload(flags: int, entries: list[tuple[int, int, bytes]], count: int | None = None) -> bytes:
        head = struct.pack("<QBIBB", (ALLOWANCE_EPOCH << 32) | 1, flags, OFFLINE_FLOOR, OFFLINE_SALES_PER_CARD,
                           len(entries) if count is None else count)
        return head + b"".join(struct.pack("<Bi", op, delta) + bytes((len(ident),)) + ident
                               for op, delta, ident in entries)

    one = [(int(ListOp.ALLOW), 30_000, PUPIL_A)]
    add("allowance_page_snapshot_flag", B, raw_frame(T, 1, page_type, allowance_page_payload(
        LIST_FLAG_SNAPSHOT | LIST_FLAG_RESET, one), flags=1), M, False, None,
        "ALLOWANCE_PAGE with flag 0x02 (LIST_PAGE's SNAPSHOT): only 0x01 MORE and 0x04 RESET are defined.")
    many_cards = [(int(ListOp.ALLOW), 100, bytes.fromhex("040000000001") + bytes((n,)))
                  for n in range(ALLOWANCE_PAGE_ENTRIES_MAX + 1)]
    add("allowance_page_too_many_entries", B, raw_frame(T, 1, page_type, allowance_page_payload(0, many_cards),
        flags=1), M, False, None,
        f"ALLOWANCE_PAGE with {ALLOWANCE_PAGE_ENTRIES_MAX + 1} entries (at most {ALLOWANCE_PAGE_ENTRIES_MAX}).")
    add("allowance_page_bad_op", B, raw_frame(T, 1, page_type, allowance_page_payload(
        0, [(0, 30_000, PUPIL_A)]), flags=1), M, False, None,
        "ALLOWANCE_PAGE entry with op 0 (only 1 ALLOW, 2 BLOCK and 3 REMOVE exist).")
    add("allowance_page_count_mismatch", B, raw_frame(T, 1, page_type, allowance_page_payload(0, one, count=2),
        flags=1), M, False, None, "ALLOWANCE_PAGE whose count says 2 but holds 1 entry.")
    detail = b"x" * (NAK_DETAIL_BYTES_MAX + 1)
    add("nak_detail_too_long", B, raw_frame(T, 1, int(MessageType.NAK),
        bytes((int(NakReason.SERVER_BUSY), len(detail))) + detail, flags=1), M, False, None,
        f"NAK with a {NAK_DETAIL_BYTES_MAX + 1}-byte detail (at most {NAK_DETAIL_BYTES_MAX}).")
    add("nak_detail_not_utf8", B, raw_frame(T, 1, int(MessageType.NAK), b"\x11\x02\xff\xfe", flags=1), M, False,
        None, "NAK detail bytes that are not UTF-8.")
    add("hello_ack_zero_heartbeat", "device:HELLO", raw_frame(T, 0, int(MessageType.HELLO_ACK),
        struct.pack("<QQI", T0, 0, 0), flags=1), M, False, None, "HELLO_ACK with heartbeat interval 0.")
    add("device_wrong_device_id", B, raw_frame(T + 1, 1, dec, decision_payload(1, 0), flags=1),
        NakReason.DEVICE_MISMATCH, True, None, "A reply addressed to another device.")
    return out


def json_hello_payload() -> str:
    """The payload of turnstile.hello, reused with a wrong sequence number."""
    return SESSIONS[0][3][0][2].encode_payload().hex()


def json_hello_payload_frame() -> str:
    """The whole frame of turnstile.hello (device 1000001, seq 0)."""
    return raw_frame(TURNSTILE_ID, 0, int(MessageType.HELLO), bytes.fromhex(json_hello_payload())).hex()


# --------------------------------------------------------------------------- check + render


def event_of(vector: dict[str, Any]) -> Event:
    """The event a valid vector's frame carries."""
    data = bytes.fromhex(vector["hex"])
    return EVENT_TYPES[data[HEADER_BYTES - 1]].decode_payload(data[HEADER_BYTES:-CRC_BYTES])


def play_receiver(state_name: str, by_name: dict[str, dict[str, Any]]) -> Connection:
    """A Connection brought into ``state_name`` by replaying the setup vectors."""
    state = RECEIVER_STATES[state_name]
    gateway_side = state["receiver"] == "gateway"
    conn = Connection(Role.GATEWAY) if gateway_side else Connection(Role.DEVICE, state["device_id"])
    for name in state["setup"]:
        vector = by_name[name]
        event = event_of(vector)
        ours = (vector["role"] == GATEWAY_TO_DEVICE) == gateway_side
        if ours:
            assert conn.send(event).hex() == vector["hex"], name
        else:
            conn.receive_data(bytes.fromhex(vector["hex"]))
            assert conn.next_event() == event, name
    return conn


def build() -> dict[str, Any]:
    valid, sessions = play_sessions()
    document = {
        "protocol": "ecard device protocol",
        "version": PROTOCOL_VERSION,
        "generated_by": "tests/vectors/generate.py (do not edit by hand)",
        "spec": "docs/protocol.md",
        "conventions": {
            "hex": "lowercase hex of the whole frame: 14-byte header, payload, CRC-16 (little-endian)",
            "role": "who sends the frame: device->gateway or gateway->device",
            "fields": "the decoded payload; bytes as lowercase hex, PURCHASE items, PUPIL_INFO lines and "
            "LIST_PAGE / ALLOWANCE_PAGE entries as objects, DECISION params as a list",
            "receiver_state": "invalid frames are fed to a receiver brought into this state by replaying the "
            "'setup' frames of receiver_states (the receiver sends its own frames, receives the peer's)",
            "takes_seq": "gateway receivers only: true if the refused frame took its sequence number "
            "(the NAK is the cached reply to it), false if the next frame must reuse that sequence number",
            "fatal": "framing is lost: the receiver moves to ERROR, which is sticky (every later read fails "
            "the same way); a gateway sends the NAK and closes the connection, a device closes it",
            "closes": "gateway receivers only: the gateway closes the connection after its NAK. True for "
            "every fatal error; a session's 'closes' is true when a decoded HELLO was refused (the gateway "
            "moves to CLOSED, not ERROR: not fatal, but the connection ends)",
            "one_read": "the invalid bytes arrive in one read (TOO_MANY_PENDING is decided per read); "
            "fed byte by byte they would be a different case",
            "end_state": "the state both Connections are in after the session's frames (READY, or CLOSED "
            "after a refused HELLO)",
        },
        "crc": {
            "name": "CRC-16/AUG-CCITT",
            "width": 16,
            "poly": "0x1021",
            "init": "0x1d0f",
            "refin": False,
            "refout": False,
            "xorout": "0x0000",
            "check_input_ascii": "123456789",
            "check": f"0x{crc16(b'123456789'):04x}",
        },
        "device_keys": {str(k): v.hex() for k, v in KEYS.items()},
        "sessions": sessions,
        "valid": valid,
        "receiver_states": RECEIVER_STATES,
        "invalid": [],
    }
    document["invalid"] = invalid_frames()
    check_invalid(document)
    return document


def check_invalid(document: dict[str, Any]) -> None:
    """Feed every invalid frame to a receiver in its state: the error must be the one recorded."""
    by_name = {v["name"]: v for v in document["valid"]}
    for vector in document["invalid"]:
        conn = play_receiver(vector["receiver_state"], by_name)
        conn.receive_data(bytes.fromhex(vector["hex"]))
        try:
            result = conn.next_event()
        except RemoteProtocolError as exc:
            assert exc.reason.name == vector["nak_reason"], (vector["name"], exc)
            assert exc.fatal == vector["fatal"], (vector["name"], exc)
        else:
            raise AssertionError(f"{vector['name']}: no error, got {result!r}")


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
