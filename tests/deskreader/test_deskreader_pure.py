"""The bridge's pure parts: GET UID and its answers, the supervisor's state machine, the
configuration, the staff API's answers as log lines. No pcscd, no pyscard, no database."""

from __future__ import annotations

import pytest

from deskreader import apdu, supervisor as sv
from deskreader.config import ConfigError, DeskReaderConfig, load_config
from deskreader.staff import summarize
from deskreader.supervisor import Do, Phase, Supervisor

READER = "Virtual PCD 00 00"
PRESENT = sv.SCARD_STATE_PRESENT | sv.SCARD_STATE_CHANGED
EMPTY = sv.SCARD_STATE_EMPTY | sv.SCARD_STATE_CHANGED
SCARD_STATE_INUSE = 0x0100  # winscard.h: an application has the card connected


def count(n: int) -> int:
    return n << sv.EVENT_COUNT_SHIFT


# --- GET UID ----------------------------------------------------------------------------------


def test_get_uid_apdu_is_ff_ca_00_00_00():
    assert bytes(apdu.GET_UID_APDU) == bytes.fromhex("FFCA000000")
    assert apdu.format_hex(apdu.GET_UID_APDU) == "FF CA 00 00 00"


@pytest.mark.parametrize("uid", ["04A1B2C3", "04A1B2C3D4E5F6", "04A1B2C3D4E5F60708F9", "E004010203040506"])
def test_uid_answers_with_9000(uid):
    answer = apdu.parse_uid_response(list(bytes.fromhex(uid + "9000")))
    assert answer.uid == bytes.fromhex(uid) and answer.sw == 0x9000
    assert apdu.format_uid(answer.uid) == uid


@pytest.mark.parametrize("sw, words", [
    ("6A81", "function not supported"),
    ("6300", "no card or card mute"),
    ("6D00", "instruction not supported"),
    ("6E00", "class not supported"),
    ("6B00", "wrong parameter"),
    ("6282", "end of data"),
    ("6C07", "wrong Le: 7 bytes"),
    ("6F00", "unknown status word"),
])
def test_status_words_other_than_9000_are_refused_by_name(sw, words):
    with pytest.raises(apdu.ApduError, match=f"SW {sw}: .*{words}"):
        apdu.parse_uid_response(bytes.fromhex(sw))


@pytest.mark.parametrize("data", ["", "90", "0102039000", "00" * 17 + "9000"])
def test_no_status_word_or_a_uid_of_the_wrong_length_is_refused(data):
    with pytest.raises(apdu.ApduError):
        apdu.parse_uid_response(bytes.fromhex(data))


# --- the supervisor ---------------------------------------------------------------------------


def ready(**kw) -> Supervisor:
    sup = Supervisor(READER, **kw)
    assert sup.start().do is Do.ESTABLISH
    assert sup.on_establish(0).do is Do.FIND_READER
    step = sup.on_readers(0, [READER, "Virtual PCD 00 01"])
    assert step.do is Do.WAIT and sup.reader == READER and sup.phase is Phase.EMPTY
    assert sup.known_state == sv.SCARD_STATE_UNAWARE  # the first wait answers at once
    return sup


def test_a_card_is_read_once_while_it_stays():
    sup = ready()
    assert sup.on_status(0, sv.SCARD_STATE_EMPTY).do is Do.WAIT
    assert sup.on_status(0, PRESENT | count(1)).do is Do.READ_UID
    assert sup.known_state == sv.SCARD_STATE_PRESENT | count(1)  # CHANGED is not echoed back
    assert sup.on_read(0).do is Do.WAIT
    # connecting made it INUSE: a change, the same card, not read again
    assert sup.on_status(0, PRESENT | SCARD_STATE_INUSE | count(1)).do is Do.WAIT
    assert sup.on_status(sv.SCARD_E_TIMEOUT, 0).do is Do.WAIT
    step = sup.on_status(0, EMPTY | count(2))
    assert step.do is Do.WAIT and step.note == "card removed" and sup.phase is Phase.EMPTY
    assert sup.on_status(0, PRESENT | count(3)).do is Do.READ_UID


def test_a_card_swapped_between_two_waits_is_read_again():
    sup = ready()
    assert sup.on_status(0, PRESENT | count(1)).do is Do.READ_UID
    sup.on_read(0)
    assert sup.on_status(0, PRESENT | count(3)).do is Do.READ_UID  # removed and another presented


