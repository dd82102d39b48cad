"""Schemathesis against the served staff API: the real app under uvicorn, real PostgreSQL with the
demo dataset, an operator's token; the OpenAPI document the app serves is the contract.

Checks: no 5xx, every status and content type documented, answers match their schemas, invalid
input (wrong types, out-of-range integers, NUL and other control characters, unknown fields)
rejected, a missing required header rejected, an undeclared method answered 405 with Allow.
Bounded and seeded: the same requests every run, well under a minute.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from staff_api import create_app
from staff_api.auth import token_sha256
from storage.demo_dataset import demo_card_uid
from support import ThreadServer

from test_staff_api import sql

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "negative_data_rejection", "missing_required_header",
          "unsupported_method")
SEED = 20261125
# Generated cases per operation and phase: enough to reach every operation's checks (the coverage
# phase adds its boundary and negative cases on top), few enough for the whole file to take
# about half a minute.
MAX_EXAMPLES = 20
# Rotating one's own token (or the operator's, by login) would end the run's credentials midway;
# tests/staff_api/test_staff_api_hardening.py covers both.
EXCLUDED_PATHS = ("/me/token", "/staff/{login}/token")
OPERATOR_TOKEN = "schemathesis-operator-token"
# Rows of the demo dataset (storage.demo_dataset): pupils 1..1000 with card 04+id, school 1, its
# turnstiles 1000001.. and tills 2000001.., pupil N's representative N.
KNOWN_IDS = {
    "account_id": [1, 2, 3],
    "school_id": [1],
    "representative_id": [1, 2],
    "device_id": [1000001, 2000001],
    "uid": [demo_card_uid(n).hex() for n in (4, 5, 6)],
}


def schemathesis_cli() -> str:
    return str(Path(sys.executable).with_name("st"))


def known_ids(ids: dict[str, list]) -> str:
    """A schemathesis.toml drawing path parameters half of the time from ids that exist (the other
    half generated: unknown, out of range, malformed), so the checks reach past the 404."""
    lines = []
    for name, values in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {values!r}".replace("'", '"'), ""]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in ids]
    return "\n".join(lines) + "\n"


def run_schemathesis(schema_url: str, token: str, workdir: Path, extra: list[str],
                     ids: dict[str, list] | None = None) -> subprocess.CompletedProcess:
    if ids:
        (workdir / "schemathesis.toml").write_text(known_ids(ids))  # read from the working directory
    argv = [schemathesis_cli(), "run", schema_url, "--header", f"Authorization: Bearer {token}",
            "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED), "--workers", "1", "--suppress-health-check", "all", "--request-timeout", "30",
            "--output-truncate", "false", *extra]
    return subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=300)


def test_the_staff_api_keeps_its_openapi_contract(demo_dsn, tmp_path):
    sql(demo_dsn, "INSERT INTO staff (login, role, school_id, token_sha256) VALUES ('st-operator', 'operator', NULL, $1)",
        token_sha256(OPERATOR_TOKEN))
    # money commands stay pending without a gateway: 202 after this wait
    server = ThreadServer(create_app(demo_dsn, command_wait_ms=50, pool_size_max=4)).start()
    try:
        started = time.monotonic()
        exclusions = [arg for path in EXCLUDED_PATHS for arg in ("--exclude-path", path)]
        result = run_schemathesis(f"http://127.0.0.1:{server.port}/schema/openapi.json", OPERATOR_TOKEN, tmp_path,
                                  exclusions, ids=KNOWN_IDS)
        took = time.monotonic() - started
    finally:
        server.stop()
    summary = result.stdout[result.stdout.rfind("SUMMARY"):]
    print(summary, f"\n(schemathesis took {took:.1f} s)")
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    assert "Tested: " in summary and "passed" in summary


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s"]))
