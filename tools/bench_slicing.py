#!/usr/bin/env python
"""Does prefix slicing really compute less? Times set_subnet() sub-nets on this CPU.

Prints a table (median ms per forward, ratio to full) and writes JSON.
Usage: python tools/bench_slicing.py [--model resnet18] [--input-size 224] [--out results/bench_slicing.json]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from edgedyn.artifacts import atomic_write_json
from edgedyn.device import device_info
from edgedyn.dynamic import DynamicNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("results/bench_slicing.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net = DynamicNet.from_name(args.model, num_classes=1000, input_size=args.input_size).eval()
    specs = {"full": net.full_spec(), "uniform_0.5": net.uniform_spec(0.5), "min": net.min_spec()}
    x = torch.randn(1, 3, args.input_size, args.input_size)
    times: dict[str, list[float]] = {k: [] for k in specs}
    with torch.inference_mode():
        for s in specs.values():  # warm-up
            net.set_subnet(s)
            for _ in range(3):
                net(x)
        for _ in range(args.reps):  # interleaved rounds
            for name, s in specs.items():
                net.set_subnet(s)
                t0 = time.perf_counter()
                net(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    full = float(np.median(times["full"]))
    rows = []
    print(f"{args.model} @ {args.input_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'sub-net':<12} {'GMACs':>8} {'median ms':>10} {'p90 ms':>8} {'x full':>7}")
    for name, s in specs.items():
        med = float(np.median(times[name]))
        row = {"subnet": name, "widths": list(s.widths), "gmacs": net.macs(s) / 1e9, "median_ms": med,
               "p90_ms": float(np.percentile(times[name], 90)), "ratio_to_full": med / full}
        rows.append(row)
        print(f"{name:<12} {row['gmacs']:>8.3f} {med:>10.2f} {row['p90_ms']:>8.2f} {row['ratio_to_full']:>7.3f}")
    ok = rows[-1]["ratio_to_full"] < 0.4
    print(f"smallest / full = {rows[-1]['ratio_to_full']:.3f} (goal < 0.4): {'PASS' if ok else 'FAIL'}")
    atomic_write_json(args.out, {"benchmark": "slicing", "model": args.model, "input_size": args.input_size,
                                 "reps": args.reps, "threads": torch.get_num_threads(),
                                 "device": device_info("cpu"), "rows": rows, "goal_met": ok})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