def test_a_mute_card_is_not_read():
    sup = ready()
    step = sup.on_status(0, PRESENT | sv.SCARD_STATE_MUTE | count(1))
    assert step.do is Do.WAIT and "mute" in step.note and sup.phase is Phase.CARD


@pytest.mark.parametrize("code", sorted(sv.CONTEXT_LOST))
def test_context_lost_waiting_means_a_new_context_after_the_retry_interval_and_no_card(code):
    sup = ready(retry_interval_ms=250)
    sup.on_status(0, PRESENT | count(1))
    sup.on_read(0)
    step = sup.on_status(code, 0)
    assert step.do is Do.ESTABLISH and step.delay_ms == 250
    assert sup.phase is Phase.NO_CONTEXT and sup.known_state == sv.SCARD_STATE_UNAWARE
    assert "every card taken as removed" in step.note and f"0x{code:08X}" in step.note
    # pcscd still down: retried at the same pace, said at the 1st, 10th, 100th attempt
    notes = []
    for _ in range(100):
        again = sup.on_establish(sv.SCARD_E_NO_SERVICE)
        assert again.do is Do.ESTABLISH and again.delay_ms == 250
        notes.append(again.note)
    said = [(i + 1, n) for i, n in enumerate(notes) if n is not None]
    assert [i for i, _ in said] == [1, 10, 100]
    assert said[0][1] == ("no PC/SC context (SCARD_E_NO_SERVICE (0x8010001D)) after 1 attempt(s); "
                          "retrying every 250 ms")
    # back: a new context, the reader found, and the card still on it is read as a new card
    step = sup.on_establish(0)
    assert step.do is Do.FIND_READER and sup.recoveries == 1
    assert step.note == "PC/SC context re-established after 100 failed attempt(s) (recovery 1)"
    assert sup.failed_attempts == 0
    assert sup.on_readers(0, [READER]).do is Do.WAIT
    assert sup.on_status(0, PRESENT | count(1)).do is Do.READ_UID


@pytest.mark.parametrize("code", sorted(sv.READER_GONE))
def test_reader_gone_means_a_new_context_and_a_new_look_for_the_reader(code):
    sup = ready()
    step = sup.on_status(code, 0)
    assert step.do is Do.ESTABLISH and step.delay_ms == sv.CONTEXT_RETRY_INTERVAL_MS
    assert sup.phase is Phase.NO_READER


@pytest.mark.parametrize("state", [sv.SCARD_STATE_UNKNOWN, sv.SCARD_STATE_UNAVAILABLE])
def test_reader_state_unknown_or_unavailable_is_a_reader_gone(state):
    sup = ready()
    step = sup.on_status(0, state | sv.SCARD_STATE_CHANGED)
    assert step.do is Do.ESTABLISH and sup.phase is Phase.NO_READER


def test_an_unexpected_code_is_handled_as_a_lost_context_not_a_busy_loop():
    sup = ready()
    step = sup.on_status(0x80100001, 0)  # SCARD_F_INTERNAL_ERROR
    assert step.do is Do.ESTABLISH and step.delay_ms > 0 and "unexpected" in step.note


def test_reader_not_listed_is_retried_and_said_once():
    sup = Supervisor(READER)
    sup.on_establish(0)
    first = sup.on_readers(sv.SCARD_E_NO_READERS_AVAILABLE, [])
    assert first.do is Do.ESTABLISH and first.delay_ms > 0 and "not found" in first.note
    sup.on_establish(0)
    second = sup.on_readers(0, ["Other Reader 00 00"])
    assert second.do is Do.ESTABLISH and second.note is None
    sup.on_establish(0)
    assert sup.on_readers(0, [READER]).do is Do.WAIT


def test_no_pcscd_at_start_is_said_then_retried_quietly():
    sup = Supervisor(READER)
    first = sup.on_establish(sv.SCARD_E_NO_SERVICE)
    assert first.do is Do.ESTABLISH and "SCARD_E_NO_SERVICE" in first.note
    assert sup.on_establish(sv.SCARD_E_NO_SERVICE).note is None
    assert "recovery 1" in sup.on_establish(0).note


@pytest.mark.parametrize("code", sorted(sv.CARD_GONE))
def test_card_gone_while_reading_waits_for_the_next_card(code):
    sup = ready()
    sup.on_status(0, PRESENT | count(1))
    step = sup.on_read(code)
    assert step.do is Do.WAIT and "present it again" in step.note
    assert sup.on_status(0, EMPTY | count(2)).note == "card removed"


