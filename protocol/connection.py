"""Sans-IO connection of protocol v1: bytes in, events out; events in, bytes out.

    conn = Connection(Role.GATEWAY)
    conn.receive_data(data)          # b"" means the peer closed
    event = conn.next_event()        # an Event, NEED_DATA, CLOSED, or a Retransmit
    data = conn.send(reply_event)    # bytes to write

No asyncio, no socket, no clock: the caller owns the I/O and the time.

Errors: a frame the peer got wrong raises ``RemoteProtocolError`` from
``next_event`` with the NAK reason to answer with. If framing is lost (bad start
byte, unsupported version, oversized length, flood) the error is fatal and the
connection is in ERROR for good; otherwise the bad frame has been consumed and
the connection goes on. Misuse by our own side raises ``LocalProtocolError``.
"""

from __future__ import annotations

import hmac
import struct
from binascii import crc_hqx
from typing import Final

import msgspec

from .codes import FLAG_MAC, FLAG_REPLY, MessageType, NakReason
from .events import EVENT_TYPES, DurableAck, Event, Hello, HelloAck, Nak, PayloadError
from .limits import (
    CRC_BYTES,
    FRAME_MAC_BYTES,
    HEADER_BYTES,
    HELLO_CRYPTOGRAM_BYTES,
    MAC_FAILURES_MAX,
    PAYLOAD_BYTES_MAX,
    PENDING_FRAMES_MAX,
    PROTOCOL_VERSION,
    RECEIVE_BUFFER_BYTES_MAX,
    SEQ_MAX,
    START_BYTE,
)
from .secure import ZERO_MAC, FrameMac, cryptogram, session_keys
from .state import TRANSITIONS, Direction, Role, State

HEADER: Final = struct.Struct("<BBBHIIB")  # start, version, flags, length, device id, seq, type
_CRC: Final = struct.Struct("<H")
CRC_INIT: Final = 0x1D0F  # CRC-16/AUG-CCITT as OSDP: poly 0x1021, init 0x1D0F, no reflection
assert HEADER.size == HEADER_BYTES
# The smallest frame is a header and a CRC: fewer bytes than PENDING_FRAMES_MAX + 1 of
# them cannot hold a flood, so the common read (one frame) is never scanned.
_FLOOD_BYTES_MIN: Final = (PENDING_FRAMES_MAX + 1) * (HEADER_BYTES + CRC_BYTES)


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CLOSED: Final = _Sentinel("CLOSED")
_DROPPED: Final = _Sentinel("DROPPED")  # internal: a frame consumed without an event


class Retransmit:
    """The peer sent its last request again (same sequence, same bytes).

    ``reply`` holds the exact bytes of the reply already sent; write them again
    and decide nothing (OSDP: "send your last reply again").
    """

    __slots__ = ("reply",)

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def __repr__(self) -> str:
        return f"Retransmit({self.reply.hex()})"


class ProtocolError(Exception):
    pass


class LocalProtocolError(ProtocolError):
    """Our own side tried something the state table does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something wrong; answer with ``Nak(reason)``."""

    def __init__(self, reason: NakReason, detail: str, *, fatal: bool, seq: int) -> None:
        super().__init__(f"{reason.name}: {detail}")
        self.reason = reason
        self.detail = detail
        self.fatal = fatal
        self.seq = seq

    def nak(self) -> Nak:
        return Nak(int(self.reason), self.detail[:64])


