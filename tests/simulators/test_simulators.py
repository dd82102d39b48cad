"""The simulators against a real gateway process: the journal must equal what they were told."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time

from ledger.codes import JournalKind
from protocol import (
    CLOSED,
    NEED_DATA,
    TXN_FLAG_ADVICE,
    CardPresented,
    Connection,
    Decision,
    DeviceKind,
    DurableAck,
    Heartbeat,
    Hello,
    HelloAck,
    Nak,
    NakReason,
    Passage,
    Retransmit,
    Role,
)
from protocol.limits import TXN_GAP_MAX
from protocol.auth import verify_hello
from simulators.device import (
    KIND_ENTRY,
    KIND_PASSAGE,
    KIND_PURCHASE,
    KIND_TOPUP,
    Device,
    DeviceConfig,
    Unavailable,
    event_to_json,
    read_log,
    read_logs,
)
from simulators.scenarios import plan_lunch, plan_rush, run_lunch, run_rush
from simulators.verify import verify
from storage.demo_dataset import demo_card_uid, demo_device_key, till_ids, turnstile_ids
from tests.support import GatewayProcess, async_wait_until

# The gateway's metric label of each journal kind (5: a balance query, never journaled).
_KIND_LABEL = {k: JournalKind(k).label for k in (KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE, KIND_TOPUP, 5)}
_DECISION_LINE = re.compile(r'^ecard_decisions_total\{kind="(\w+)",reason="(\w+)"\} ([0-9.e+]+)$', re.M)


def _decisions_metric(text: str) -> dict[tuple[str, str], int]:
    return {(k, r): int(float(v)) for k, r, v in _DECISION_LINE.findall(text) if float(v)}


def test_plans_replay_from_the_seed():
    assert plan_rush(7, 300, 4, 5.0, exit_rate=0.2) == plan_rush(7, 300, 4, 5.0, exit_rate=0.2)
    assert plan_rush(7, 300, 4, 5.0) != plan_rush(8, 300, 4, 5.0)
    assert plan_lunch(7, 300, 2, 5.0) == plan_lunch(7, 300, 2, 5.0)
    assert plan_lunch(7, 300, 2, 5.0) != plan_lunch(8, 300, 2, 5.0)
    for plan in plan_lunch(7, 1000, 2, 5.0):
        for action in plan:
            if action.op == "purchase":
                assert 1 <= len(action.items) <= 4 or sum(q * p for _c, q, p in action.items) > 50_000


def test_rush_and_lunch_match_the_journal(demo_dsn, tmp_path):
    logs = tmp_path / "sim"
    gateway = GatewayProcess(demo_dsn, tmp_path / "gateway.log").start()
    try:
        rush, rush_settled = asyncio.run(
            run_rush("127.0.0.1", gateway.port, pupils=600, seed=7, turnstiles=4, log_dir=logs, window_s=2.0,
                     exit_rate=0.2, progress_s=0)
        )
        lunch, lunch_settled = asyncio.run(
            run_lunch("127.0.0.1", gateway.port, pupils=1000, seed=7, tills=2, log_dir=logs, window_s=3.0,
                      progress_s=0)
        )
        metrics = _decisions_metric(gateway.metrics_text())
    finally:
        assert gateway.terminate() == 0
    assert rush_settled and lunch_settled
    report = asyncio.run(verify(demo_dsn, logs))
    assert report.ok, report.verdict()
    accepted = {d: s.accepted for d, s in read_logs(logs).items()}
    kinds = {rec["kind"] for recs in accepted.values() for rec in recs.values()}
    assert kinds == {KIND_ENTRY, KIND_PASSAGE, KIND_PURCHASE, KIND_TOPUP}
    assert report.journal_rows == rush.accepts + lunch.accepts - lunch.decisions.get((5, "OK"), 0)
    assert rush.denies.get("UNKNOWN_CARD", 0) > 0
    assert lunch.denies.get("INSUFFICIENT_FUNDS", 0) > 0
    assert lunch.denies.get("UNKNOWN_CARD", 0) > 0
    assert report.topups_kopecks > 0 and report.purchases_kopecks > 0
    # No disconnects, no restart: every decision the gateway counted reached a device.
    seen: dict[tuple[str, str], int] = {}
    for stats in (rush, lunch):
        for (kind, reason), n in stats.decisions.items():
            key = (_KIND_LABEL[kind], reason)
            seen[key] = seen.get(key, 0) + n
    assert metrics == seen


def test_disconnects_replay_exactly_once(demo_dsn, tmp_path):
    logs = tmp_path / "sim"
    gateway = GatewayProcess(demo_dsn, tmp_path / "gateway.log", ECARD_FLUSH_INTERVAL_MS="50").start()
    try:
        rush, rush_settled = asyncio.run(
            run_rush("127.0.0.1", gateway.port, pupils=500, seed=3, turnstiles=4, log_dir=logs, window_s=1.5,
                     disconnect_rate=0.1, progress_s=0)
        )
        lunch, lunch_settled = asyncio.run(
            run_lunch("127.0.0.1", gateway.port, pupils=600, seed=3, tills=2, log_dir=logs, window_s=1.5,
                      disconnect_rate=0.1, progress_s=0)
        )
    finally:
        assert gateway.terminate() == 0
    assert rush_settled and lunch_settled
    for stats in (rush, lunch):
        assert stats.injected_disconnects > 0 and stats.reconnects > 0
        assert stats.resends > 0
    assert rush.replays + lunch.replays > 0
    report = asyncio.run(verify(demo_dsn, logs))
    assert report.ok, report.verdict()


def test_full_journal_queue_try_again_later_and_server_busy(demo_dsn, tmp_path):
    """A journal queue of 2: plain requests get TRY_AGAIN_LATER (retried with a new txn),
    passages (advices) get NAK SERVER_BUSY (kept, sent again later); nothing is lost or doubled."""
    logs = tmp_path / "sim"
    gateway = GatewayProcess(
        demo_dsn, tmp_path / "gateway.log", ECARD_BATCH_EVENTS_MAX="1", ECARD_JOURNAL_QUEUE_EVENTS_MAX="2"
    ).start()
    try:
        rush, rush_settled = asyncio.run(
            run_rush("127.0.0.1", gateway.port, pupils=200, seed=5, turnstiles=4, log_dir=logs, window_s=0.5,
                     disconnect_rate=0.05, progress_s=0)
        )
        lunch, lunch_settled = asyncio.run(
            run_lunch("127.0.0.1", gateway.port, pupils=200, seed=5, tills=2, log_dir=logs, window_s=0.5,
                      disconnect_rate=0.05, progress_s=0)
        )
    finally:
        assert gateway.terminate() == 0
    assert rush_settled and lunch_settled
    assert rush.denies.get("TRY_AGAIN_LATER", 0) + lunch.denies.get("TRY_AGAIN_LATER", 0) > 0
    assert rush.naks.get("SERVER_BUSY", 0) > 0
    report = asyncio.run(verify(demo_dsn, logs))
    assert report.ok, report.verdict()


# --------------------------------------------------------------------------- device client against a fake gateway


class FakeGateway:
    """A scripted gateway: accepts everything, can lose replies, acks durability on demand."""

    def __init__(self, heartbeat_interval_ms: int = 10_000) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeats = 0
        self.seen: list[tuple[int, bool]] = []  # (txn, advice flag) of every transaction frame decided
        self.lose_reply_of: set[int] = set()  # txns whose first reply is decided but not written
        self.hellos = 0
        self.hello_durable: list[int] = []  # the durable_txn of every HELLO
        self.watermark = 0  # the durable_txn our HELLO_ACK reports
        self.busy: dict[int, int] = {}  # txn -> how many times to answer its advice NAK SERVER_BUSY
        self.ack_before_reply: dict[int, int] = {}  # txn -> a DURABLE_ACK written just before its DECISION
        self.gap_check = False  # NAK TXN_OUT_OF_RANGE above the highest txn taken + TXN_GAP_MAX
        self.txn_known = 0
        self.naks: list[tuple[int, str]] = []  # (txn, NAK reason name) of every transaction refused
        self.sessions: list[tuple[Connection, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> "FakeGateway":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for _conn, writer in self.sessions:
            writer.close()
        await self.server.wait_closed()

    def durable_ack(self, txn: int) -> None:
        conn, writer = self.sessions[-1]
        writer.write(conn.send(DurableAck(txn)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.GATEWAY)
        self.sessions.append((conn, writer))
        while True:
            data = await reader.read(65536)
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or event is CLOSED:
                    break
                if type(event) is Retransmit:
                    writer.write(event.reply)
                    continue
                if type(event) is Hello:
                    assert verify_hello(demo_device_key(conn.device_id), conn.device_id, event)
                    self.hellos += 1
                    self.hello_durable.append(event.durable_txn)
                    ack = HelloAck(0, self.watermark, self.heartbeat_interval_ms, os.urandom(16))
                    writer.write(conn.accept_hello(ack, demo_device_key(conn.device_id)))  # the secure channel
                    continue
                if type(event) is Heartbeat:
                    self.heartbeats += 1
                    writer.write(conn.send(Heartbeat(0)))
                    continue
                advice = bool(event.flags & TXN_FLAG_ADVICE)
                if self.gap_check and event.txn - self.txn_known > TXN_GAP_MAX:
                    self.naks.append((event.txn, "TXN_OUT_OF_RANGE"))
                    writer.write(conn.send(Nak(int(NakReason.TXN_OUT_OF_RANGE), "counter corrupt")))
                    continue
                if advice and self.busy.get(event.txn):
                    self.busy[event.txn] -= 1
                    self.naks.append((event.txn, "SERVER_BUSY"))
                    writer.write(conn.send(Nak(int(NakReason.SERVER_BUSY), "journal full")))
                    continue
                self.txn_known = max(self.txn_known, event.txn)
                self.seen.append((event.txn, advice))
                if event.txn in self.ack_before_reply:
                    writer.write(conn.send(DurableAck(self.ack_before_reply.pop(event.txn))))
                reply = conn.send(Decision(event.txn, 1, 0, 0, 0, 0xFF, 100, ()))
                if event.txn in self.lose_reply_of:
                    self.lose_reply_of.discard(event.txn)
                    continue  # decided and cached, but the reply is "lost" on the way
                writer.write(reply)
            if not data:
                writer.close()
                return


def test_device_retransmits_and_survives_its_own_restart(tmp_path):
    async def scenario() -> None:
        fake = await FakeGateway().start()
        device_id = turnstile_ids(1)[0]
        cfg = DeviceConfig("127.0.0.1", fake.port, reply_timeout_s=0.2, deadline_s=10)
        card = demo_card_uid(1)
        try:
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), cfg, tmp_path, seed=1)
            device.register_card(card, 1)
            await device.start()
            fake.lose_reply_of.add(2)
            for _ in range(3):
                decision = await device.card_presented(card, 1)
                assert decision.outcome == 1
            assert device.stats.retransmits == 1  # txn 2: same frame again, answered from the reply cache
            assert fake.seen == [(1, False), (2, False), (3, False)]
            assert sorted(device.kept) == [1, 2, 3]
            await device.close()

            # A new simulator process on the same log: replays what is not durable, counts on from 3.
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), cfg, tmp_path, seed=1)
            assert device.txn_high == 3 and sorted(device.kept) == [1, 2, 3]
            await device.start()
            assert fake.seen[3:] == [(1, True), (2, True), (3, True)]
            decision = await device.card_presented(card, 1)
            assert decision.txn == 4 and fake.seen[-1] == (4, False)
            fake.durable_ack(3)
            await async_wait_until(lambda: sorted(device.kept) == [4], 5, "DURABLE_ACK 3 applied")
            fake.durable_ack(4)
            assert await device.wait_settled(5)
            await device.close()
            accepted = read_logs(tmp_path)[device_id].accepted
            assert sorted(accepted) == [1, 2, 3, 4]  # each accept logged once

            # The simulator died with txn 5 sent and unanswered: the next life resends it, same txn.
            lost = CardPresented(5, 0, 1, 1_700_000_000_000, card)
            with open(device.log_path, "a") as f:
                f.write(json.dumps({"t": "txn", "txn": 5, "event": event_to_json(lost)}) + "\n")
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), cfg, tmp_path, seed=1)
            assert device.pending == lost
            await device.start()
            assert fake.seen[-1] == (5, False) and device.pending is None
            assert (await device.card_presented(card, 1)).txn == 6
            await device.close()
            assert sorted(read_logs(tmp_path)[device_id].accepted) == [1, 2, 3, 4, 5, 6]
        finally:
            await fake.stop()

    asyncio.run(scenario())


def test_idle_device_sends_heartbeats(tmp_path):
    async def scenario() -> None:
        fake = await FakeGateway(heartbeat_interval_ms=50).start()
        device_id = turnstile_ids(1)[0]
        cfg = DeviceConfig("127.0.0.1", fake.port, deadline_s=10)
        device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), cfg, tmp_path, seed=1)
        try:
            await device.start()
            await async_wait_until(lambda: fake.heartbeats >= 3, 5, "three heartbeats")
            assert fake.hellos == 1 and device.stats.heartbeats >= 3
        finally:
            await device.close()
            await fake.stop()

    asyncio.run(scenario())


def _fast(port: int, **kw) -> DeviceConfig:
    """A device config for the fake gateway: short timeouts, a compressed back-off schedule."""
    return DeviceConfig("127.0.0.1", port, reply_timeout_s=0.2, deadline_s=10, backoff_initial_s=0.01,
                        backoff_max_s=0.05, **kw)


def _records(device: Device, t: str) -> list[dict]:
    with open(device.log_path) as f:
        return [r for r in map(json.loads, f) if r["t"] == t]


def test_only_a_decision_then_a_durable_ack_in_one_session_drops_a_kept_txn(tmp_path):
    """docs/protocol.md 10.4: HELLO_ACK drops nothing; a DURABLE_ACK before the DECISION drops nothing."""

    async def scenario() -> None:
        fake = await FakeGateway().start()
        device_id = turnstile_ids(1)[0]
        card = demo_card_uid(1)
        try:
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), _fast(fake.port), tmp_path,
                            seed=1)
            device.register_card(card, 1)
            await device.start()
            for _ in range(2):
                await device.card_presented(card, 1)
            # A watermark that arrives before the DECISION of txn 3 confirms 1 and 2 (decided
            # before it in this session) but not 3.
            fake.ack_before_reply[3] = 3
            assert (await device.card_presented(card, 1)).txn == 3
            await asyncio.sleep(0.1)
            assert sorted(device.kept) == [3] and device.watermark == 3
            await device.close()

            # A new life: the gateway's HELLO_ACK says 100, and still everything kept is replayed.
            fake.watermark = 100
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), _fast(fake.port), tmp_path,
                            seed=1)
            assert sorted(device.kept) == [3] and device.watermark == 3
            await device.start()
            assert fake.hello_durable[-1] == 3  # the highest watermark it had seen
            assert fake.seen[-1] == (3, True)
            assert sorted(device.kept) == [3] and device.watermark == 100
            fake.durable_ack(2)  # below txn 3: confirms nothing
            await asyncio.sleep(0.1)
            assert sorted(device.kept) == [3]
            fake.durable_ack(3)  # after the replayed DECISION, in this session
            assert await device.wait_settled(5)
            await device.close()
            assert read_log(device.log_path).kept == {}

            # The gateway came back from an older database: HELLO_ACK 5 < 100 seen.
            fake.watermark = 5
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), _fast(fake.port), tmp_path,
                            seed=1)
            await device.start()
            assert fake.hello_durable[-1] == 100
            assert device.stats.watermark_regressions == 1
            assert _records(device, "watermark_back") == [{"t": "watermark_back", "gateway": 5, "seen": 100}]
            assert (await device.card_presented(card, 1)).txn == 4  # the counter never goes back
            await device.close()
        finally:
            await fake.stop()

    asyncio.run(scenario())


def test_server_busy_advice_is_sent_again_in_the_same_session(tmp_path):
    async def scenario() -> None:
        fake = await FakeGateway().start()
        device_id = turnstile_ids(1)[0]
        card = demo_card_uid(1)
        try:
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), _fast(fake.port), tmp_path,
                            seed=1)
            device.register_card(card, 1)
            await device.start()
            grant = await device.card_presented(card, 1)
            fake.busy[2] = 2
            passage = await device.passage(card, 1, grant.txn)
            assert passage.txn == 2 and passage.outcome == 1
            assert fake.naks == [(2, "SERVER_BUSY"), (2, "SERVER_BUSY")]
            assert fake.seen == [(1, False), (2, True)]  # the PASSAGE carries ADVICE, decided once
            assert fake.hellos == 1 and device.stats.replays_deferred == 2
            await device.close()
        finally:
            await fake.stop()

    asyncio.run(scenario())


def test_unanswered_passage_is_resent_with_the_advice_flag(tmp_path):
    async def scenario() -> None:
        fake = await FakeGateway().start()
        device_id = turnstile_ids(1)[0]
        card = demo_card_uid(1)
        try:
            lost = Passage(2, TXN_FLAG_ADVICE, 1, 1_700_000_000_000, 1, card)
            log = tmp_path / f"device-{device_id}.jsonl"
            log.write_text(json.dumps({"t": "txn", "txn": 2, "event": event_to_json(lost)}) + "\n")
            device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), _fast(fake.port), tmp_path,
                            seed=1)
            assert device.pending == lost
            await device.start()
            assert fake.seen == [(2, True)] and device.pending is None
            await device.close()
        finally:
            await fake.stop()

    asyncio.run(scenario())


def test_txn_out_of_range_moves_the_counter(tmp_path):
    """docs/protocol.md 10.1: the counter moves to one above the highest txn used; same session."""

    async def scenario() -> None:
        fake = await FakeGateway().start()
        fake.gap_check = True
        device_id = till_ids(1)[0]
        card = demo_card_uid(1)
        try:
            device = Device(device_id, DeviceKind.TILL, demo_device_key(device_id), _fast(fake.port), tmp_path, seed=1)
            device.register_card(card, 1)
            await device.start()
            assert (await device.topup(card, 10_000, 1)).txn == 1
            corrupt = TXN_GAP_MAX + 10
            device.txn_high = corrupt  # a bit flip in the stored counter
            decision = await device.topup(card, 20_000, 1)
            assert decision.txn == 2 and decision.outcome == 1
            assert fake.naks == [(corrupt + 1, "TXN_OUT_OF_RANGE")]
            assert fake.seen == [(1, False), (2, False)] and fake.hellos == 1
            assert device.stats.renumbered == 1
            await device.close()
            state = read_log(device.log_path)
            assert state.txn_high == 2 and sorted(state.accepted) == [1, 2] and not state.sent
            device = Device(device_id, DeviceKind.TILL, demo_device_key(device_id), _fast(fake.port), tmp_path, seed=1)
            assert device.txn_high == 2 and device.pending is None
            await device.close()
        finally:
            await fake.stop()

    asyncio.run(scenario())


def test_reconnect_backoff_is_exponential_with_full_jitter(tmp_path):
    """docs/protocol.md 10.12: waits in [0, min(30 s, 100 ms * 2^(n-1))], reset after a 60 s session."""
    device_id = turnstile_ids(1)[0]

    def device(seed: int, path) -> Device:
        return Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), DeviceConfig("127.0.0.1", 1),
                      path, seed=seed)

    a, b, c = device(1, tmp_path / "a"), device(1, tmp_path / "b"), device(2, tmp_path / "c")
    waits = [a._jitter(n) for n in range(1, 14)]
    for n, wait in enumerate(waits, 1):
        assert 0 <= wait <= min(30.0, 0.1 * 2 ** (n - 1))
    assert waits == [b._jitter(n) for n in range(1, 14)]  # seeded
    assert waits != [c._jitter(n) for n in range(1, 14)]
    assert max(a._jitter(40) for _ in range(200)) > 15  # capped at 30 s, not at 0.1 * 2^39
    # Consecutive failures count up; a session that lasted 60 s starts the count again.
    a._drop(broken=True)
    a._drop(broken=True)
    assert a._failures == 2
    a._session_up_at = time.monotonic() - 5
    a._drop(broken=True)
    assert a._failures == 3
    a._session_up_at = time.monotonic() - 61
    a._drop(broken=True)
    assert a._failures == 1
    for d in (a, b, c):
        d._log.close()


def test_unreachable_gateway_backs_off_until_the_deadline(tmp_path):
    async def scenario() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens there once the socket is closed
        device_id = turnstile_ids(1)[0]
        cfg = DeviceConfig("127.0.0.1", port, deadline_s=0.5, backoff_initial_s=0.02, backoff_max_s=0.1)
        device = Device(device_id, DeviceKind.TURNSTILE, demo_device_key(device_id), cfg, tmp_path, seed=1)
        started = time.monotonic()
        try:
            await device.start()
        except Unavailable:
            pass
        else:  # pragma: no cover
            raise AssertionError("connected to a closed port")
        assert device.stats.connect_failures >= 3
        assert device.stats.backoff_waits == device.stats.connect_failures - 1
        assert time.monotonic() - started >= 0.5
        device._log.close()

    asyncio.run(scenario())
