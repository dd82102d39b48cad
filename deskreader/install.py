"""Install what the desk reader bridge and its real tests need, when it is missing.

    python -m deskreader.install          # (make deskreader-deps)

- Debian packages: pcscd (the PC/SC daemon), libpcsclite-dev and swig (pyscard builds from
  its sdist here: there is no wheel for this platform), and for the tests the virtual
  reader (vsmartcard-vpcd, a pcscd driver), the virtual card library (vsmartcard-vpicc,
  python3-virtualsmartcard) and python3-pycryptodome (the card library imports Crypto).
  apt-get update + install when any is missing; needs root and the Debian mirror.
- pyscard into this interpreter's environment (the project's .venv) with pip, as the
  project's ``pcsc`` extra declares it (pyproject.toml).

pyscard is an extra, not a dependency: a machine without swig and the PC/SC headers could
not install ecard at all. Exit code 0 when everything is there
afterwards, 1 (with the reason on stderr) otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

OS_PACKAGES = ("pcscd", "libpcsclite-dev", "swig", "vsmartcard-vpcd", "vsmartcard-vpicc",
               "python3-virtualsmartcard", "python3-pycryptodome")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pyscard_requirement() -> str:
    """pyscard's requirement, as the project's ``pcsc`` extra declares it (one definition)."""
    with open(PYPROJECT, "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["pcsc"]
    (requirement,) = [r for r in extra if r.lower().startswith("pyscard")]
    return requirement


# apt-get update and install on a slow mirror (measured: about a minute here); pip builds
# pyscard from source (swig + gcc, about half a minute). Past these something hangs.
APT_TIMEOUT_S = 900
PIP_TIMEOUT_S = 600


class InstallError(RuntimeError):
    pass


def missing_os_packages() -> list[str]:
    if shutil.which("dpkg-query") is None:
        raise InstallError("not a Debian system (no dpkg-query): install pcscd, libpcsclite-dev, swig, vsmartcard "
                           "and pyscard by hand")
    missing = []
    for package in OS_PACKAGES:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode != 0 or "install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def has_pyscard(python: str = sys.executable) -> bool:
    result = subprocess.run([python, "-c", "import smartcard.scard"], capture_output=True, timeout=60, check=False)
    return result.returncode == 0


def _run(argv: list[str], timeout_s: int, what: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise InstallError(f"{what} did not finish within {timeout_s} s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise InstallError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")


def ensure(python: str = sys.executable, log=print) -> None:
    """Everything installed afterwards, or ``InstallError`` saying why not."""
    missing = missing_os_packages()
    if missing:
        if os.geteuid() != 0:
            raise InstallError(f"Debian packages missing and not root: apt-get install {' '.join(missing)}")
        log(f"deskreader.install: apt-get install {' '.join(missing)}")
        _run(["apt-get", "update"], APT_TIMEOUT_S, "apt-get update")
        _run(["apt-get", "install", "-y", "--no-install-recommends", *OS_PACKAGES], APT_TIMEOUT_S, "apt-get install")
    if not has_pyscard(python):
        requirement = pyscard_requirement()
        log(f"deskreader.install: pip install {requirement}")
        _run([python, "-m", "pip", "install", "--quiet", requirement], PIP_TIMEOUT_S, "pip install pyscard")
        if not has_pyscard(python):
            raise InstallError("pyscard installed but 'import smartcard.scard' still fails")


def main() -> int:
    try:
        ensure()
    except InstallError as exc:
        print(f"deskreader.install: {exc}", file=sys.stderr)
        return 1
    print("deskreader.install: pcscd, vsmartcard and pyscard are installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
