"""Smoke test of loadtests.gateway_path (no timing assertions): its replay is the recording, exactly.

The benchmark replays device frames recorded against one in-process gateway into a second one
built the same way; its figures mean something only if the second decides, answers and
journals exactly as the first did (every reply byte, every batch parameter).
"""

from __future__ import annotations

from loadtests import gateway_path


def test_replay_answers_and_journals_as_the_recording(monkeypatch):
    monkeypatch.setattr(gateway_path, "PUPILS", 2_000)
    recorded = gateway_path.record(1_500)
    assert len(recorded["frames"]) == 1_500 and recorded["batches"]
    figures = gateway_path.replay(recorded, 1_500, check=True)
    assert figures["replies_equal"] is True
    assert figures["batches_equal"] is True
    assert figures["decisions"] == 1_500
