"""``edgedyn demo``: the whole pipeline on the embedded defaults (CPU, ONNX Runtime, synthetic data).

1. profile this CPU (resnet20 at 32x32) into a latency table, with a small validation;
2. search resnet20 on the generated ``synthetic`` task (widths matter there; digits saturate
   near 98 % at every width) under four latency budgets: autoslim, one-shot training and
   latency-steered greedy slimming, nested picks among the path and the uniform widths;
3. deploy the chosen sub-nets with ONNX Runtime (checked against PyTorch, re-measured);
4. serve requests with the adaptive selector while the budget ramps down and back up.

Every step writes its artifact under ``out`` and is skipped when a finished artifact for
this device is already there, so an interrupted demo continues where it stopped.

When the log is not a terminal (``make demo | tee``, CI), every step also prints a plain
line about every 30 s while it runs, such as ``[2/4] search (120 s)``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .progress import Progress

Log = Callable[[str], None]


def _phase(desc: str, log: Log) -> Progress:
    """A heartbeat for one step: off a terminal, ``"<desc> (elapsed s)"`` about every 30 s
    while it runs, then ``"<desc>: done (elapsed s)"``. The demo logs to stdout."""
    isatty = getattr(sys.stdout, "isatty", None)
    return Progress(desc=desc, bar=False, log=log, tty=bool(isatty and isatty()))


def _table_step(out: Path, model: str, size: int, validate: int, log: Log):
    from .device import device_fingerprint, device_info
    from .profile import LatencyTable
    from .profile.profiler import ProfileConfig, profile

    path = out / f"cpu-{model}.json"
    if path.is_file():
        try:
            table = LatencyTable.load(path)
            table.check_matches(device="cpu", fingerprint=device_fingerprint(device_info("cpu")))
            log(f"[1/4] profile: reusing {path} (measured on this device)")
            return path, table
        except ArtifactError as err:
            log(f"[1/4] profile: {err}; profiling again")
    log(f"[1/4] profile: measuring {model}@{size} blocks on this CPU with ONNX Runtime")
    with _phase("[1/4] profile", log):
        table = profile(ProfileConfig(model=model, input_size=size, out=path, validate=validate, resume=True),
                        log=lambda m: log("      " + m))
    return path, table


def budgets_from_table(table, model: str, size: int, points: tuple[float, ...] = (0.1, 0.4, 0.7, 1.0)) -> str:
    """Budgets in ms spread between this device's smallest and full sub-net (always feasible).

    A fixed fraction such as 0.25 of the full model is not: on a CPU, fixed per-layer costs
    can make the smallest sub-net more than a quarter of the full one.
    """
    from .dynamic import DynamicNet

    net = DynamicNet.from_name(model, input_size=size)
    lo, hi = table.predict(net, net.min_spec()), table.predict(net, net.full_spec())
    return ",".join(f"{lo + q * (hi - lo):.4f}ms" for q in points)


def run_demo(out: str | Path = "runs/demo", *, model: str = "resnet20", data: str = "synthetic",
             budgets: str | None = None, epochs: int = 5, validate: int = 10, requests: int = 10000,
             log: Log = print) -> dict[str, Any]:
    """Run the demo and return a summary (also written to ``out/summary.json``).

    ``budgets`` defaults to four latencies spread between the smallest and the full sub-net
    as the freshly measured table predicts them.
    """
    from .artifacts import atomic_write_json
    from .cost import LatencyCost
    from .deploy.build import deploy
    from .runtime.selector import Selector
    from .runtime.serve import load_inputs, ramp_budget, serve
    from .search import SearchConfig, load_result, run_search

    out = Path(out)
    t0 = time.perf_counter()
    table_path, table = _table_step(out, model, 32, validate, log)
    val = next(iter(table.validation.values()), None)

    run_dir = out / "search"
    budgets = budgets or budgets_from_table(table, model, 32)
    log(f"[2/4] search: autoslim, latency-steered, {model} on {data}, budgets {budgets}")
    # a quarter of the training data held out: the search scores candidates on it and deploy
    # decides which picks to serve on it (the test split only reports)
    cfg = SearchConfig(model=model, data=data, budgets=budgets, method="autoslim", pretrain_epochs=epochs,
                       train_epochs=epochs, holdout_fraction=0.25, out=str(run_dir), resume=True,
                       table=str(table_path))
    if not (run_dir / "subnets.json").is_file():
        with _phase("[2/4] search", log):
            run_search(cfg, LatencyCost(table))
    result = load_result(run_dir / "subnets.json")

    bundle_dir = out / "bundle"
    log(f"[3/4] deploy: ONNX Runtime fp32 bundle at {bundle_dir}")
    with _phase("[3/4] deploy", log):
        manifest = deploy(run_dir, backend="onnxruntime", precision="fp32", out=bundle_dir, table=table_path)

    log("[4/4] run: adaptive selector, budget ramping from above the largest to below the smallest sub-net")
    with _phase("[4/4] run", log):
        selector = Selector.load(bundle_dir, policy="adaptive")
        # from above every sub-net's deadline latency (p99), with room for the adaptive policy's
        # step-up margin, to below the fastest one's median; back up, then held at the top for a
        # quarter of the requests (a step up waits for a dwell and for headroom)
        hi, lo = max(selector.expected_ms) * 1.25, min(selector.median_ms) * 0.9
        inputs = load_inputs(None, selector.input_shape, count=64)
        selector.warmup()
        half = requests // 2
        down = serve(selector, inputs, requests=half, budget=ramp_budget(f"{hi:.4f}:{lo:.4f}", float(half)))
        up = serve(selector, inputs, requests=requests - half, budget=ramp_budget(f"{lo:.4f}:{hi:.4f}",
                                                                                 0.75 * (requests - half)))
    rows = []
    for sub in manifest.subnets:  # one per distinct sub-net; budgets that chose the same one share it
        rows.append({"budget": ",".join(str(b.get("text")) for b in sub.budgets) or "-",
                     "widths": list(sub.spec.widths), "mmacs": sub.macs / 1e6, "predicted_ms": sub.predicted_ms,
                     "measured_ms": sub.measured["median"] if sub.measured else None, "test_acc": sub.accuracy.get("test")})
    summary = {"model": model, "data": data, "table": str(table_path), "search_budgets": budgets,
               "picks": [{"budget": c["budget"].get("text"), "widths": c["widths"]} for c in result["subnets"]],
               "deploy_checks": manifest.checks, "validation": val and
               {k: val[k] for k in ("k", "mape", "within_10pct", "spearman_table", "spearman_flops")},
               "subnets": rows, "serve_down": down.to_dict(), "serve_up": up.to_dict(),
               "plot": str(run_dir / "accuracy_latency.png"), "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "summary.json", summary)
    log("")
    log(f"{'#':>2} {'budget(s) ms':>16} {'MMACs':>7} {'pred ms':>8} {'meas ms':>8} {'test acc':>8}")
    for i, r in enumerate(rows):
        acc = f"{100 * r['test_acc']:.1f}%" if r["test_acc"] is not None else "-"
        pred = f"{r['predicted_ms']:.3f}" if r["predicted_ms"] is not None else "-"
        log(f"{i:>2} {str(r['budget']):>16} {r['mmacs']:>7.2f} {pred:>8} {r['measured_ms']:>8.3f} {acc:>8}")
    _log_checks(manifest.checks, log)
    if val:
        log(f"table validation (K={val['k']}): MAPE {val['mape']:.2f}%, within 10% {val['within_10pct']:.0f}%, "
            f"Spearman {_rho(val['spearman_table'])} (FLOPs {_rho(val['spearman_flops'])})")
    log("budget ramping down:")
    log(down.format())
    log("budget ramping up, then held at the top:")
    log(up.format())
    log(f"plot: {summary['plot']}   summary: {out / 'summary.json'}   total {summary['seconds']} s")
    return summary


def _log_checks(checks: dict, log: Log) -> None:
    """Deploy's checks: measured against the table as profiled and as re-checked, and any problem."""
    if "prediction_error" in checks:
        def errs(key: str) -> str:
            return ", ".join(f"{100 * e:+.1f}%" for e in checks[key].values())

        rechecked = bool(checks.get("recheck", {}).get("trusted"))
        log(f"deploy check: measured vs the table as profiled {errs('prediction_error_raw')}"
            + (f"; vs the table re-checked on {checks['recheck']['probes']} probes {errs('prediction_error')}"
               if rechecked else "") + f" (all within 10%: {'yes' if checks['prediction_within_10pct'] else 'no'})")
    for problem in checks.get("problems", []):
        log(f"deploy check: {problem}")


def _rho(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
