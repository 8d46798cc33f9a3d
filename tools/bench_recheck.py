"""How true a latency table stays: raw against re-checked, on sub-nets the table never saw.

Two measurements, each printing a table and writing JSON:

- ``accuracy``: re-check a table (an old one, or one profiled in another machine state)
  with ``edgedyn recheck``, then time unseen sub-nets with deploy's protocol (export, build
  the optimized ONNX Runtime model, load, :func:`~edgedyn.deploy.timing.measure_runners`:
  interleaved bursts, about 2 s each) and score the table as it was and as re-checked:
  MAPE, share within ±10 %, Spearman.
- ``transfer``: move a table to another thread count with ``recheck --threads N`` and score
  it on unseen sub-nets timed at N threads, beside a full profile at N threads (``--full``),
  and beside the same correction fitted to the same probes timed in the unseen sub-nets' own
  run (as ``edgedyn deploy`` re-checks: on this VM the 2-thread state moves by 10-35 % within
  a minute, between a re-check and a timing made after it).

    python tools/bench_recheck.py accuracy --table profiles/cpu-resnet20.json --model resnet20 \\
        --out results/recheck_accuracy.json
    python tools/bench_recheck.py transfer --table t1.json --threads 2 --probes 16 --full t2.json \\
        --out results/recheck_transfer.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

UNSEEN_SEED = 40_000  # none of the profiler's calibration, validation or probe seeds


def unseen_specs(net: Any, n: int, exclude: set) -> list[Any]:
    """``n`` random sub-nets (every other one floor-heavy) the table never timed."""
    specs: list[Any] = []
    i = 0
    while len(specs) < n:
        s = net.random_spec(UNSEEN_SEED + i, floor_p=0.5 if i % 2 else 0.0)
        i += 1
        if s not in exclude and s not in specs:
            specs.append(s)
    return specs


def table_specs(table: Any, net: Any) -> set:
    """Every sub-net the table timed: calibration, validation and probe points."""
    from edgedyn.dynamic import SubnetSpec

    sig = net.arch_signature()
    rows = list(table.calibration[sig].points) if sig in table.calibration else []
    rows += (table.validation.get(sig) or {}).get("points", [])
    for st in table.states.values():
        if sig in st.models:
            rows += st.models[sig].probes
    return {SubnetSpec(tuple(r["widths"])) for r in rows}


def deploy_timing(net: Any, specs: list[Any], threads: int, log) -> list[float]:
    """Median per-call latency (ms) of each sub-net, built and timed as ``edgedyn deploy`` does."""
    from edgedyn.backends import BackendOptions, get_backend
    from edgedyn.deploy.timing import measure_runners
    from edgedyn.device import busy_before_timing

    be = get_backend("onnxruntime", BackendOptions(device="cpu", threads=threads))
    with tempfile.TemporaryDirectory(prefix="edgedyn-bench-recheck-") as tmp:
        runners = []
        for i, s in enumerate(specs):
            onnx = net.export_onnx(s, Path(tmp) / f"s{i}.onnx")
            runners.append(be.load(be.build(onnx, Path(tmp) / f"s{i}.opt.onnx"), tuple(net.input_shape)).activate())
        busy_before_timing(log, 1.0)
        log(f"timing {len(specs)} sub-nets with deploy's protocol ({threads} thread(s), interleaved)")
        stats = measure_runners(runners)
        for r in runners:
            r.deactivate()
    return [st["median"] for st in stats]


def score(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    err = pred / meas - 1.0
    return {"mape": round(float(np.mean(np.abs(err)) * 100), 2),
            "within_10pct": round(float(np.mean(np.abs(err) <= 0.10) * 100), 1),
            "spearman": round(float(spearmanr(pred, meas).statistic), 4),
            "median_error_pct": round(float(np.median(err) * 100), 2),
            "worst_error_pct": round(float(err[np.argmax(np.abs(err))] * 100), 2)}


def _net(table: Any, model: str | None, input_size: int | None) -> Any:
    """The network the table's probes were stored for (or ``model``)."""
    from edgedyn.profile.recheck import rebuild, table_models

    held = table_models(table, Path(str(table.path)), model, input_size)
    return rebuild(next(iter(held.values())), Path(str(table.path)), None)[0]


def _print(rows: dict[str, dict]) -> None:
    print(f"{'table':<46}{'MAPE %':>8}{'<=10 %':>8}{'Spearman':>10}{'median err %':>14}{'worst %':>9}")
    for name, r in rows.items():
        print(f"{name:<46}{r['mape']:>8.2f}{r['within_10pct']:>8.1f}{r['spearman']:>10.4f}"
              f"{r['median_error_pct']:>14.2f}{r['worst_error_pct']:>9.2f}")


def _rechecked(args: argparse.Namespace, threads: int | None) -> tuple[Any, float, Any]:
    """``edgedyn recheck`` of ``args.table`` now (at ``threads``): its result, its seconds, and
    the table it wrote, following the state it added."""
    from edgedyn.profile import LatencyTable
    from edgedyn.profile.recheck import recheck

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = recheck(args.table, Path(tmp) / "now.json", threads=threads, probes=args.probes, model=args.model,
                      input_size=args.input_size, log=print)
        seconds = time.perf_counter() - t0
        table = LatencyTable.load(Path(tmp) / "now.json")
    table.select_state(key=res.state.key)
    return res, seconds, table


