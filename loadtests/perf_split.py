"""Linux ``perf`` against a server process: its CPU split by the binary the samples were in.

``python -m loadtests.bench --perf`` samples the gateway and the ceiling over the measured window
of the held phase (the same paced rate for both) and splits each one's CPU per decision by
shared object: the kernel (socket calls, epoll, scheduling), the Python interpreter
(``libpython``: bytecode, dicts, allocation), uvloop, ``cryptography`` (the MACs), msgspec,
asyncpg, the C modules of the standard library. Where py-spy (``--profile``) names the
Python function, this says which machine code ran, the kernel included, and it does not pause
the process: ``perf record`` samples at ``SAMPLE_HZ`` from the kernel, so the figures of the
sampled run stay close to an unsampled one.

    python -m loadtests.perf_split PERF.data [--us-per-decision 65.7]

``perf`` comes from the Debian package ``linux-perf`` (``apt-get install linux-perf``); without
it the bench says so and goes on.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# Samples per second per CPU: about 10,000 samples over the held phase's 10 s window of a
# gateway at 0.6 core, enough for a part of 1% to be counted within a few tenths of a percent.
SAMPLE_HZ = 1_999
# How long perf may take to write its file after SIGINT (it resolves the symbols of every process map).
FINISH_TIMEOUT_S = 120
# Parts below this share are summed into "other".
SHARE_MIN_PERCENT = 0.5

_ROW = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


def executable() -> str | None:
    return shutil.which("perf")


class Recording:
    """``perf record`` of one process, from ``start`` until ``stop``."""

    def __init__(self, proc: subprocess.Popen, out: Path) -> None:
        self.proc = proc
        self.out = out
        self.stopped = False

    def stop(self) -> None:
        """End the sampling now (SIGINT, as at a terminal); perf then writes its file. Once only:
        a second SIGINT would interrupt the writing."""
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)

    def finish(self, us_per_decision: float | None = None) -> dict:
        """Stop if not yet, wait for perf's file, then split its samples (or say why there are none)."""
        self.stop()
        try:
            _, err = self.proc.communicate(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            return {"error": f"perf record exited with {self.proc.returncode}: {err.decode(errors='replace')[-500:]}"}
        summary = split(self.out, us_per_decision)
        summary["file"] = str(self.out)
        return summary


def start(pid: int, out: Path) -> Recording | None:
    """Sample ``pid`` (all its threads) into ``out``; None when perf is missing."""
    exe = executable()
    if exe is None:
        return None
    proc = subprocess.Popen(
        [exe, "record", "--freq", str(SAMPLE_HZ), "--pid", str(pid), "--output", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return Recording(proc, out)


MISSING = {"error": "perf is not installed (apt-get install linux-perf)"}


def split(data: Path, us_per_decision: float | None = None) -> dict:
    """``perf report --sort dso`` of a recorded file: each binary's share of the samples."""
    exe = executable()
    if exe is None:
        return dict(MISSING)
    report = subprocess.run(
        [exe, "report", "--input", str(data), "--sort", "dso", "--stdio", "--no-children", "-g", "none"],
        capture_output=True, text=True, timeout=FINISH_TIMEOUT_S,
    )
    if report.returncode != 0:
        return {"error": f"perf report exited with {report.returncode}: {report.stderr[-500:]}"}
    return parse(report.stdout, us_per_decision)


def parse(text: str, us_per_decision: float | None = None) -> dict:
    """The rows of ``perf report --sort dso --stdio`` as parts: name, percent, µs per decision."""
    samples = re.search(r"^# Samples: (\d+)(K?)", text, re.M)
    parts: list[dict] = []
    other = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _ROW.match(line)
        if not m:
            continue
        percent, dso = float(m.group(1)), part_name(m.group(2))
        if percent < SHARE_MIN_PERCENT:
            other += percent
            continue
        for p in parts:
            if p["part"] == dso:  # asyncpg's three modules are one part
                p["percent"] = round(p["percent"] + percent, 2)
                break
        else:
            parts.append({"part": dso, "percent": percent})
    if other:
        parts.append({"part": "other", "percent": round(other, 2)})
    if us_per_decision:
        for p in parts:
            p["us_per_decision"] = round(p["percent"] / 100 * us_per_decision, 1)
    out: dict = {"parts": parts}
    if samples:
        out["samples"] = int(samples.group(1)) * (1000 if samples.group(2) else 1)
    if us_per_decision:
        out["server_cpu_us_per_decision"] = us_per_decision
    return out


# The C extensions the gateway loads, by file name (the first part of it): the library they are of.
LIBRARIES = {
    "loop": "uvloop",
    "_rust": "cryptography",
    "_core": "msgspec",
    "protocol": "asyncpg",
    "pgproto": "asyncpg",
    "record": "asyncpg",
    "libc": "libc",
}


def part_name(dso: str) -> str:
    """``[kernel.kallsyms]`` -> kernel; ``libpython3.11.so.1.0`` -> python; ``loop.cpython-311-x86_64-linux-gnu.so``
    -> uvloop; ``_rust.abi3.so`` -> cryptography; ``array.cpython-311-x86_64-linux-gnu.so`` -> array (the standard
    library's C modules by their own name)."""
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("libpython"):
        return "python"
    stem = dso.split(".", 1)[0] if ".so" in dso else dso
    return LIBRARIES.get(stem, stem)


def render(ecard: dict, ceiling: dict | None, title: str) -> list[str]:
    """Side by side: each part's µs per decision in ecard and in the ceiling."""
    if "error" in ecard:
        return [f"{title}: {ecard['error']}"]
    theirs = {p["part"]: p for p in (ceiling or {}).get("parts", [])}
    lines = [title, f"  {'part':<16} {'ecard us/dec':>12} {'%':>6} {'ceiling us/dec':>15} {'%':>6}"]
    seen = set()
    for p in ecard["parts"]:
        c = theirs.get(p["part"], {})
        seen.add(p["part"])
        lines.append(
            f"  {p['part']:<16} {p.get('us_per_decision', '-'):>12} {p['percent']:>6.1f} "
            f"{c.get('us_per_decision', '-'):>15} {c.get('percent', 0.0):>6.1f}"
        )
    for name, c in theirs.items():
        if name not in seen:
            lines.append(f"  {name:<16} {'-':>12} {0.0:>6.1f} {c.get('us_per_decision', '-'):>15} {c['percent']:>6.1f}")
    lines.append(
        f"  total            {ecard.get('server_cpu_us_per_decision', '-'):>12} {'':>6} "
        f"{(ceiling or {}).get('server_cpu_us_per_decision', '-'):>15}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.perf_split", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="a perf.data file")
    ap.add_argument("--us-per-decision", type=float, help="the process's CPU per decision over the sampled window")
    args = ap.parse_args(argv)
    result = split(args.data, args.us_per_decision)
    if "error" in result:
        print(result["error"], file=sys.stderr)
        return 1
    print("\n".join(render(result, None, f"perf: {args.data}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