# NAK reasons for a frame that took no sequence number (the frame could not be trusted
# or placed); after them the device sends its next frame with the same seq
# (docs/protocol.md, section 7.1).
SEQ_NOT_TAKEN: Final = frozenset(
    {
        NakReason.BAD_CRC,
        NakReason.UNSUPPORTED_FLAGS,
        NakReason.UNKNOWN_MESSAGE,
        NakReason.BAD_SEQUENCE,
        NakReason.SEQUENCE_REUSED,
        NakReason.MAC_INVALID,
    }
)
_MAC_END: Final = FRAME_MAC_BYTES + CRC_BYTES  # a MACed frame ends with its MAC, then the CRC
# Unsolicited gateway frames (DURABLE_ACK and its kind): what the gateway may send, and a device
# receive, in READY without leaving it, NAK aside. They carry seq 0, answer nothing, are in the
# gateway's MAC chain but are not replies (section 5a.4). Read from the state table.
UNSOLICITED: Final = frozenset(
    cls
    for (role, state, direction, cls), new_state in TRANSITIONS.items()
    if role is Role.GATEWAY and state is State.READY and direction is Direction.SEND
    and new_state is State.READY and cls is not Nak
)
_HELLO: Final = int(MessageType.HELLO)
_PAYLOAD_ERRORS: Final = (PayloadError, ValueError, TypeError, OverflowError)  # a payload that does not decode
_DURABLE_ACK: Final = int(MessageType.DURABLE_ACK)
_GATEWAY_MAC_FLAGS: Final = FLAG_REPLY | FLAG_MAC
# A MACed DURABLE_ACK before its MAC: header (seq 0) and the watermark, in one pack.
_DURABLE_ACK_BODY: Final = struct.Struct("<BBBHIIBQ")
_U64_MAX: Final = 0xFFFFFFFFFFFFFFFF


def crc16(data: bytes) -> int:
    return crc_hqx(data, CRC_INIT)


def encode_frame(device_id: int, seq: int, event: Event, *, reply: bool) -> bytes:
    """The whole frame for ``event``: header, payload, CRC (no MAC: HELLO, HELLO_ACK, refusals)."""
    payload = event.encode_payload()
    head = HEADER.pack(
        START_BYTE,
        PROTOCOL_VERSION,
        FLAG_REPLY if reply else 0,
        len(payload),
        device_id,
        seq,
        event.message_type,
    )
    body = head + payload
    return body + _CRC.pack(crc_hqx(body, CRC_INIT))


def encode_mac_frame(device_id: int, seq: int, event: Event, *, reply: bool, signer: FrameMac, chain: bytes) -> bytes:
    """A secure-channel frame: header (FLAG_MAC, length counting the MAC), payload, MAC, CRC.

    MAC = CMAC(key, chain || header || payload)[:8] (section 5a); the CRC covers the MAC too.
    """
    payload = event.encode_payload()
    head = HEADER.pack(
        START_BYTE,
        PROTOCOL_VERSION,
        (FLAG_REPLY | FLAG_MAC) if reply else FLAG_MAC,
        len(payload) + FRAME_MAC_BYTES,
        device_id,
        seq,
        event.message_type,
    )
    body = head + payload
    body += signer.sign(chain, body)
    return body + _CRC.pack(crc_hqx(body, CRC_INIT))


def frame_mac(frame: bytes) -> bytes:
    """The MAC field of a secure-channel frame (the 8 bytes before the CRC)."""
    return frame[-_MAC_END:-CRC_BYTES]


def next_seq(seq: int) -> int:
    """The sequence number after ``seq``; 0 is kept for HELLO, so SEQ_MAX wraps to 1."""
    return 1 if seq >= SEQ_MAX else seq + 1


