"""py-spy (the sampling profiler) against a server process, and its profile summed by own time.

``python -m loadtests.bench --profile`` records the gateway over the measured window of ecard's
closed loop at 1,000 devices in speedscope format (``--format speedscope``, open it at
https://www.speedscope.app), then lists the functions where the samples were *in* (own time:
the innermost Python frame of each sample; time in C code, uvloop's loop included, counts for
the Python function that called it). With the gateway's CPU per decision of the same window,
each function's share is also given in microseconds per decision.

    python -m loadtests.pyspy PROFILE.speedscope.json [--top 25] [--us-per-decision 31.4]

py-spy pauses the process for every sample (200 a second here): the profiled run is a
little slower than an unprofiled one, so its figures are not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

TOP = 25


def executable() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, duration_s: float, out: Path, rate: int = 200) -> subprocess.Popen | None:
    exe = executable()
    if exe is None:
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s))), "--rate", str(rate),
         "--format", "speedscope", "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen | None, out: Path | None, us_per_decision: float | None = None, top: int = TOP) -> dict:
    """Wait for py-spy, then summarize its file (or say why there is none)."""
    if proc is None:
        return {"error": "py-spy is not installed (pip install py-spy, or .[dev])"}
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    if out is None or not out.exists():
        return {"error": f"py-spy exited with {proc.returncode}: {output.decode(errors='replace')[-500:]}"}
    summary = own_time(json.loads(out.read_text()), top)
    summary["file"] = str(out)
    if us_per_decision:
        summary["server_cpu_us_per_decision"] = us_per_decision
        for row in summary["top"]:
            row["us_per_decision"] = round(row["own_fraction"] * us_per_decision, 2)
    return summary


def own_time(speedscope: dict, top: int = TOP, main_thread_only: bool = True) -> dict:
    """Samples per function, innermost frame only, in a py-spy speedscope file.

    The gateway decides on its main thread (the event loop); its other threads (Prometheus'
    HTTP server, asyncio's executor) sleep in select() or on a lock, which py-spy does not
    always recognise as idle. So only the main thread is counted (unless ``main_thread_only``
    is false or there is no thread of that name); the others are listed with their sample counts.
    """
    frames = speedscope["shared"]["frames"]
    own: dict[int, float] = {}
    counts: dict[int, int] = {}
    total = 0.0
    samples_total = 0
    profiles = speedscope["profiles"]
    chosen = [p for p in profiles if '"MainThread"' in p.get("name", "")] if main_thread_only else []
    chosen = chosen or profiles
    left_out = {p.get("name", "?"): len(p.get("samples", [])) for p in profiles if p not in chosen}
    for profile in chosen:  # one per thread; stacks are listed root first
        samples = profile.get("samples", [])
        weights = profile.get("weights") or [1] * len(samples)  # py-spy: seconds per sample
        for stack, weight in zip(samples, weights):
            if not stack:
                continue
            total += weight
            samples_total += 1
            own[stack[-1]] = own.get(stack[-1], 0.0) + weight
            counts[stack[-1]] = counts.get(stack[-1], 0) + 1
    # py-spy keeps line numbers in the frame: one function at several lines is summed into one row.
    by_function: dict[tuple[str, str], float] = {}
    n_by_function: dict[tuple[str, str], int] = {}
    for index, weight in own.items():
        f = frames[index]
        key = (f.get("name", "?"), f.get("file", "?"))
        by_function[key] = by_function.get(key, 0.0) + weight
        n_by_function[key] = n_by_function.get(key, 0) + counts[index]
    rows = sorted(by_function.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "threads": [p.get("name", "?") for p in chosen],
        "other_threads_samples": left_out,
        "samples": samples_total,
        "sampled_s": round(total, 3),
        "top": [
            {
                "function": name,
                "file": file,
                "samples": n_by_function[(name, file)],
                "own_fraction": round(w / total, 4) if total else 0.0,
            }
            for (name, file), w in rows
        ],
    }


def render(summary: dict, title: str) -> str:
    if "error" in summary:
        return f"{title}: {summary['error']}"
    lines = [
        f"{title}: {summary['samples']:,} samples of {', '.join(summary.get('threads', [])) or 'every thread'}, "
        f"top {len(summary['top'])} functions by own time ({summary.get('file', '')})"
    ]
    if summary.get("other_threads_samples"):
        others = ", ".join(f"{name} {n:,}" for name, n in summary["other_threads_samples"].items())
        lines.append(f"  (not counted: other threads, asleep in select() or on a lock: {others} samples)")
    lines.append("  (own time: the innermost Python frame; C code it calls, uvloop's included, counts for it)")
    per_dec = "us_per_decision" in (summary["top"][0] if summary["top"] else {})
    lines.append(f"  {'own %':>6} {'us/dec' if per_dec else '':>7}  function (file)")
    for row in summary["top"]:
        us = f"{row['us_per_decision']:>7.2f}" if per_dec else f"{'':>7}"
        lines.append(f"  {row['own_fraction'] * 100:>6.1f} {us}  {row['function']} ({row['file']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.pyspy", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", help="a py-spy speedscope file")
    ap.add_argument("--top", type=int, default=TOP)
    ap.add_argument("--us-per-decision", type=float, help="the process's CPU per decision over the same window")
    args = ap.parse_args(argv)
    summary = own_time(json.loads(Path(args.profile).read_text()), args.top)
    summary["file"] = args.profile
    if args.us_per_decision:
        for row in summary["top"]:
            row["us_per_decision"] = round(row["own_fraction"] * args.us_per_decision, 2)
    print(render(summary, "py-spy"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
