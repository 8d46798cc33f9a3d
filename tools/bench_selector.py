"""Benchmark the runtime selector: (a) decision + dispatch overhead, (b) misses under CPU contention.

(a) Overhead: the bare runtime call of the fastest sub-net (``runner.raw_infer()``: the
    ONNX Runtime ``session.run``, no input check) and ``selector.infer(x, budget)`` (which
    checks the input, decides, runs that same sub-net, records the statistics and builds
    the ``InferInfo``) alternate call by call; overhead = median(selector) - median(bare),
    in microseconds and as a percentage of the sub-net's median latency.
(b) Contention: requests back to back at a budget for which a feasible sub-net exists
    (idle, the ``budget`` policy picks sub-net F for it). Partway through a second *process*
    loads the CPU (numpy matrix products, bounded in time, killed at the end). The miss
    rate of ``adaptive`` is compared with ``fixed`` (= sub-net F), overall and while loaded.
    A request *has a feasible sub-net* unless even the fastest sub-net missed it: a miss
    while the fastest sub-net ran means nothing could have met that budget at that moment,
    so ``miss_feasible`` counts only misses on the other sub-nets (the policy's own misses)
    over the requests that are not such infeasible ones.

(c) ``--noop``: only the selector's own Python work, ``selector.infer`` around runners that
    return at once (no bundle, no ONNX Runtime); best of 7 rounds of 50,000 calls, in µs per call.

Usage::

    python tools/bench_selector.py --bundle bundles/digits_ort   # an existing bundle
    python tools/bench_selector.py                               # bundles/bench_demo, built from a demo run if absent
    python tools/bench_selector.py --noop                        # (c) alone, in a second

Each run takes under 2 minutes (default: 4 x 14 s of serving, ABBA order, + the overhead loop;
building the demo bundle the first time adds about 40 s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOAD_CODE = """
import time, numpy as np
end = time.time() + {seconds}
a = np.random.default_rng(0).standard_normal((1024, 1024))
while time.time() < end:
    a = (a @ a.T) * 1e-3