class Connection:
    """One side of one device session.

    Secure channel (section 5a): a device Connection made with its ``key`` checks the
    gateway's cryptogram in HELLO_ACK and MACs every frame after it; a gateway Connection
    turns it on with ``accept_hello`` (the shell's HELLO_ACK). Without them the
    Connection speaks the bare framing of sections 2-10 (the sans-IO tests and the
    framing vectors use that; the gateway never does).
    """

    def __init__(self, role: Role, device_id: int = 0, key: bytes | None = None) -> None:
        self.role = role
        self._device_key = key  # device side: the key the gateway's cryptogram must verify under
        self._tx: FrameMac | None = None  # session MAC keys; None: no secure session
        self._rx: FrameMac | None = None
        self._own_mac = ZERO_MAC  # MAC of our own last frame in the chain (device: of the frame that took its seq)
        self._own_mac_prev = ZERO_MAC  # device: _own_mac before the frame in flight
        self._peer_mac = ZERO_MAC  # MAC of the peer's last frame in the chain (device: of the gateway's last frame)
        self._reply_mac = ZERO_MAC  # MAC of the gateway's last reply (not DURABLE_ACK): sent (gateway) / received (device)
        self._answer_mac = ZERO_MAC  # gateway: MAC field of the frame being read
        self._answering_hello = False  # gateway: the frame being answered is a HELLO (answered without a MAC)
        self._rnd_a = b""  # the nonce (RND.A) of the HELLO of this session
        self._hello_mac = b""  # the MAC of that HELLO
        self.mac_failures = 0  # frames of this session whose MAC did not verify
        self.state = State.IDLE
        self.device_id = device_id  # the gateway learns it from HELLO
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._last_seq = 0  # gateway: last request seq taken; device: last request seq sent
        self._prev_seq = 0  # device: _last_seq before the frame in flight took its number
        self._pending_seq = 0  # seq of the frame in flight that the next reply answers
        self._nak_seq = 0  # seq to put on a NAK for a frame that took no seq
        self._last_request = b""  # gateway: frame of the last request taken; device: last frame sent
        self._last_reply = b""  # gateway: frame of the reply to it (the retransmit cache)
        self._accept_flag = FLAG_REPLY if role is Role.DEVICE else 0
        # This role's slice of the state table, keyed (state, event type) for speed.
        self._recv_table = {(k[1], k[3]): v for k, v in TRANSITIONS.items() if k[0] is role and k[2] is Direction.RECV}
        self._send_table = {(k[1], k[3]): v for k, v in TRANSITIONS.items() if k[0] is role and k[2] is Direction.SEND}

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        self._buffer += data
        if self.role is Role.GATEWAY and len(self._buffer) >= _FLOOD_BYTES_MIN and self._error is None:
            self._check_flood()

    def _check_flood(self) -> None:
        """More than PENDING_FRAMES_MAX complete frames at once: the peer does not wait
        for replies. Refuse before ANY of them is decided (the next ``next_event``
        raises TOO_MANY_PENDING, fatal: the connection closes)."""
        buf = self._buffer
        size = len(buf)
        position = count = 0
        while position + HEADER_BYTES <= size:
            if buf[position] != START_BYTE:
                return  # framing is lost there: next_event reports it in order
            length = buf[position + 3] | buf[position + 4] << 8
            position += HEADER_BYTES + length + CRC_BYTES
            if position > size:
                return
            count += 1
            if count > PENDING_FRAMES_MAX:
                self.state = State.ERROR
                self._nak_seq = 0
                self._buffer.clear()
                self._error = RemoteProtocolError(
                    NakReason.TOO_MANY_PENDING, f"more than {PENDING_FRAMES_MAX} frames pending", fatal=True, seq=0
                )
                return

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def next_event(self) -> Event | Retransmit | _Sentinel:
        # One frame per turn; a frame consumed without an event (_DROPPED: device side) takes
        # the next. One method, not a helper per frame: this runs twice for every request.
        while True:
            if self._error is not None:
                raise self._error
            self._answering_hello = False  # until a HELLO is read: a refusal now answers no HELLO
            buf = self._buffer
            size = len(buf)
            if size < HEADER_BYTES:  # (nothing buffered: the common second call after a read's one frame)
                if buf and buf[0] != START_BYTE:
                    self._fail(NakReason.BAD_START_BYTE, f"byte 0x{buf[0]:02x} where a frame must start", 0)
                return CLOSED if self._eof else NEED_DATA
            if size > RECEIVE_BUFFER_BYTES_MAX:
                self._fail(NakReason.BUFFER_OVERFLOW, f"more than {RECEIVE_BUFFER_BYTES_MAX} bytes buffered", 0)
            start, version, flags, length, device_id, seq, mtype = HEADER.unpack_from(buf, 0)
            if start != START_BYTE:
                self._fail(NakReason.BAD_START_BYTE, f"byte 0x{start:02x} where a frame must start", seq)
            if version != PROTOCOL_VERSION:
                self._fail(NakReason.UNSUPPORTED_VERSION, f"version {version}, this peer speaks {PROTOCOL_VERSION}", seq)
            if length > PAYLOAD_BYTES_MAX:
                self._fail(NakReason.FRAME_TOO_LARGE, f"payload of {length} bytes, at most {PAYLOAD_BYTES_MAX}", seq)
            end = HEADER_BYTES + length + CRC_BYTES
            if size < end:
                return CLOSED if self._eof else NEED_DATA
            if size == end:  # the common case: the read held exactly one frame
                frame = bytes(buf)
                buf.clear()
            else:
                frame = bytes(buf[:end])
                del buf[:end]
            maced = flags == self._accept_flag | FLAG_MAC and length >= FRAME_MAC_BYTES
            self._answer_mac = frame[-_MAC_END:-CRC_BYTES] if maced else ZERO_MAC
            self._answering_hello = mtype == _HELLO
            if _CRC.unpack_from(frame, end - CRC_BYTES)[0] != crc_hqx(frame[: end - CRC_BYTES], CRC_INIT):
                raise self._reject(NakReason.BAD_CRC, "CRC mismatch", seq)
            if flags != self._accept_flag and not maced:
                raise self._reject(NakReason.UNSUPPORTED_FLAGS, f"flags 0x{flags:02x}", seq)
            cls = EVENT_TYPES.get(mtype)
            if cls is None:
                raise self._reject(NakReason.UNKNOWN_MESSAGE, f"message type 0x{mtype:02x}", seq)
            if self.role is Role.GATEWAY:
                if maced is not (self._rx is not None and cls is not Hello):
                    # In a secure session every frame but HELLO carries a MAC; outside one, none does.
                    raise self._reject(NakReason.UNSUPPORTED_FLAGS, f"flags 0x{flags:02x} for {cls.__name__}", seq)
                return self._gateway_receive(cls, frame, device_id, seq)
            if maced is not (self._rx is not None):
                if maced and self.state is State.HELLO and self._device_key is not None:
                    continue  # a frame of the session our HELLO ended, crossing it: its keys are gone
                raise self._reject(NakReason.UNSUPPORTED_FLAGS, f"flags 0x{flags:02x}", seq)
            event = self._device_receive(cls, frame, device_id, seq)
            if event is not _DROPPED:
                return event

    def _gateway_receive(self, cls: type[Event], frame: bytes, device_id: int, seq: int) -> Event | Retransmit:
        state = self.state
        if cls is Hello:
            if seq != 0:
                raise self._reject(NakReason.BAD_SEQUENCE, "HELLO must carry sequence 0", seq)
            new_state = self._recv_table.get((state, Hello))
            if new_state is None:
                raise self._reject(NakReason.OUT_OF_STATE, f"HELLO in state {state.value}", seq)
            if state is State.READY and device_id != self.device_id:
                # A session belongs to one device for its whole life: another device's
                # HELLO on it is an attack or a confused proxy, never a restart.
                self._fail(NakReason.DEVICE_MISMATCH, f"HELLO of device {device_id} on the session of {self.device_id}", 0)
            event = self._decode(cls, frame, seq)
            self.device_id = device_id
            self._last_seq = 0
            self._pending_seq = 0
            self._last_request = b""
            self._last_reply = b""
            self._tx = self._rx = None  # a new handshake: the old session's keys are gone
            self._rnd_a = event.nonce
            self._hello_mac = event.mac
            self.state = new_state
            return event
        if state is State.IDLE or state is State.HELLO or state is State.CLOSED:
            # No open session (HELLO not answered yet counts): nothing takes a sequence number.
            raise self._reject(NakReason.OUT_OF_STATE, "no session: send HELLO first", seq)
        if device_id != self.device_id:
            self._fail(NakReason.DEVICE_MISMATCH, f"device {device_id} on the session of {self.device_id}", seq)
        if seq == self._last_seq and frame == self._last_request and self._last_reply:
            return Retransmit(self._last_reply)  # the very bytes already verified and answered
        rx = self._rx
        if rx is not None:
            mac = self._answer_mac
            if not rx.verify(self._peer_mac + self._reply_mac, frame[:-_MAC_END], mac):
                self._mac_failed(seq)
        last_seq = self._last_seq
        if seq == last_seq:
            raise self._reject(NakReason.SEQUENCE_REUSED, f"sequence {seq} was used for another frame", seq)
        expected = 1 if last_seq >= SEQ_MAX else last_seq + 1  # next_seq, inline
        if seq != expected:
            raise self._reject(NakReason.BAD_SEQUENCE, f"expected sequence {expected}", seq)
        # The frame takes its sequence number: whatever we answer is cached for a retransmit.
        if rx is not None:
            self._peer_mac = self._answer_mac  # the device's chain moves only with a frame that took its seq
        self._last_seq = seq
        self._pending_seq = seq
        self._last_request = frame
        self._last_reply = b""
        new_state = self._recv_table.get((state, cls))
        if new_state is None:
            self.state = State.BUSY
            raise RemoteProtocolError(NakReason.OUT_OF_STATE, f"{cls.__name__} in state {state.value}", fatal=False, seq=seq)
        try:  # self._decode(cls, frame, seq, taken=True), inline: once per request
            event = cls.decode_payload(frame[HEADER_BYTES : -_MAC_END if frame[2] & FLAG_MAC else -CRC_BYTES])
        except _PAYLOAD_ERRORS as exc:
            self.state = State.BUSY
            raise RemoteProtocolError(NakReason.MALFORMED_PAYLOAD, str(exc), fatal=False, seq=seq) from None
        self.state = new_state
        return event

    def _device_receive(self, cls: type[Event], frame: bytes, device_id: int, seq: int) -> Event | _Sentinel:
        if device_id != self.device_id and not (device_id == 0 and cls is Nak):
            # Device id 0: a NAK from a gateway that has not decoded our HELLO (e.g. SERVER_BUSY).
            self._fail(NakReason.DEVICE_MISMATCH, f"frame for device {device_id}", seq)
        state = self.state
        rx = self._rx
        if cls not in UNSOLICITED and cls is not Hello:
            expected = 0 if state is State.HELLO else self._pending_seq
            if state is State.READY and seq == self._pending_seq:
                # A second copy of a reply we already have (we retransmitted while it was on its way):
                # dropped. In a secure session a copy does not verify (the chain has moved on); a frame
                # that does is a new gateway frame (the NAK of a frame someone else sent with our
                # seq): it moves the chain, and is dropped too.
                if rx is not None and rx.verify(self._peer_mac, frame[:-_MAC_END], frame[-_MAC_END:-CRC_BYTES]):
                    self._peer_mac = self._reply_mac = frame[-_MAC_END:-CRC_BYTES]
                return _DROPPED
            if rx is not None:
                self._verify_gateway_frame(rx, frame, seq, reply=True)
            if seq != expected:
                raise self._reject(NakReason.BAD_SEQUENCE, f"reply to {seq}, expected {expected}", seq)
        elif rx is not None:
            self._verify_gateway_frame(rx, frame, seq, reply=False)
        new_state = self._recv_table.get((state, cls))
        if new_state is None:
            raise self._reject(NakReason.OUT_OF_STATE, f"{cls.__name__} in state {state.value}", seq)
        event = self._decode(cls, frame, seq)
        if cls is HelloAck and self._device_key is not None:
            self._open_device_session(event, frame)
        if cls is Nak and state is State.BUSY and event.reason in SEQ_NOT_TAKEN:
            # The gateway refused our frame before it took a sequence number: the next frame
            # reuses it, and our chain goes back to the frame before it.
            self._last_seq = self._prev_seq
            self._own_mac = self._own_mac_prev
        self.state = new_state
        return event

    # ------------------------------------------------------------------ secure channel

    def _verify_gateway_frame(self, rx: FrameMac, frame: bytes, seq: int, *, reply: bool) -> None:
        """Device side: a gateway frame chains from the gateway's previous frame (any type)."""
        mac = frame[-_MAC_END:-CRC_BYTES]
        if not rx.verify(self._peer_mac, frame[:-_MAC_END], mac):
            self._mac_failed(seq)
        self._peer_mac = mac
        if reply:
            self._reply_mac = mac

    def _mac_failed(self, seq: int) -> None:
        self.mac_failures += 1
        if self.mac_failures >= MAC_FAILURES_MAX:
            self._fail(NakReason.MAC_INVALID, f"{self.mac_failures} frames with a bad MAC in this session", seq)
        raise self._reject(NakReason.MAC_INVALID, "MAC does not verify", seq)

    def _open_device_session(self, ack: HelloAck, frame: bytes) -> None:
        """Device side: check the gateway's cryptogram; only then may the device send."""
        assert self._device_key is not None
        keys = session_keys(self._device_key, self.device_id, self._rnd_a, ack.rnd_b)
        expected = cryptogram(keys, frame[: -CRC_BYTES - HELLO_CRYPTOGRAM_BYTES])
        if not hmac.compare_digest(expected, ack.cryptogram):
            self._fail(NakReason.AUTH_FAILED, "the gateway's cryptogram does not verify: not our gateway", 0)
        self._install(keys.device_to_gateway, keys.gateway_to_device, ack.cryptogram)

    def _install(self, tx_key: bytes, rx_key: bytes, gateway_cryptogram: bytes) -> None:
        """Session keys and the initial chain values (section 5a)."""
        self._tx = FrameMac(tx_key)
        self._rx = FrameMac(rx_key)
        start = gateway_cryptogram[:FRAME_MAC_BYTES]
        hello = self._hello_mac[:FRAME_MAC_BYTES]
        self._reply_mac = start
        self.mac_failures = 0
        if self.role is Role.GATEWAY:
            self._own_mac, self._peer_mac = start, hello
        else:
            self._own_mac = self._own_mac_prev = hello
            self._peer_mac = start

    def accept_hello(self, ack: HelloAck, key: bytes) -> bytes:
        """Gateway side: the HELLO_ACK that opens a secure session under the device ``key``
        (the one the HELLO verified under) with the gateway's challenge ``ack.rnd_b``
        (fresh random bytes from the caller). Fills in the cryptogram; every later frame
        both ways carries a MAC."""
        if self.role is not Role.GATEWAY or self.state is not State.HELLO:
            raise LocalProtocolError("accept_hello answers a received HELLO")
        keys = session_keys(key, self.device_id, self._rnd_a, ack.rnd_b)
        unsigned = encode_frame(self.device_id, 0, ack, reply=True)
        proof = cryptogram(keys, unsigned[: -CRC_BYTES - HELLO_CRYPTOGRAM_BYTES])
        data = self.send(msgspec.structs.replace(ack, cryptogram=proof))
        self._install(keys.gateway_to_device, keys.device_to_gateway, proof)
        return data

    def _decode(self, cls: type[Event], frame: bytes, seq: int, taken: bool = False) -> Event:
        try:
            end = -_MAC_END if frame[2] & FLAG_MAC else -CRC_BYTES
            return cls.decode_payload(frame[HEADER_BYTES:end])
        except _PAYLOAD_ERRORS as exc:
            if taken:
                self.state = State.BUSY
                raise RemoteProtocolError(NakReason.MALFORMED_PAYLOAD, str(exc), fatal=False, seq=seq) from None
            raise self._reject(NakReason.MALFORMED_PAYLOAD, str(exc), seq) from None

    def _reject(self, reason: NakReason, detail: str, seq: int) -> RemoteProtocolError:
        """A bad frame that took no sequence number: NAK it, keep the session."""
        self._nak_seq = seq
        return RemoteProtocolError(reason, detail, fatal=False, seq=seq)

    def _fail(self, reason: NakReason, detail: str, seq: int) -> None:
        """Framing is lost: the connection is over; the error is sticky."""
        self.state = State.ERROR
        self._nak_seq = seq
        self._buffer.clear()
        self._error = RemoteProtocolError(reason, detail, fatal=True, seq=seq)
        raise self._error

    # ------------------------------------------------------------------ output

    def send(self, event: Event) -> bytes:
        new_state = self._send_table.get((self.state, type(event)))
        if new_state is None:
            raise LocalProtocolError(f"cannot send {type(event).__name__} in state {self.state.value}")
        if self.role is not Role.GATEWAY:
            data = self._device_send(event)
        elif self.state is State.BUSY and type(event) not in UNSOLICITED:
            # The reply to the request being answered (_gateway_send's common case, inline).
            data = self._last_reply = self._gateway_frame(self._pending_seq, event)
        else:
            data = self._gateway_send(event)
        self.state = new_state
        return data

    def _gateway_send(self, event: Event) -> bytes:
        state = self.state
        if type(event) in UNSOLICITED:
            return self._gateway_frame(0, event, unsolicited=True)
        if state is State.BUSY:
            data = self._gateway_frame(self._pending_seq, event)
            self._last_reply = data
            return data
        if state is State.HELLO:
            # HELLO_ACK or the NAK refusing the HELLO: both answer the HELLO, sequence 0.
            return encode_frame(self.device_id, 0, event, reply=True)
        return self._gateway_frame(self._nak_seq, event)

    def _gateway_frame(self, seq: int, event: Event, unsolicited: bool = False) -> bytes:
        """Gateway frames of a secure session carry a MAC chained from our previous frame;
        answers to a HELLO never do (the device dropped its keys with it)."""
        tx = self._tx
        if tx is None or (self._answering_hello and not unsolicited):
            return encode_frame(self.device_id, seq, event, reply=True)
        # encode_mac_frame(..., reply=True, signer=tx, chain=self._own_mac), inline
        payload = event.encode_payload()
        body = HEADER.pack(
            START_BYTE, PROTOCOL_VERSION, _GATEWAY_MAC_FLAGS, len(payload) + FRAME_MAC_BYTES, self.device_id, seq,
            event.message_type,
        ) + payload
        mac = tx.sign(self._own_mac, body)
        self._own_mac = mac
        if not unsolicited:
            self._reply_mac = mac
        body += mac
        return body + _CRC.pack(crc_hqx(body, CRC_INIT))

    def send_durable_ack(self, durable_txn: int) -> bytes:
        """``send(DurableAck(durable_txn))``, the same bytes, without the event object (it goes
        with nearly every reply under load)."""
        tx = self._tx
        new_state = self._send_table.get((self.state, DurableAck))
        if tx is None or new_state is None or not 0 <= durable_txn <= _U64_MAX or self.role is not Role.GATEWAY:
            return self.send(DurableAck(durable_txn))  # no secure session, or refused: as send says
        body = _DURABLE_ACK_BODY.pack(
            START_BYTE, PROTOCOL_VERSION, _GATEWAY_MAC_FLAGS, _DURABLE_ACK_BODY.size - HEADER_BYTES + FRAME_MAC_BYTES,
            self.device_id, 0, _DURABLE_ACK, durable_txn,
        )
        mac = tx.sign(self._own_mac, body)
        self._own_mac = mac  # unsolicited: in the chain, not a reply
        self.state = new_state
        body += mac
        return body + _CRC.pack(crc_hqx(body, CRC_INIT))

    def _device_send(self, event: Event) -> bytes:
        tx = self._tx
        if type(event) is Hello:
            self._last_seq = 0
            self._pending_seq = 0
            self._tx = self._rx = None  # a new handshake: the old session's keys are gone
            self._rnd_a = event.nonce
            self._hello_mac = event.mac
            data = encode_frame(self.device_id, 0, event, reply=False)
        else:
            seq = next_seq(self._last_seq)
            self._prev_seq = self._last_seq
            self._last_seq = seq
            self._pending_seq = seq
            if tx is None:
                data = encode_frame(self.device_id, seq, event, reply=False)
            else:
                data = encode_mac_frame(
                    self.device_id, seq, event, reply=False, signer=tx, chain=self._own_mac + self._reply_mac
                )
                self._own_mac_prev = self._own_mac
                self._own_mac = data[-_MAC_END:-CRC_BYTES]
        self._last_request = data
        return data

    def retransmit(self) -> bytes:
        """Device side: the last frame sent, byte for byte (same sequence number)."""
        if self.role is not Role.DEVICE or self.state is not State.BUSY and self.state is not State.HELLO:
            raise LocalProtocolError("nothing in flight to retransmit")
        return self._last_request