def accuracy(args: argparse.Namespace) -> dict:
    from edgedyn.profile import LatencyTable

    src = LatencyTable.load(args.table)
    net = _net(src, args.model, args.input_size)
    res, seconds, rechecked = _rechecked(args, None)
    specs = unseen_specs(net, args.unseen, table_specs(rechecked, net))
    meas = np.array(deploy_timing(net, specs, int(src.backend.get("threads") or 1), print))
    src.active_state = src.base_state  # the table as it was: its own state
    raw = np.array([src.predict(net, s) for s in specs])
    fixed = np.array([rechecked.predict(net, s) for s in specs])
    rows = {"as profiled": score(raw, meas), "re-checked": score(fixed, meas)}
    _print(rows)
    return {"schema": "edgedyn.bench_recheck/1", "kind": "accuracy", "table": args.table, "created": src.created,
            "recheck_seconds": round(seconds, 1), "fit": res.models[0].report.to_dict(),
            "correction": res.models[0].report.correction.to_dict(), "rows": rows,
            "points": [{"widths": list(s.widths), "measured_ms": round(float(m), 5), "raw_ms": round(float(r), 5),
                        "rechecked_ms": round(float(f), 5)} for s, m, r, f in zip(specs, meas, raw, fixed)]}


def _probe_specs(table: Any, net: Any, k: int | None) -> list[Any]:
    """The probes ``recheck`` fits on (``k`` of those the table stores, spread; all by default)."""
    from edgedyn.deploy.probes import probe_specs_for

    sig = net.arch_signature()
    held = max((len(st.models[sig].probes) for st in table.states.values() if sig in st.models), default=0)
    return probe_specs_for(table, net, k or held) if held else []


def transfer(args: argparse.Namespace) -> dict:
    from edgedyn.profile import LatencyTable

    src = LatencyTable.load(args.table)
    net = _net(src, args.model, args.input_size)
    res, seconds, moved = _rechecked(args, args.threads)
    exclude = table_specs(moved, net)
    full = LatencyTable.load(args.full) if args.full else None
    if full is not None:
        exclude |= table_specs(full, net)
    specs = unseen_specs(net, args.unseen, exclude)
    probe_specs = _probe_specs(src, net, args.probes)
    timed = np.array(deploy_timing(net, specs + probe_specs, args.threads, print))
    meas, probe_ms = timed[:len(specs)], timed[len(specs):]
    src.active_state = src.base_state
    rows = {f"{src.backend.get('threads')}-thread table as profiled": score(
        np.array([src.predict(net, s) for s in specs]), meas),
        f"moved to {args.threads} threads by recheck": score(np.array([moved.predict(net, s) for s in specs]), meas)}
    in_run = None
    if probe_specs:  # deploy's way: the same probes timed in the run that timed the unseen sub-nets
        from edgedyn.deploy.probes import apply_recheck, recheck_report

        in_run = recheck_report(src, net, probe_specs, probe_ms)
        fixed = [apply_recheck(in_run, src.predict(net, s)) for s in specs]
        if all(f is not None for f in fixed):
            rows["moved by the same probes, timed in that run"] = score(np.array(fixed, float), meas)
    out: dict[str, Any] = {"schema": "edgedyn.bench_recheck/1", "kind": "transfer", "table": args.table,
                           "threads": args.threads, "recheck_seconds": round(seconds, 1),
                           "source_profile_seconds": src.backend.get("profile_seconds"),
                           "fit": res.models[0].report.to_dict(), "correction": res.models[0].report.correction.to_dict()}
    if full is not None:
        full.active_state = full.base_state
        rows[f"full {args.threads}-thread profile"] = score(np.array([full.predict(net, s) for s in specs]), meas)
        out["full_table"] = args.full
        out["full_profile_seconds"] = full.backend.get("profile_seconds")
    _print(rows)
    print(f"recheck took {seconds:.1f} s; the source profile {src.backend.get('profile_seconds')} s"
          + (f"; the full {args.threads}-thread profile {full.backend.get('profile_seconds')} s" if full else ""))
    out["rows"] = rows
    if in_run is not None:
        out["in_run_recheck"] = in_run
    out["points"] = [{"widths": list(s.widths), "measured_ms": round(float(m), 5)} for s, m in zip(specs, meas)]
    return out


def main(argv: list[str] | None = None) -> int:
    from edgedyn.artifacts import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    for name in ("accuracy", "transfer"):
        q = sub.add_parser(name)
        q.add_argument("--table", required=True)
        q.add_argument("--model", default=None, help="a table without probes: its model")
        q.add_argument("--input-size", type=int, default=None)
        q.add_argument("--probes", type=int, default=None)
        q.add_argument("--unseen", type=int, default=24)
        q.add_argument("--out", required=True)
        if name == "transfer":
            q.add_argument("--threads", type=int, required=True)
            q.add_argument("--full", default=None, help="a full profile at --threads, scored beside")
    args = p.parse_args(argv)
    result = accuracy(args) if args.kind == "accuracy" else transfer(args)
    from edgedyn.device import device_info

    result["device"] = {k: device_info("cpu").get(k) for k in ("name", "isa", "logical_threads")}
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
