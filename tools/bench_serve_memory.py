"""Peak RSS of ``edgedyn run --duration D`` for several durations: memory must stay flat.

Each run is a fresh ``python -m edgedyn.cli run`` subprocess; its peak resident set size is
the ``ru_maxrss`` that ``os.wait4`` returns for that child alone (``getrusage(RUSAGE_CHILDREN)``
would give the maximum over every child waited for so far). Before the streaming summary,
``serve`` kept every latency: memory grew with the number of requests.

    python tools/bench_serve_memory.py --bundle bundles/demo --durations 60 600 \\
        --out results/bench_serve_memory.json

Prints one line per run and writes a JSON report (schema ``edgedyn.bench_serve_memory/1``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(bundle: str, duration: float, policy: str, extra: list[str], root: Path = ROOT) -> dict:
    """One ``edgedyn run`` for ``duration`` seconds: its peak RSS, requests served and wall time."""
    with tempfile.TemporaryDirectory(prefix="edgedyn-bench-mem-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "edgedyn.cli", "run", "--bundle", os.path.abspath(bundle), "--duration", str(duration),
               "--policy", policy, "--json", str(report), *extra]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        # cwd: not this checkout (``-m`` puts the working directory first on the path)
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"edgedyn run --duration {duration} failed ({proc.returncode}): {err.strip()[-500:]}")
        rep = json.loads(report.read_text())
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"duration_s": duration, "requests": rep["requests"], "peak_rss_mib": usage.ru_maxrss * scale / 2**20,
            "wall_s": round(wall, 2), "percentiles_exact": rep.get("percentiles_exact")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a deployed bundle (edgedyn deploy --out)")
    ap.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0], help="seconds per run")
    ap.add_argument("--policy", default="budget")
    ap.add_argument("--budget-ms", type=float, default=None)
    ap.add_argument("--allow-other-device", action="store_true")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the edgedyn source tree to run (default: this one; another checkout to compare versions)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = ap.parse_args(argv)
    extra = (["--budget-ms", str(args.budget_ms)] if args.budget_ms else []) + \
        (["--allow-other-device"] if args.allow_other_device else [])
    runs = []
    for d in args.durations:
        r = run_once(args.bundle, d, args.policy, extra, args.root)
        runs.append(r)
        print(f"--duration {d:g}: {r['requests']} requests, peak RSS {r['peak_rss_mib']:.1f} MiB, "
              f"wall {r['wall_s']:.1f} s, percentiles exact: {r['percentiles_exact']}", flush=True)
    growth = runs[-1]["peak_rss_mib"] - runs[0]["peak_rss_mib"]
    print(f"peak RSS growth from {runs[0]['duration_s']:g} s to {runs[-1]['duration_s']:g} s: {growth:+.1f} MiB "
          f"({runs[-1]['requests'] / max(1, runs[0]['requests']):.1f}x the requests)")
    doc = {"schema": "edgedyn.bench_serve_memory/1", "bundle": args.bundle, "policy": args.policy,
           "root": str(args.root), "machine": platform.platform(), "cpus": os.cpu_count(), "runs": runs,
           "growth_mib": growth}
    if args.out:
        from edgedyn.artifacts import atomic_write_json

        atomic_write_json(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
