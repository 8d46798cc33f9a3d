#!/usr/bin/env python
"""Latency-table accuracy on this device: profile models, validate on K unseen sub-nets.

For each model: profiling seconds, MAPE, share within +-10%, Spearman (table) and
Spearman (FLOPs) on the same K random sub-nets. Prints a table and writes JSON.

Usage: python tools/bench_profile.py [--models resnet20@32,resnet18@224] [--validate 30]
           [--backend onnxruntime] [--device cpu] [--threads N] [--out results/bench_profile.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgedyn.artifacts import atomic_write_json
from edgedyn.profile.profiler import ProfileConfig, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="resnet20@32,resnet18@224")
    ap.add_argument("--validate", type=int, default=30)
    ap.add_argument("--calibrate", type=int, default=144)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--group-size", type=int, default=None, help="hardware-aligned channel step (e.g. 8)")
    ap.add_argument("--tables", type=Path, default=Path("results/tables"),
                    help="where the tables are written (one per model)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_profile.json"))
    args = ap.parse_args()
    rows = []
    for item in args.models.split(","):
        name, _, size = item.partition("@")
        cfg = ProfileConfig(model=name, input_size=int(size) if size else None, device=args.device,
                            backend=args.backend, precision=args.precision, threads=args.threads,
                            group_size=args.group_size,
                            calibrate=args.calibrate, validate=args.validate, passes=args.passes,
                            out=args.tables / f"{args.device}-{name}-{size or 'default'}"
                                            f"{f'-g{args.group_size}' if args.group_size else ''}.json")
        table = profile(cfg, progress=False)
        val = next(v for v in table.validation.values() if v["model"] == f"{name}@{size}" or not size)
        rows.append({"model": val["model"], "group_size": args.group_size, "backend": table.backend["name"],
                     "backend_version": table.backend["version"],
                     "threads": table.backend.get("threads"), "thread_choice": table.backend.get("thread_choice"),
                     "precision": table.precision, "batch": table.batch,
                     "layout": table.layout.tag, "passes": args.passes, "calibration_terms": sorted(
                         next(c.coef for c in table.calibration.values() if c.model == val["model"])),
                     "profile_seconds": table.backend["profile_seconds"], "blocks": len(table.entries),
                     **{k: val[k] for k in ("k", "mape", "within_10pct", "spearman_table", "spearman_flops")},
                     "table": str(cfg.out), "device": table.device})
    print(f"\n{'model':<16} {'backend':<12} {'thr':>3} {'prof s':>7} {'K':>3} {'MAPE %':>7} {'<=10% %':>8} "
          f"{'rho table':>9} {'rho FLOPs':>9}")
    for r in rows:
        print(f"{r['model']:<16} {r['backend']:<12} {r['threads'] or '-':>3} {r['profile_seconds']:>7.1f} "
              f"{r['k']:>3} {r['mape']:>7.2f} {r['within_10pct']:>8.1f} "
              f"{r['spearman_table'] or float('nan'):>9.4f} {r['spearman_flops'] or float('nan'):>9.4f}")
    print(f"device: {rows[0]['device'].get('fingerprint')}  load at start: "
          f"{rows[0]['device'].get('load_average_at_start')}")
    atomic_write_json(args.out, {"benchmark": "profile", "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