def test_context_lost_while_reading():
    sup = ready()
    sup.on_status(0, PRESENT | count(1))
    assert sup.on_read(sv.SCARD_F_COMM_ERROR).do is Do.ESTABLISH


def test_choose_reader_exact_then_prefix():
    names = ["ACS ACR122U PICC Interface 00 00", "Virtual PCD 00 00", "Virtual PCD 00 01"]
    assert sv.choose_reader(names, "Virtual PCD 00 01") == "Virtual PCD 00 01"
    assert sv.choose_reader(names, "Virtual PCD") == "Virtual PCD 00 00"
    assert sv.choose_reader(names, "ACS ACR122U") == "ACS ACR122U PICC Interface 00 00"
    assert sv.choose_reader(names, "Omnikey") is None


def test_a_zero_retry_interval_is_refused():
    with pytest.raises(AssertionError):
        Supervisor(READER, retry_interval_ms=0)


def test_the_codes_are_pyscards():
    scard = pytest.importorskip("smartcard.scard", reason="pyscard not installed (make deskreader-deps)")
    for code, name in sv.CODE_NAMES.items():
        assert getattr(scard, name) & 0xFFFFFFFF == code, name
    for name in ("UNAWARE", "CHANGED", "UNKNOWN", "UNAVAILABLE", "EMPTY", "PRESENT", "MUTE"):
        assert getattr(scard, f"SCARD_STATE_{name}") == getattr(sv, f"SCARD_STATE_{name}"), name


# --- configuration ----------------------------------------------------------------------------


def test_config_from_the_environment_and_the_command_line(tmp_path):
    env = {"ECARD_DESKREADER_READER": "Virtual PCD", "ECARD_DESKREADER_DESK": "office-1",
           "ECARD_DESKREADER_TOKEN_FILE": str(tmp_path / "t"), "ECARD_DESKREADER_CONTEXT_RETRY_INTERVAL_MS": "200"}
    config = load_config(env, staff_url="http://127.0.0.1:9999", reader=None)
    assert config.reader == "Virtual PCD" and config.staff_url == "http://127.0.0.1:9999"
    assert config.context_retry_interval_ms == 200 and config.status_timeout_ms == sv.STATUS_TIMEOUT_MS
    (tmp_path / "t").write_text("tok-en_1\n")
    assert config.token() == "tok-en_1"


@pytest.mark.parametrize("overrides, field", [
    ({"desk": "office 1"}, "desk"),
    ({"staff_url": "ftp://x"}, "staff_url"),
    ({"context_retry_interval_ms": 0}, "context_retry_interval_ms"),
    ({"status_timeout_ms": 100_000}, "status_timeout_ms"),
    ({"uid_post_attempts_max": 0}, "uid_post_attempts_max"),
])
def test_config_refusals_name_the_field(overrides, field):
    base = {"reader": "R", "desk": "office-1", "token_file": "/nonexistent"}
    with pytest.raises(ConfigError, match=field):
        load_config({}, **{**base, **overrides})


def test_config_needs_reader_desk_and_token_file():
    with pytest.raises(ConfigError, match="reader|desk|token_file"):
        load_config({})


@pytest.mark.parametrize("content", ["", "two words", "x" * 5000])
def test_token_file_must_hold_one_token(tmp_path, content):
    (tmp_path / "t").write_text(content)
    config = DeskReaderConfig(reader="R", desk="d", token_file=str(tmp_path / "t"))
    with pytest.raises(ConfigError, match="token_file"):
        config.token()


def test_missing_token_file():
    with pytest.raises(ConfigError, match="token_file"):
        DeskReaderConfig(reader="R", desk="d", token_file="/nonexistent/token").token()


# --- the staff API's answers as log lines -----------------------------------------------------


def test_summaries():
    done = summarize(200, {"id": 3, "status": "done", "action": "bind_card",
                           "card": {"uid": "04a1b2c3d4e5f6", "account_id": 5}})
    assert done.outcome == "done" and done.summary == "operation 3 done: card 04a1b2c3d4e5f6 bound to pupil 5"
    failed = summarize(200, {"id": 4, "status": "failed", "error": "uid: card 04 is already bound"})
    assert failed.outcome == "failed" and "already bound" in failed.summary
    refused = summarize(409, {"detail": "no pending operation on desk reader 'office-1'"})
    assert refused.outcome == "refused" and refused.summary.startswith("refused (409): no pending")
    assert summarize(500, "oops").outcome == "refused"
