#!/usr/bin/env python
"""Benchmark the progressive search against its comparisons on the same data and budgets.

Three methods, same data, seed, epochs, budgets and pre-trained start:

- ``progressive+latency``: the search steered by the latency table (needs ``--table``);
- ``progressive+flops``:   the same search steered by MACs (the paper's setting);
- ``usnet``:               US-Nets uniform widths (largest that fits each budget, priced by
                           the table when one is given, else by MACs; ``usnet+flops`` forces MACs).

For every chosen sub-net: the table's predicted latency, the MEASURED latency (ONNX
export, onnxruntime CPU, pinned threads, per-call median in warm interleaved bursts) and
the test accuracy; per method the average test accuracy over the budgets. Prints a table
and writes ``bench_search.json`` and ``bench_search.png`` in ``--out``.

    python tools/bench_search.py --table profiles/cpu-x86.json --data digits --train-epochs 5
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default=None, help="latency table (profiles/cpu-*.json); without it the "
                   "progressive+latency method is skipped and no latency is predicted")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-limit", type=int, default=None)
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--budgets", default="0.3,0.5,0.75,1.0",
                   help="fractions of the full model's predicted latency (0.25 is below US-Nets' "
                        "smallest uniform width on CPU tables: fixed overheads)")
    p.add_argument("--channel-groups", type=int, default=4)
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--threshold", default="drop:5")
    p.add_argument("--pretrain-epochs", type=int, default=5)
    p.add_argument("--rank-epochs", type=int, default=1)
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--batches-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="progressive+latency,progressive+flops,usnet")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads (default: the table's, else all cores)")
    p.add_argument("--cores", default=None, help="CPU cores to pin the timing to, e.g. '0' or '0,1'")
    p.add_argument("--out", default="runs/bench_search")
    return p.parse_args(argv)


def measure(onnx_paths: list[Path], threads: int) -> list[dict]:
    """Latency of each model as deploy runs it: edgedyn's ONNX Runtime session settings (pinned
    threads, no spinning, full graph optimization) and the profiler's whole-sub-net protocol
    (per-call timings in warm bursts, interleaved rounds; median, p10 / p90 / p99)."""
    from edgedyn.backends import BackendOptions
    from edgedyn.backends.onnxruntime import OrtRunner
    from edgedyn.profile.measure import WHOLE_NET, measure_calls

    opts = BackendOptions(device="cpu", threads=threads)
    runners = [OrtRunner(str(p), opts) for p in onnx_paths]
    return [st.to_dict() for st in measure_calls(runners, WHOLE_NET, seed=0)]


def at_equal_latency(rows: list[dict], a: str, b: str) -> list[dict]:
    """For each pick of method ``b``: the best test accuracy method ``a`` reaches within the same
    MEASURED latency, beside ``b``'s. A positive ``gain`` means ``a`` is more accurate there."""
    out = []
    pa = [r for r in rows if r["method"] == a]
    for r in (r for r in rows if r["method"] == b):
        fit = [q for q in pa if q["measured_ms"] <= r["measured_ms"] * 1.02]  # 2%: timing noise
        if not fit:
            out.append({"budget": r["budget"], "measured_ms": r["measured_ms"], b: r["test_accuracy"], a: None,
                        "gain": None})
            continue
        best = max(fit, key=lambda q: q["test_accuracy"])
        out.append({"budget": r["budget"], "measured_ms": r["measured_ms"], b: r["test_accuracy"],
                    a: best["test_accuracy"], f"{a}_measured_ms": best["measured_ms"],
                    "gain": best["test_accuracy"] - r["test_accuracy"]})
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from edgedyn.cost import FlopsCost, LatencyCost
    from edgedyn.errors import EdgedynError
    from edgedyn.search import SearchConfig, run_search
    from edgedyn.search.run import plot, pretrain_only

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    table = None
    if args.table:
        from edgedyn.profile import LatencyTable

        table = LatencyTable.load(args.table)
        if not table.measured:
            print(f"warning: {args.table} is NOT measured on hardware; predicted latencies are estimates",
                  file=sys.stderr)
    elif "progressive+latency" in methods:
        print("warning: no --table given; skipping progressive+latency", file=sys.stderr)
        methods.remove("progressive+latency")
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})

    base = SearchConfig(model=args.model, data=args.data, data_limit=args.data_limit, input_size=args.input_size,
                        budgets=args.budgets, channel_groups=args.channel_groups, group_size=args.group_size,
                        threshold=args.threshold, pretrain_epochs=args.pretrain_epochs, rank_epochs=args.rank_epochs,
                        train_epochs=args.train_epochs, batches_per_epoch=args.batches_per_epoch,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=str(out / "pretrain"))
    try:
        weights = out / "pretrained.pt"
        if not weights.is_file():
            print(f"pre-training {args.model} on {args.data} ({args.pretrain_epochs} epochs)", file=sys.stderr)
            pretrain_only(base, weights)
        runs = {}
        for method in methods:
            kind, _, steer = method.partition("+")
            steer = steer or ("latency" if table is not None else "flops")  # usnet: same budgets as ours
            cost = LatencyCost(table) if steer == "latency" else FlopsCost()
            run_dir = out / method.replace("+", "_")
            cfg = replace(
                base, method=kind, weights=str(weights), pretrain_epochs=0, out=str(run_dir),
                table=args.table if steer == "latency" else None,
                table_measured=table.measured if (table is not None and steer == "latency") else None)
            print(f"running {method}", file=sys.stderr)
            runs[method] = run_search(cfg, cost)
    except EdgedynError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    predictor = LatencyCost(table) if table is not None else None
    rows, paths = [], []
    for method, res in runs.items():
        onnx_dir = out / "onnx" / method.replace("+", "_")
        onnx_dir.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(res.subnets):
            path = res.net.export_onnx(s.spec, onnx_dir / f"subnet{i}.onnx")
            paths.append(path)
            rows.append({"method": method, "budget": s.budget.text, "widths": list(s.spec.widths),
                         "search_cost": s.cost, "search_cost_unit": res.cost_unit, "mmac": s.macs / 1e6,
                         "params": s.params,
                         "predicted_ms": predictor.cost(res.net, s.spec) if predictor is not None else None,
                         "test_accuracy": s.test_accuracy, "holdout_accuracy": s.holdout_accuracy})
    threads = args.threads or (table.backend.get("threads") if table is not None else None)
    if threads is None:
        from edgedyn.backends.onnxruntime import default_threads

        threads = default_threads()
    torch.set_num_threads(max(1, threads))
    from edgedyn.device import busy_before_timing

    busy = busy_before_timing(lambda m: print(m, file=sys.stderr), 1.0)
    print(f"timing {len(paths)} sub-nets (onnxruntime CPU, {threads} threads, interleaved)", file=sys.stderr)
    for row, st in zip(rows, measure(paths, threads)):
        row["measured_ms"], row["measured_p10_ms"], row["measured_p90_ms"] = st["ms"], st["p10"], st["p90"]

    summary = {m: sum(r["test_accuracy"] for r in rows if r["method"] == m) / max(1, sum(r["method"] == m for r in rows))
               for m in runs}
    print(f"{'method':<22}{'budget':>7}{'MMAC':>8}{'pred ms':>9}{'meas ms':>9}{'test %':>8}")
    for r in rows:
        pred = f"{r['predicted_ms']:9.3f}" if r["predicted_ms"] is not None else f"{'-':>9}"
        print(f"{r['method']:<22}{r['budget']:>7}{r['mmac']:8.2f}{pred}{r['measured_ms']:9.3f}"
              f"{100 * r['test_accuracy']:8.2f}")
    print("average test accuracy over budgets:")
    for m, acc in summary.items():
        print(f"  {m:<22}{100 * acc:6.2f}%")
    equal = {}
    if "progressive+latency" in runs and "progressive+flops" in runs:
        equal = {"progressive+latency_vs_flops": at_equal_latency(rows, "progressive+latency", "progressive+flops")}
        print("at equal measured latency (best latency-steered pick within each FLOPs-steered pick's latency):")
        for e in equal["progressive+latency_vs_flops"]:
            if e["gain"] is None:
                print(f"  {e['measured_ms']:.3f} ms: no latency-steered pick that fast")
            else:
                print(f"  {e['measured_ms']:.3f} ms: flops {100 * e['progressive+flops']:.2f}%  latency "
                      f"{100 * e['progressive+latency']:.2f}%  gain {100 * e['gain']:+.2f}")
    doc = {"schema": "edgedyn.bench_search/1", "args": vars(args), "table": args.table,
           "table_measured": table.measured if table is not None else None,
           "timing": {"backend": "onnxruntime-cpu", "threads": threads, "cores": args.cores,
                      "protocol": "edgedyn.profile.measure.WHOLE_NET", "stat": "median",
                      "cpu_busy_before_timing": busy},
           "device": _device(), "rows": rows, "average_test_accuracy": summary, "equal_latency": equal,
           "runs": {m: str(r.out_dir) for m, r in runs.items()}}
    from edgedyn.artifacts import atomic_write_json

    atomic_write_json(out / "bench_search.json", doc)
    _plot(rows, out / "bench_search.png")
    first = next(iter(runs.values()))
    plot(first.to_dict(), Path(first.out_dir) / "accuracy_latency.png",
         [Path(r.out_dir) for r in list(runs.values())[1:]])
    print(f"wrote {out / 'bench_search.json'} and {out / 'bench_search.png'}")
    return 0


def _device() -> dict:
    from edgedyn.device import device_fingerprint, device_info

    info = device_info("cpu")
    info["fingerprint"] = device_fingerprint(info)
    return info


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["measured_ms"], 100 * r["test_accuracy"]) for r in rows if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
    ax.set_xlabel("measured latency (ms, onnxruntime CPU)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
