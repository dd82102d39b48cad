"""The generated Mosquitto files, enforced by a real Mosquitto of the test's own: passwords
(hashed by mosquitto_passwd, or by relay.mosquitto itself) and the ACL rule that a
representative's app reads its own topics only."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from relay import layout
from relay.mosquitto import write_files

from relay_support import Mosquitto, free_port, mosquitto_binary, mosquitto_user

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(
        mosquitto_binary() is None, reason="mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients)"
    ),
]

PREFIX = "ecard/v1"
# A message that must not come is waited for this long after a later one that did come.
RECEIVE_TIMEOUT_S = 10.0


class Secured(msgspec.Struct):
    port: int
    passwords: dict[str, str]


@pytest.fixture(params=["mosquitto_passwd", "python-hash"])
def secured(request, tmp_path):
    """A Mosquitto with the generated conf, passwd and acl, on a free port."""
    use_tool = request.param == "mosquitto_passwd"
    if use_tool and shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed (apt-get install -y mosquitto)")
    directory = Path(tempfile.mkdtemp(prefix="ecard-mosquitto-"))  # under /tmp: reachable by the user mosquitto becomes
    port = free_port()
    passwords = {name: secrets.token_urlsafe(12) for name in ("ecard-relay", "ecard-notifier", "41", "42")}
    files = write_files(
        directory, port, relay_user="ecard-relay", notifier_user="ecard-notifier",
        users={k: v for k, v in passwords.items() if not k.isdigit()},
        representatives={int(k): v for k, v in passwords.items() if k.isdigit()},
        run_as=mosquitto_user(), use_tool=use_tool,
    )
    assert "$7$" in files.passwd.read_text() and ":" + passwords["41"] not in files.passwd.read_text()
    assert files.passwd.stat().st_mode & 0o777 == 0o600
    broker = Mosquitto(files.conf, port, tmp_path / "mosquitto.log").start()
    try:
        yield Secured(port, passwords)
    finally:
        broker.terminate()
        shutil.rmtree(directory, ignore_errors=True)


def client(secured: Secured, user: str | None, password: str | None = None) -> aiomqtt.Client:
    if user is not None and password is None:
        password = secured.passwords[user]
    return aiomqtt.Client("127.0.0.1", secured.port, username=user, password=password,
                          identifier=f"ecard-test-{user}-{secrets.token_hex(3)}", timeout=RECEIVE_TIMEOUT_S)


def codes(granted) -> list[int]:
    return [getattr(rc, "value", rc) for rc in granted]


def test_a_representative_reads_its_own_topic_and_never_anothers(secured):
    async def main() -> None:
        async with client(secured, "41") as app:
            assert codes(await app.subscribe(layout.representative_filter(PREFIX, 41), qos=1)) == [1]
            # Mosquitto's acl_file checks `read` on every delivery, not at SUBSCRIBE (its
            # SUBACK grants any filter to a 3.1.1 client since 1.3.5): these subscriptions are
            # taken, and the ACL must keep every message of them away from the app.
            for other in (layout.representative_filter(PREFIX, 42), f"{PREFIX}/{layout.REPRESENTATIVES}/+/#",
                          layout.events_filter(PREFIX), f"{PREFIX}/#", "#"):
                await app.subscribe(other, qos=1)
            async with client(secured, "ecard-relay") as relay:
                await relay.publish(f"{PREFIX}/representatives/42/notices", b"for 42", qos=1)
                await relay.publish(f"{PREFIX}/representatives/4/notices", b"for 4", qos=1)
                await relay.publish(f"{PREFIX}/representatives/410/notices", b"for 410", qos=1)
                await relay.publish(f"{PREFIX}/events/1/entry/5", b"an event", qos=1)
                await relay.publish(f"{PREFIX}/representatives/41/notices", b"for 41", qos=1)
            # One publisher, one subscriber, one broker thread: had any of the first four
            # reached the app, it would have come before this one.
            message = await asyncio.wait_for(anext(app.messages), RECEIVE_TIMEOUT_S)
            assert (str(message.topic), message.payload) == (f"{PREFIX}/representatives/41/notices", b"for 41")

    asyncio.run(main())


def test_the_notifier_reads_events_and_an_app_cannot_write_them(secured):
    async def main() -> None:
        async with client(secured, "ecard-notifier") as notifier:
            assert codes(await notifier.subscribe(layout.events_filter(PREFIX), qos=1)) == [1]
            async with client(secured, "42") as app:
                # Mosquitto acknowledges a forbidden PUBLISH (MQTT 3.1.1 has no refusal) and drops it.
                await app.publish(f"{PREFIX}/events/1/entry/5", b"forged", qos=1)
            async with client(secured, "ecard-relay") as relay:
                await relay.publish(f"{PREFIX}/events/1/entry/5", b"real", qos=1)
            message = await asyncio.wait_for(anext(notifier.messages), RECEIVE_TIMEOUT_S)
            assert message.payload == b"real"

    asyncio.run(main())


@pytest.mark.parametrize("user, password", [(None, None), ("41", "wrong"), ("ecard-relay", "wrong"), ("43", "x")])
def test_anonymous_clients_and_wrong_passwords_are_refused(secured, user, password):
    async def main() -> None:
        with pytest.raises(aiomqtt.MqttError):
            async with client(secured, user, password):
                pass

    asyncio.run(main())