"""


def demo_bundle(out: Path, threads: int) -> Path:
    """An (untrained) resnet20 run with three widths, deployed with ONNX Runtime fp32."""
    import torch

    from edgedyn.artifacts import atomic_write_json
    from edgedyn.deploy import deploy
    from edgedyn.dynamic import DynamicNet

    run = Path(tempfile.mkdtemp(prefix="edgedyn_bench_run_"))
    torch.manual_seed(0)
    net = DynamicNet.from_name("resnet20", num_classes=10, input_size=32)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 3, 32, 32, generator=gen) for _ in range(3)]
    subnets = []
    for i, r in enumerate((0.25, 0.5, 1.0)):
        spec = net.uniform_spec(r)
        net.calibrate_bn(spec, batches)
        subnets.append({"budget": {"text": str(r), "value": r, "unit": "fraction"}, "widths": list(spec.widths),
                        "cost": net.macs(spec) / 1e6, "macs": net.macs(spec), "params": net.params(spec),
                        "holdout_accuracy": 0.6 + 0.1 * i, "test_accuracy": 0.6 + 0.1 * i})
    net.save(run / "weights.pt")
    atomic_write_json(run / "subnets.json", {
        "schema": "edgedyn.search_result/1", "config": {"data": "digits", "seed": 0, "holdout_fraction": 0.1},
        "net": net.config(), "signature": net.signature(),
        "cost": {"name": "flops", "unit": "MMAC", "full": net.macs(net.full_spec()) / 1e6},
        "table": {"path": None, "measured": None}, "subnets": subnets})
    deploy(run, out=out, threads=threads, measure_iters=200, test_limit=64)
    # untrained: accuracies are near chance; rank the sub-nets by size, as training would
    doc = json.loads((out / "manifest.json").read_text())
    for i, s in enumerate(doc["subnets"]):
        s["accuracy"]["test"] = 0.6 + 0.1 * i
    (out / "manifest.json").write_text(json.dumps(doc, indent=1))
    return out


def bench_overhead(bundle: Path, calls: int) -> dict:
    from edgedyn.runtime import Selector

    out = {}
    for policy in ("budget", "adaptive"):
        sel = Selector.load(bundle, policy)
        f = int(np.argmin(sel.expected_ms))
        budget = sel.expected_ms[f] * 1e-3  # below every sub-net: the fastest runs; every candidate is checked
        bare = sel.runners[f].raw_infer()
        x = np.random.default_rng(0).standard_normal(sel.manifest.input_shape).astype(np.float32)
        for _ in range(200):
            bare(x)
            sel.infer(x, budget)
        raw = np.empty(calls)
        via = np.empty(calls)
        pc = time.perf_counter
        for k in range(calls):
            t0 = pc()
            bare(x)
            t1 = pc()
            sel.infer(x, budget)
            t2 = pc()
            raw[k], via[k] = t1 - t0, t2 - t1
        t0 = pc()
        for _ in range(calls):
            sel.select(budget)
        decide_us = (pc() - t0) / calls * 1e6
        raw_ms, via_ms = float(np.median(raw) * 1e3), float(np.median(via) * 1e3)
        over_us = (via_ms - raw_ms) * 1e3
        out[policy] = {"subnet": f, "calls": calls, "raw_median_ms": raw_ms, "selector_median_ms": via_ms,
                       "overhead_us": over_us, "overhead_pct": 100 * over_us / (raw_ms * 1e3),
                       "select_only_us": decide_us, "manifest_median_ms": sel.expected_ms[f]}
        sel.close()
    return out


def bench_noop(calls: int = 50_000, rounds: int = 7) -> dict[str, float]:
    """(c): µs per ``selector.infer`` call around no-op runners, best of ``rounds``, per policy."""
    from edgedyn.bundle import Manifest, SubnetRecord
    from edgedyn.dynamic import SubnetSpec
    from edgedyn.runtime import Selector

    shape = (1, 3, 32, 32)

    class NoOp:
        input_shape = shape
        out = np.zeros((1, 10), np.float32)

        def infer(self, x: np.ndarray) -> np.ndarray:
            return self.out

        def deactivate(self) -> None:
            pass

    subnets = [SubnetRecord(index=i, spec=SubnetSpec((4 * (i + 1),)), files={"model": {"path": "m", "sha256": ""}},
                            macs=10 ** (i + 1), params=1, measured={"median": m, "p90": m, "p99": m, "n": 1},
                            accuracy={"test": a}) for i, (m, a) in enumerate(zip((1.0, 2.0, 4.0), (0.7, 0.8, 0.9)))]
    manifest = Manifest(device={"kind": "cpu"}, fingerprint="noop", backend={"name": "onnxruntime"}, precision="fp32",
                        threads=1, input={"shape": list(shape), "dtype": "float32"}, subnets=subnets,
                        path=Path("manifest.json"))
    x = np.zeros(shape, np.float32)
    out = {}
    for policy in ("budget", "adaptive"):
        sel = Selector(manifest, [NoOp() for _ in subnets], policy)
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(calls):
                sel.infer(x, 0.5)
            best = min(best, (time.perf_counter() - t0) / calls * 1e6)
        out[policy] = best
    return out


def bench_contention(bundle: Path, seconds: float, load_from: float, load_to: float, budget_factor: float) -> dict:
    from edgedyn.runtime import Selector
    from edgedyn.runtime.serve import serve

    probe = Selector.load(bundle, "budget")
    order = probe.order
    # a budget with slack for the second most accurate sub-net (the largest one does not fit)
    target = order[1] if len(order) > 1 else order[0]
    budget = probe.expected_ms[target] * budget_factor
    fixed = probe.select(budget)
    x = np.random.default_rng(0).standard_normal((16, *Selector.load(bundle, "fixed").manifest.input_shape))
    x = x.astype(np.float32)
    results = {"budget_ms": budget, "fixed_subnet": fixed, "seconds": seconds,
               "load_window_s": [load_from, load_to], "order": "ABBA (fixed, adaptive, adaptive, fixed)"}
    runs: dict[str, list] = {"fixed": [], "adaptive": []}
    for policy in ("fixed", "adaptive", "adaptive", "fixed"):  # ABBA: drift of the shared machine cancels
        sel = Selector.load(bundle, policy, subnet=fixed, budget_ms=budget)
        load = None
        report = None
        try:
            def budget_fn(k: int, t: float) -> float:
                nonlocal load
                if load is None and t >= load_from:
                    load = subprocess.Popen([sys.executable, "-c", LOAD_CODE.format(seconds=load_to - load_from)])
                return budget

            report = serve(sel, x, duration_s=seconds, budget=budget_fn, keep_timeline=True)
        finally:
            if load is not None and load.poll() is None:
                load.kill()
            if load is not None:
                load.wait()
        runs[policy].append(report)
        sel.close()
    fastest = int(np.argmin(probe.expected_ms))
    for policy, reports in runs.items():
        tl = [e for r in reports for e in r.timeline]
        loaded = [(i, ms) for t, i, ms, b in tl if load_from + 0.5 <= t <= load_to]
        infeasible = sum(1 for _, i, ms, _ in tl if i == fastest and ms > budget)
        own = sum(1 for _, i, ms, _ in tl if i != fastest and ms > budget)
        idle = [(i, ms) for t, i, ms, b in tl if t < load_from or t > load_to + 0.5]
        n_sub = len(reports[0].counts)
        results[policy] = {
            "requests": sum(r.requests for r in reports),
            "miss_rate": float(np.mean([ms > budget for _, _, ms, _ in tl])),
            "infeasible_requests": infeasible,
            "met_feasible": 1.0 - own / max(1, len(tl) - infeasible),
            "miss_rate_loaded": float(np.mean([ms > budget for _, ms in loaded])) if loaded else None,
            "miss_rate_idle": float(np.mean([ms > budget for _, ms in idle])) if idle else None,
            "switches": sum(r.switches for r in reports),
            "counts": [sum(r.counts[s] for r in reports) for s in range(n_sub)],
            "counts_loaded": [sum(1 for i, _ in loaded if i == s) for s in range(n_sub)],
            "p50_ms": float(np.percentile([ms for _, _, ms, _ in tl], 50)),
            "p99_ms": float(np.percentile([ms for _, _, ms, _ in tl], 99))}
    probe.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("bundles/bench_demo"),
                    help="bundle dir; a demo bundle is built there if absent")
    ap.add_argument("--threads", type=int, default=1, help="threads for the demo bundle")
    ap.add_argument("--calls", type=int, default=3000, help="overhead: calls per side")
    ap.add_argument("--seconds", type=float, default=14.0, help="contention: serving time per run (4 runs, ABBA)")
    ap.add_argument("--load-from", type=float, default=4.0)
    ap.add_argument("--load-to", type=float, default=10.0)
    ap.add_argument("--budget-factor", type=float, default=1.5, help="budget = factor x idle median of sub-net F")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_selector.json"))
    ap.add_argument("--noop", action="store_true", help="only (c): the selector's own work around no-op runners")
    args = ap.parse_args()
    if args.noop:
        print("(c) selector.infer around no-op runners, best of 7 x 50,000 calls: "
              + ", ".join(f"{p} {us:.2f} us" for p, us in bench_noop().items()))
        return
    if not (args.bundle / "manifest.json").is_file():
        print(f"building a demo bundle in {args.bundle} ...", flush=True)
        demo_bundle(args.bundle, args.threads)
    over = bench_overhead(args.bundle, args.calls)
    print("\n(a) selector overhead on the fastest sub-net (alternating calls, medians)")
    print(f"{'policy':>9} {'raw ms':>8} {'selector ms':>12} {'overhead us':>12} {'% of sub-net':>13} {'select() us':>12}")
    for p, r in over.items():
        print(f"{p:>9} {r['raw_median_ms']:>8.4f} {r['selector_median_ms']:>12.4f} {r['overhead_us']:>12.2f} "
              f"{r['overhead_pct']:>12.2f}% {r['select_only_us']:>12.2f}")
    cont = bench_contention(args.bundle, args.seconds, args.load_from, args.load_to, args.budget_factor)
    print(f"\n(b) contention: budget {cont['budget_ms']:.3f} ms (idle pick: sub-net {cont['fixed_subnet']}), "
          f"CPU load process from {args.load_from:g} s to {args.load_to:g} s of each {args.seconds:g} s run, "
          f"runs in ABBA order")
    print(f"{'policy':>9} {'requests':>9} {'miss all':>9} {'miss idle':>10} {'miss load':>10} {'met feasible':>13} "
          f"{'switches':>9} {'uses (loaded)':>16}")
    for p in ("fixed", "adaptive"):
        r = cont[p]

        def pct(v):
            return f"{100 * v:.1f}%" if v is not None else "-"

        print(f"{p:>9} {r['requests']:>9} {pct(r['miss_rate']):>9} {pct(r['miss_rate_idle']):>10} "
              f"{pct(r['miss_rate_loaded']):>10} {pct(r['met_feasible']):>13} {r['switches']:>9} "
              f"{str(r['counts_loaded']):>16}")
    from edgedyn.bundle import Manifest

    m = Manifest.load(args.bundle)
    doc = {"bundle": str(args.bundle), "fingerprint": m.fingerprint, "backend": m.backend, "threads": m.threads,
           "expected_ms": [s.expected_ms for s in m.subnets], "overhead": over, "contention": cont}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
