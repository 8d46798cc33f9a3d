#!/usr/bin/env python
"""Head-to-head of the search pipelines at equal MEASURED latency, over several seeds.

    python tools/bench_search.py --data fashion-mnist --seeds 0,1,2 --out runs/bench_fmnist

Methods (``--methods``; every one starts from the same pre-trained weights per seed and
gets the same joint-training epochs, ``--train-epochs``), the named variants the search
methods declare (``variants`` in ``edgedyn/search/methods/*.py``):

- ``autoslim+latency``  edgedyn's default: one-shot training (uniform widths: the seed's
                        US-Nets run), then per budget, from the smallest up, a greedy leg
                        slimmed from the full model down to the budget and never below the
                        previous pick, steered by the latency table; the best nested chain
                        is deployed;
- ``autoslim+flops``    the same, the search steered by MACs (budgets still priced by
                        the table, so both are picked for the same latency budgets);
- ``autoslim-grow+latency``, ``autoslim-grow+flops`` an ablation: each budget's best
                        candidate grown up to the budget (``direction="grow"``, cheaper)
                        instead of slimmed from the full model;
- ``usnet``             Universally Slimmable Networks (uniform widths, sandwich rule);
- ``paper``             the paper's pipeline: noise ranking, progressive search keeping the
                        least accuracy drop, selective fine-tuning, channel groups of 1/4;
- ``progressive+ratio`` edgedyn's former default (accuracy lost per ms, 1/8 groups);
- ``autoslim+latency-uniform`` an ablation: one-shot training over uniform widths (as
                        US-Nets trains), then the same slimming and final training;
- ``usnet-aligned``     US-Nets' network (the seed's US-Nets run, no training of its own),
                        serving uniform widths rounded up to the table's channel block
                        (16 on AVX-512 ONNX Runtime), the widest that fits each budget;
- ``torch-pruning``     the seed's pre-trained model pruned by Torch-Pruning to each budget
                        (a global ratio bisected against the table, round_to the block),
                        each pruned model fine-tuned: ``--train-epochs`` shared equally
                        among them (its picks have weights of their own; subnets.json
                        records their accuracies, which is all this script reads);
- issue 19's lever rows (docs/search-plan-round8.md, docs/search.md): the default
                        ``autoslim-final+latency`` plus one lever each:
                        ``autoslim-neighbour+latency`` (L1a), ``autoslim-ftfinal+latency``
                        (L1b), ``autoslim-usebudget+latency`` (L1c), ``autoslim-flat+latency``
                        (L2), ``autoslim-score2000+latency`` (L3a), ``autoslim-bncal+latency``
                        (L3b), ``autoslim-grid16+latency`` (L4; on resnet20 the same grid as the
                        default), ``autoslim-final2+latency`` (L5), ``autoslim-mean+latency``
                        (L6: each sandwich step's losses averaged, not summed) beside its
                        baseline ``usnet-mean`` (US-Nets trained the same way; every uniform
                        width deployed, as for ``usnet``), ``autoslim-fill+latency`` (L7: each
                        pick widened by MACs per predicted ms until nothing wider fits its
                        budget) and ``autoslim-meanfill+latency`` (L6 and L7); the same levers
                        on top of L6 (the default since 2026-12-03): ``autoslim-mean-LEVER+latency``
                        for LEVER in neighbour, ftfinal, usebudget, flat, score2000, bncal.

Equal measured latency. Every sub-net a method deploys is exported to ONNX and timed
with deploy's protocol (ONNX Runtime on this CPU, the table's thread count, per-call
median of warm bursts interleaved across all sub-nets of all runs, about 2 s each). A
budget is a fraction of the full model's measured latency. At each budget a method
serves the sub-net that is most accurate on the HOLDOUT among those it deployed whose
measured latency fits; its TEST accuracy is reported. US-Nets deploys every uniform
width of the grid (0.25 to 1 in eighths) and so gets the widest one that fits. A method
with nothing that fits a budget scores nothing there (reported as a miss).

Output: a table per budget (mean +- sd over seeds), the paired difference against US-Nets
(mean +- standard error; ``--reference VARIANT`` adds the same against that variant,
e.g. ``usnet-aligned`` or ``torch-pruning``), each method's pipeline wall time against US-Nets', an ablation
row for autoslim before its final training, ``bench_search.json`` and
``bench_search.png`` in ``--out``. Every run is checkpointed: the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from edgedyn.search.registry import variants

#: name: (SearchConfig overrides, steering cost): every method's named variants, declared
#: beside the method (``variants`` of edgedyn/search/methods/*.py)
METHODS = {name: (v.overrides, v.cost) for name, v in variants().items()}
#: runs kept for the record whose code has since changed: reported, never trained again
ARCHIVED = {
    "autoslim-final-r4+latency": ("round 4: autoslim-final+latency before the full model served every budget it "
                                  "fits (the holdout could swap it for a smaller sub-net)",
                                  METHODS["autoslim-final+latency"]),
    "autoslim-final-r5+latency": ("round 5: autoslim-final+latency searched on the table before it pooled the "
                                  "timings of padding-equivalent blocks and widened its correction priors",
                                  METHODS["autoslim-final+latency"]),
    "autoslim-final-r5+flops": ("round 5: autoslim-final+flops, its picks fitted to the budgets by the table "
                                "before it pooled padding-equivalent blocks", METHODS["autoslim-final+flops"]),
    "autoslim-final-r6+latency": ("round 6: autoslim-final+latency before autoslim drew US-Nets' batches and "
                                  "widths (its one-shot phase had seeds of its own)", METHODS["autoslim-final+latency"]),
    "autoslim-final-r6+flops": ("round 6: autoslim-final+flops before autoslim drew US-Nets' batches and widths",
                                METHODS["autoslim-final+flops"]),
    "autoslim-r4+latency": ("round 4: autoslim+latency on the table before it pooled padding-equivalent blocks, "
                            "before the full model served every budget it fits", METHODS["autoslim+latency"]),
    "autoslim-r4+flops": ("round 4: autoslim+flops, before the full model served every budget it fits",
                          METHODS["autoslim+flops"]),
    "autoslim-grow-r4+latency": ("round 4: autoslim-grow+latency on the table before it pooled padding-equivalent "
                                 "blocks", METHODS["autoslim-grow+latency"]),
    "autoslim-grow-r4+flops": ("round 4: autoslim-grow+flops, before the full model served every budget it fits",
                               METHODS["autoslim-grow+flops"]),
}
DEFAULT_METHODS = "usnet,autoslim+latency,autoslim+flops,autoslim-random+latency,paper"
#: autoslim with uniform one-shot training and no final epochs trains exactly the network US-Nets
#: trains (the same batches and widths, bit for bit: tests/test_search.py), so these reuse the
#: seed's US-Nets run for it (and are charged its time)
REUSE_USNET = {"autoslim+latency", "autoslim+flops", "autoslim-grow+latency", "autoslim-grow+flops",
               "usnet-aligned"}  # US-Nets' network itself: only the widths it serves differ
# ... and so do the archived runs of those methods
REUSE_USNET |= {a for a, (_, cfg) in ARCHIVED.items() if any(cfg is METHODS[m] for m in REUSE_USNET)}
#: US-Nets' rows: every uniform width is deployed (each budget served by the best that fits)
UNIFORM_ALL = {"usnet", "usnet-mean"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="profiles/cpu-resnet20.json", help="latency table of this CPU")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-limit", type=int, default=8000, help="training images (the rest of the pool unused)")
    p.add_argument("--holdout-fraction", type=float, default=0.2,
                   help="with --data-limit 8000: a 2000-image holdout from the training file")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--budgets", default="0.3,0.5,0.75,1.0", help="fractions of the full model's latency")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--train-epochs", type=int, default=3, help="joint (sandwich) epochs, every method")
    p.add_argument("--final-epochs", type=int, default=1, help="autoslim: the last ones train the picks only")
    p.add_argument("--rank-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--score-samples", type=int, default=500)
    p.add_argument("--slim-step", type=float, default=0.05)
    p.add_argument("--batches-per-epoch", type=int, default=None, help="cap (smoke tests only)")
    p.add_argument("--calib-batches", type=int, default=40, help="final per-sub-net BN recalibration batches")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where training runs (timing: ORT CPU)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="PyTorch threads for training (1 when several seeds run as parallel processes)")
    p.add_argument("--search-calib-batches", type=int, default=2, help="BN recalibration batches per candidate")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: time and report the runs that finished (a method may have fewer seeds)")
    p.add_argument("--predicted-only", action="store_true",
                   help="train and time nothing: report the runs that finished at the table's PREDICTED "
                        "latency (the validity rule's fallback, or a look on a busy machine); written as "
                        "bench_search.predicted.{json,md}, the measured report untouched")
    p.add_argument("--summarize-only", action="store_true",
                   help="train and time nothing: summarise the last report's bench_search.json again for "
                        "--seeds and --methods (written as bench_search.seeds<...>.md)")
    p.add_argument("--from", dest="from_reports", default=None, metavar="A.json,B.json",
                   help="with --summarize-only: pool these reports (predicted-only ones; measured ones of valid "
                        "timings with --across-timings) instead of --out's; written to --out as "
                        "bench_search.pooled.{json,md}")
    p.add_argument("--across-tables", "--across-timings", dest="across_tables", action="store_true",
                   help="with --from: pool reports with different price lists: predicted reports whose runs "
                        "were searched with different tables, or measured reports of different valid timings; "
                        "each seed is priced by its own report's list, its budgets fractions of that list's "
                        "full model, and a seed's rows must share one list")
    p.add_argument("--no-measure", action="store_true",
                   help="train and search only (seeds run as parallel processes; a last call times and reports)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the table's)")
    p.add_argument("--measure-ms", type=float, default=2000.0, help="timing per sub-net (deploy's protocol)")
    p.add_argument("--out", default="runs/bench_search")
    p.add_argument("--reference", default="usnet",
                   help="also report the paired differences against this variant (usnet-aligned, torch-pruning; "
                        "it must be in --methods); the cost ratios stay against US-Nets")
    return p.parse_args(argv)


# -- running the methods ------------------------------------------------------------------
def run_all(args: argparse.Namespace, table, log) -> dict:
    """Train / search every (seed, method), resuming what an earlier call left; their results."""
    from edgedyn.cost import FlopsCost, LatencyCost
    from edgedyn.errors import EdgedynError
    from edgedyn.search import SearchConfig, run_search
    from edgedyn.search.pipeline import pretrain_only

    out = Path(args.out)
    base = SearchConfig(model=args.model, data=args.data, data_limit=args.data_limit, input_size=args.input_size,
                        holdout_fraction=args.holdout_fraction, budgets=args.budgets, channel_groups=8, min_groups=2,
                        threshold="drop:5", pretrain_epochs=args.pretrain_epochs, rank_epochs=args.rank_epochs,
                        train_epochs=args.train_epochs, final_epochs=args.final_epochs,
                        batches_per_epoch=args.batches_per_epoch, batch_size=args.batch_size, lr=args.lr,
                        score_samples=args.score_samples, search_calib_batches=args.search_calib_batches,
                        calib_batches=args.calib_batches,
                        slim_step=args.slim_step, before_train=True,
                        device=args.device, table=args.table, table_measured=table.measured)
    lat = LatencyCost(table)
    runs: dict = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        sdir = out / f"seed{seed}"
        weights = sdir / "pretrained.pt"
        if not weights.is_file():
            log(f"seed {seed}: pre-training {args.model} on {args.data} ({args.pretrain_epochs} epochs)")
            t0 = time.time()
            pretrain_only(replace(base, seed=seed, out=str(sdir / "pretrain")), weights)
            _write(sdir / "pretrain_time.json", {"wall_s": time.time() - t0})
        for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
            overrides, steer = METHODS[name] if name in METHODS else ARCHIVED[name][1]
            run_dir = sdir / name.replace("+", "_")
            done = run_dir / "bench_done.json"
            if done.is_file():
                runs[(seed, name)] = {"dir": run_dir, **json.loads(done.read_text())}
                continue
            if args.report_only or args.predicted_only or name in ARCHIVED:
                log(f"seed {seed}: {name} has not finished; left out of the report")
                continue
            cfg = replace(base, **overrides, seed=seed, weights=str(weights), pretrain_epochs=0, out=str(run_dir),
                          resume=(run_dir / "checkpoint.pt").is_file(),
                          # a run killed before its first checkpoint starts again
                          overwrite=not (run_dir / "checkpoint.pt").is_file())
            charged = 0.0
            if name in REUSE_USNET:
                usnet_done = sdir / "usnet" / "bench_done.json"
                usnet = runs.get((seed, "usnet")) or (  # listed in this call, or finished by an earlier one
                    {"dir": usnet_done.parent, **json.loads(usnet_done.read_text())} if usnet_done.is_file() else None)
                if usnet is None:
                    raise EdgedynError(f"{name} reuses the US-Nets run of seed {seed}: run usnet first "
                                       f"(no {usnet_done})")
                charged = usnet["wall_s"]
                # no before-train diagnostic: with no training of their own it would equal the result
                cfg = replace(cfg, weights=str(usnet["dir"] / "weights.pt"), train_epochs=0,
                              before_train=False)
            log(f"seed {seed}: {name}{' (resumed)' if cfg.resume else ''}")
            t0, c0 = time.time(), time.process_time()
            result = run_search(cfg, lat if steer == "latency" else FlopsCost(), select_cost=lat)
            # the ablation's extra evaluation (accuracy before the final training) is not part of the pipeline
            extra = result.timings.get("before_train_s", 0.0)
            # cpu_s: this process's CPU seconds for the method's own work (not the reused US-Nets
            # run), which other jobs on the machine do not inflate as they do the wall time
            info = {"wall_s": time.time() - t0 - extra + charged, "diagnostic_s": extra, "resumed": cfg.resume,
                    "reused_usnet_s": charged, "own_wall_s": time.time() - t0 - extra,
                    "own_cpu_s": time.process_time() - c0 - result.timings.get("before_train_cpu_s", 0.0)}
            _write(done, info)
            runs[(seed, name)] = {"dir": run_dir, **info}
    for run in runs.values():
        run["phase_cpu_s"] = phase_cpu(run["dir"])
    return runs


#: the phases the issue's cost criterion counts: ranking, search and (one-shot or joint) training
PIPELINE_PHASES = ("rank", "supernet", "train", "search")


def phase_cpu(run_dir: Path) -> float | None:
    """CPU seconds of the run's ranking, training and search phases, as its result recorded them
    (None for runs from before the phases were timed)."""
    try:
        timings = json.loads((run_dir / "subnets.json").read_text()).get("timings") or {}
    except (OSError, ValueError):
        return None
    keys = [f"{p}_cpu_s" for p in PIPELINE_PHASES if f"{p}_cpu_s" in timings]
    return sum(timings[k] for k in keys) if keys else None


# -- what each method deploys, and its accuracies ------------------------------------------
def deployed(run_dir: Path, name: str, calib_batches: int, log) -> list[dict]:
    """The sub-nets a run deploys, with holdout and test accuracy (US-Nets: every uniform width)."""
    from edgedyn.search import load_result

    doc = load_result(run_dir)
    subs = [{"widths": s["widths"], "holdout": s["holdout_accuracy"], "test": s["test_accuracy"],
             "budget": s["budget"]["text"], "before_train": s.get("before_train")} for s in doc["subnets"]]
    if name == "usnet-aligned":
        return _aligned_accuracies(run_dir, subs, calib_batches, log)
    if name not in UNIFORM_ALL:
        return subs
    cache = run_dir / "uniform_widths.json"
    if cache.is_file():
        return json.loads(cache.read_text())["subnets"]
    log(f"  {run_dir}: accuracy of every uniform width")
    subs = _uniform_accuracies(run_dir, doc, calib_batches)
    _write(cache, {"subnets": subs})
    return subs


def _aligned_accuracies(run_dir: Path, picks: list[dict], calib_batches: int, log) -> list[dict]:
    """US-Nets aligned serves US-Nets' network: its picks are scored as US-Nets' widths are
    (the seed's US-Nets weights, the same BN recalibration), so a width both deploy scores
    the same for both (the paired difference is the widths' alone)."""
    from edgedyn.dynamic import SubnetSpec
    from edgedyn.search import load_result

    cache = run_dir / "aligned_widths.json"
    if cache.is_file():
        return json.loads(cache.read_text())["subnets"]
    usnet_dir = run_dir.parent / "usnet"
    uniform = {tuple(s["widths"]): s for s in deployed(usnet_dir, "usnet", calib_batches, log)}
    extra = [SubnetSpec.of(p["widths"]) for p in picks if tuple(p["widths"]) not in uniform]
    scored = {tuple(s["widths"]): s for s in _uniform_accuracies(usnet_dir, load_result(usnet_dir), calib_batches,
                                                                 extra)} if extra else {}
    subs = [{**p, **{k: {**uniform, **scored}[tuple(p["widths"])][k] for k in ("holdout", "test")}} for p in picks]
    _write(cache, {"subnets": subs})
    return subs


def _uniform_accuracies(run_dir: Path, doc: dict, calib_batches: int, specs: list | None = None) -> list[dict]:
    import torch

    from edgedyn.cost import FlopsCost
    from edgedyn.data import load_data, make_loader
    from edgedyn.dynamic import DynamicNet
    from edgedyn.search import train as T
    from edgedyn.search.reselect import uniform_points

    c = doc["config"]
    net = DynamicNet.load(run_dir / "weights.pt")
    data = load_data(c["data"], c["input_size"] or 32, seed=c["seed"], holdout_fraction=c["holdout_fraction"],
                     limit=c["data_limit"])
    hold = list(make_loader(data.holdout, 256, shuffle=False))
    test = list(make_loader(data.test, 256, shuffle=False))
    torch.manual_seed(c["seed"])
    calib = T.take_batches(make_loader(data.train, c["batch_size"], shuffle=True, seed=c["seed"]), calib_batches)
    if specs is None:  # every uniform width
        specs = sorted((p.spec for p in uniform_points(net, FlopsCost())), key=lambda s: sum(s.widths))
    out = []
    for spec in specs:
        if spec not in net.bn_stats:
            net.calibrate_bn(spec, calib, calib_batches)
        out.append({"widths": list(spec.widths), "holdout": T.accuracy(net, spec, hold),
                    "test": T.accuracy(net, spec, test), "budget": None, "before_train": None})
    return out


def measure_all(specs: list[tuple[int, ...]], args: argparse.Namespace, table, log) -> dict[tuple[int, ...], dict]:
    """Deploy's timing of every distinct sub-net (the architecture alone decides latency), with
    the table's probes timed in the same interleaved run: the table is re-checked against the
    machine as it is during this timing (``edgedyn recheck``'s correction, recorded with the
    machine state), which decides whether the timing is valid (:func:`recheck_verdict`)."""
    import tempfile

    import torch

    from edgedyn.backends import BackendOptions
    from edgedyn.backends.onnxruntime import OrtRunner
    from edgedyn.deploy.build import measure_runners
    from edgedyn.deploy.probes import probe_specs_for, recheck_report
    from edgedyn.device import busy_before_timing
    from edgedyn.dynamic import DynamicNet, SubnetSpec
    from edgedyn.profile.states import current_key

    threads = args.threads or table.backend.get("threads") or 1
    net = DynamicNet.from_name(args.model, num_classes=10, input_size=args.input_size, channel_groups=8, min_groups=1)
    probes = probe_specs_for(table, net, 12)
    with tempfile.TemporaryDirectory(prefix="edgedyn-bench-") as tmp:
        todo = [SubnetSpec.of(s) for s in specs] + probes
        paths = [net.export_onnx(s, Path(tmp) / f"s{i}.onnx") for i, s in enumerate(todo)]
        runners = [OrtRunner(str(p), BackendOptions(device="cpu", threads=threads)) for p in paths]
        torch.set_num_threads(max(1, threads))
        busy = busy_before_timing(log, 1.0)
        log(f"timing {len(specs)} distinct sub-nets and {len(probes)} probes (onnxruntime CPU, {threads} thread(s), "
            f"interleaved, about {args.measure_ms / 1000:g} s each)")
        stats = measure_runners(runners, target_ms=args.measure_ms)
    rc = recheck_report(table, net, probes, [st["median"] for st in stats[len(specs):]])
    rc.update(recheck_verdict(rc, table.predict(net, probes[0]), table.predict(net, probes[-1])))
    rc["state"] = current_key("cpu", "onnxruntime", threads)
    log(f"re-check: probe MAPE {rc['probe_mape_before']:.1f}% -> {rc['probe_mape_after_loo']:.1f}%; the machine "
        f"runs {rc['ratio_small']:.3f}x (smallest) .. {rc['ratio_full']:.3f}x (full) the table: timing "
        f"{'valid' if rc['valid'] else 'INVALID'} ({rc['why']})")
    return {"busy": busy, "threads": threads, "recheck": rc,
            **{tuple(s): {**st, "predicted": table.predict(net, SubnetSpec.of(s))} for s, st in zip(specs, stats)}}


#: a timing is valid when the machine's drift since the profile is a scale this uniform across sizes
UNIFORM_DRIFT = 0.05


def recheck_verdict(rc: dict, small_ms: float, full_ms: float) -> dict:
    """Whether a timing compares methods fairly. Budgets are fractions of the full model's
    measured latency, so a machine uniformly slower or faster than its table changes nothing;
    a drift that differs between small and large sub-nets moves the table's picks against
    their budgets. Valid: the re-check's correction is trusted and moves the smallest probe
    and the full model by the same factor within :data:`UNIFORM_DRIFT` (this replaces round
    7's hand-written rule: full model within 5 % and width 0.25 within 10 % of the table)."""
    from edgedyn.profile.states import Correction

    c = Correction.from_dict(rc["correction"], "recheck")
    small, full = c.apply(small_ms) / small_ms, c.apply(full_ms) / full_ms
    uniform = abs(small / full - 1.0) <= UNIFORM_DRIFT
    why = ("re-check not trusted: " + str(rc.get("problem")) if not rc["trusted"] else
           f"drift {small:.3f}x small vs {full:.3f}x full: " + ("uniform" if uniform else "not uniform") +
           f" within {100 * UNIFORM_DRIFT:g}%")
    return {"ratio_small": round(small, 4), "ratio_full": round(full, 4), "valid": bool(rc["trusted"] and uniform),
            "why": why}


# -- the comparison -----------------------------------------------------------------------
def serve(subs: list[dict], lat: dict, budget_ms: float, key: str = "median") -> dict | None:
    """The deployed sub-net a selector serves at ``budget_ms``: the most accurate on the
    holdout among those whose measured median (``key="predicted"``: the table's
    prediction) fits (ties: the faster)."""
    fit = [s for s in subs if lat[tuple(s["widths"])][key] <= budget_ms]
    if not fit:
        return None
    return max(fit, key=lambda s: (s["holdout"], -lat[tuple(s["widths"])][key]))


def compare(args, runs: dict, subs: dict, lat: dict, key: str = "median",
            lat_of_seed: dict[int, dict] | None = None) -> dict:
    """Per budget and method, the served sub-nets and the summary; budgets are fractions of
    the full model's measured latency (``key="predicted"``: everything by the table, a
    diagnostic that separates the search from the table's error). ``lat_of_seed``: reports
    pooled across tables (``--across-tables``), each seed priced by its own table, its budgets
    fractions of that table's full model."""
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = sorted({s for s, _ in runs})
    methods = list(dict.fromkeys(m for _, m in runs))
    net_full = max((tuple(s["widths"]) for v in subs.values() for s in v), key=sum)
    lat_for = {seed: (lat_of_seed or {}).get(seed, lat) for seed in seeds}
    full_ms = lat[net_full][key]
    table: dict = {}
    have = {m: [s for s in seeds if (s, m) in runs] for m in methods}
    for m in methods:
        per_budget = []
        for b in budgets:
            rows = []
            for seed in have[m]:
                ls = lat_for[seed]
                pick = serve(subs[(seed, m)], ls, b * ls[net_full][key], key)
                rows.append(None if pick is None else {
                    "seed": seed, "widths": pick["widths"], "measured_ms": ls[tuple(pick["widths"])][key],
                    "test": pick["test"], "holdout": pick["holdout"], "before_train": pick.get("before_train")})
            per_budget.append({"budget": b, "budget_ms": None if lat_of_seed else b * full_ms, "runs": rows})
        table[m] = per_budget
    # the uniform specs: those US-Nets deploys (every uniform width of the grid)
    uniform = {tuple(s["widths"]) for (_, name), v in subs.items() if name == "usnet" for s in v}
    summary = {}
    for m in methods:
        n = len(have[m])
        accs = [[r["test"] if r else None for r in pb["runs"]] for pb in table[m]]
        summary[m] = {"seeds": have[m], "per_budget": [_msd(a) for a in accs],
                      "average": _msd([_avg([a[i] for a in accs]) for i in range(n)]),
                      "misses": sum(a is None for row in accs for a in row)}
        if uniform:
            served = [tuple(r["widths"]) for pb in table[m] for r in pb["runs"] if r]
            summary[m]["non_uniform"] = {"picks": sum(w not in uniform for w in served), "of": len(served)}
        for ref in dict.fromkeys(["usnet", reference_of(args)]):
            if ref in table and m != ref:
                summary[m][f"vs_{ref}"] = _paired(table, have, accs, m, ref)
        before = [[(r["before_train"] or {}).get("test_accuracy") if r else None for r in pb["runs"]]
                  for pb in table[m]]
        if m not in REUSE_USNET and all(x is not None for row in before for x in row):
            summary[m]["before_final_training"] = {
                "per_budget": [_msd(a) for a in before],
                "average": _msd([_avg([a[i] for a in before]) for i in range(n)])}
        walls = [runs[(s, m)]["wall_s"] for s in have[m]]
        summary[m]["wall_s"] = _msd(walls)
        cpu = [runs[(s, m)].get("own_cpu_s") for s in have[m]]
        if all(c is not None for c in cpu):
            summary[m]["own_cpu_s"] = _msd(cpu)
        if "usnet" in methods:
            ratio = [runs[(s, m)]["wall_s"] / runs[(s, "usnet")]["wall_s"] for s in have[m] if (s, "usnet") in runs]
            summary[m]["wall_vs_usnet"] = _msd(ratio)
            # CPU seconds (not inflated by other jobs): the seeds whose US-Nets run recorded them;
            # a method that reuses the US-Nets run is charged its CPU seconds too
            ratio = [(runs[(s, m)]["own_cpu_s"] + (runs[(s, "usnet")]["own_cpu_s"] if m in REUSE_USNET else 0.0))
                     / runs[(s, "usnet")]["own_cpu_s"] for s in have[m]
                     if runs[(s, m)].get("own_cpu_s") and (s, "usnet") in runs and runs[(s, "usnet")].get("own_cpu_s")]
            if ratio and m != "usnet":
                summary[m]["cpu_vs_usnet"] = _msd(ratio)
            # the criterion's cost: ranking, search and training CPU against US-Nets' training CPU
            # (the seeds where both runs timed their phases; a reusing method adds US-Nets' training)
            pairs = [(runs[(s, m)]["phase_cpu_s"], runs[(s, "usnet")]["phase_cpu_s"]) for s in have[m]
                     if (s, "usnet") in runs and runs[(s, m)].get("phase_cpu_s") is not None
                     and runs[(s, "usnet")].get("phase_cpu_s")]
            if pairs and m != "usnet":
                summary[m]["pipeline_cpu_vs_usnet"] = _msd([(a + (u if m in REUSE_USNET else 0.0)) / u for a, u in pairs])
            own = [runs[(s, m)]["phase_cpu_s"] for s in have[m] if runs[(s, m)].get("phase_cpu_s") is not None]
            if own:
                summary[m]["pipeline_cpu_s"] = _msd(own)
    res = {"full_ms": full_ms, "budgets": budgets, "seeds": seeds, "per_budget": table, "summary": summary,
           "reference": reference_of(args)}
    if lat_of_seed:  # one full model per table: the seeds' own
        res["full_ms_of_seed"] = {str(seed): lat_for[seed][net_full][key] for seed in seeds}
    return res


def reference_of(args: argparse.Namespace) -> str:
    """The variant the paired differences are also taken against (``--reference``)."""
    return getattr(args, "reference", None) or "usnet"


def _paired(table: dict, have: dict, accs: list, m: str, ref: str) -> dict:
    """Paired differences of method ``m`` (its test accuracies ``accs``, per budget and seed)
    against ``ref`` on the same seeds: per budget, and per seed averaged over the budgets (a
    seed where either serves nothing at some budget, or ``ref`` has no run, has no average)."""
    base = [[(pb["runs"][have[ref].index(s)] or {}).get("test") if s in have[ref] else None for s in have[m]]
            for pb in table[ref]]
    diffs = [[None if a is None or u is None else a - u for a, u in zip(ra, rb)] for ra, rb in zip(accs, base)]
    avg_diff = [_avg([d[i] for d in diffs]) for i in range(len(have[m]))]
    return {"per_budget": [_mse(d) for d in diffs], "average": _mse(avg_diff)}


def check_reference(args: argparse.Namespace, runs: dict) -> None:
    """One-line error when ``--reference`` names a variant with no run in the report."""
    from edgedyn.errors import EdgedynError

    ref = reference_of(args)
    if ref != "usnet" and not any(m == ref for _, m in runs):
        raise EdgedynError(f"--reference {ref}: no run of it in this report; list it in --methods")


def _references(res: dict) -> list[str]:
    """The references the report prints: US-Nets, then ``--reference`` if another."""
    return list(dict.fromkeys(["usnet", res.get("reference", "usnet")]))


def _avg(xs: list) -> float | None:
    return None if any(x is None for x in xs) else sum(xs) / len(xs)


def _msd(xs: list) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _mse(xs: list) -> dict:
    """Mean and standard error of paired differences."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return {"mean": statistics.fmean(xs), "se": se, "n": len(xs)}


def _pct(d: dict, key: str = "sd", of: int | None = None) -> str:
    """A cell in points; ``(n=K)`` where only K of the row's ``of`` seeds count (the rest missed a budget)."""
    if d.get("mean") is None:
        return "miss"
    spread = d.get(key)
    cell = f"{100 * d['mean']:.2f} ± {100 * spread:.2f}" if spread is not None else f"{100 * d['mean']:.2f}"
    return cell + (f" (n={d['n']})" if of is not None and d.get("n", of) < of else "")


def report(res: dict, log) -> None:
    b = res["budgets"]
    how = "PREDICTED by the table (nothing timed)" if res.get("latency") == "predicted" else "measured"
    full = res["full_ms"]
    if "full_ms_of_seed" in res:  # pooled across tables
        log(f"\nfull model {how}, per seed (its {'table' if res.get('latency') == 'predicted' else 'timing'}): " + ", ".join(
            f"{s}: {ms:.3f} ms" for s, ms in res["full_ms_of_seed"].items())
            + f"; budgets {', '.join(f'{x:g}' for x in b)} of each seed's")
    else:
        log(f"\nfull model {how}: {full:.3f} ms; budgets {', '.join(f'{x:g}' for x in b)} of it; "
            f"seeds {res['seeds']}")
    head = "".join(f"{_budget_head(res, x):>22}" for x in b)
    log(f"{'test accuracy %, mean ± sd':<30}{head}{'average':>18}{'wall x US-Nets':>16}")
    for m, s in res["summary"].items():
        wall = s.get("wall_vs_usnet")
        n = len(s["seeds"])
        log(f"{m:<30}" + "".join(f" {_pct(d, of=n):>21}" for d in s["per_budget"]) + f" {_pct(s['average'], of=n):>17}"
            + (f"{wall['mean']:>13.2f}x" if wall else ""))
        if "before_final_training" in s:
            f = s["before_final_training"]
            log(f"{'  before final training':<30}" + "".join(f"{_pct(d):>22}" for d in f["per_budget"])
                + f"{_pct(f['average']):>18}")
    for ref in _references(res):
        log(f"\npaired difference against {'US-Nets' if ref == 'usnet' else ref}, points "
            "(mean ± standard error over seeds):")
        for m, s in res["summary"].items():
            if f"vs_{ref}" in s:
                v = s[f"vs_{ref}"]
                n = len(s["seeds"])
                log(f"{m:<30}" + "".join(f" {_pct(d, 'se', n):>21}" for d in v["per_budget"])
                    + f" {_pct(v['average'], 'se', n):>17}")


def _budget_head(res: dict, x: float) -> str:
    """A budget's column head: its fraction, and its milliseconds where one table prices every seed."""
    return f"{x:g}" if "full_ms_of_seed" in res else f"{x:g} ({x * res['full_ms']:.3f} ms)"


def markdown(res: dict, doc: dict) -> str:
    """The result tables as Markdown (pasted into the README and docs/search.md)."""
    b = res["budgets"]
    lines = [] if res.get("latency") != "predicted" else [
        "Every latency below is the table's PREDICTION (`--predicted-only`: nothing was timed).", ""]
    if "full_ms_of_seed" in res:
        lines += [("Pooled across tables: each seed's sub-nets priced by the table its rows were searched with, "
                   "its budgets fractions of that table's full model (" if res.get("latency") == "predicted" else
                   "Pooled across timings: each seed's sub-nets timed in one interleaved run, its budgets "
                   "fractions of that run's measured full model (") + ", ".join(
                      f"seed {s}: {ms:.3f} ms" for s, ms in res["full_ms_of_seed"].items()) + ").", ""]
    lines += ["| method | " + " | ".join(_budget_head(res, x) for x in b)
             + " | average | wall x US-Nets | own CPU s | CPU x US-Nets | pipeline CPU s | pipeline CPU x US-Nets |",
             "|---|" + "---|" * (len(b) + 6)]
    def label(m: str) -> str:
        n = len(res["summary"][m]["seeds"])
        return m if n == len(res["seeds"]) else f"{m} ({n} seed{'s' if n > 1 else ''})"

    for m, s in res["summary"].items():
        wall = s.get("wall_vs_usnet")
        n = len(s["seeds"])
        lines.append(f"| {label(m)} | " + " | ".join(_pct(d, of=n) for d in s["per_budget"])
                     + f" | {_pct(s['average'], of=n)} | "
                     + (f"{wall['mean']:.2f} ± {wall['sd']:.2f}" if wall else "-") + " | "
                     + (f"{s['own_cpu_s']['mean']:.0f} ± {s['own_cpu_s']['sd']:.0f}" if "own_cpu_s" in s else "-") + " | "
                     + (f"{c['mean']:.2f} ± {c['sd']:.2f} ({c['n']} seeds)" if (c := s.get("cpu_vs_usnet")) else "-")
                     + " | " + (f"{c['mean']:.0f} ± {c['sd']:.0f} ({c['n']})" if (c := s.get("pipeline_cpu_s")) else "-")
                     + " | " + (f"{c['mean']:.2f} ± {c['sd']:.2f} ({c['n']})"
                                if (c := s.get("pipeline_cpu_vs_usnet")) else "-")
                     + " |")
        if "before_final_training" in s:
            f = s["before_final_training"]
            lines.append(f"| {m}, before its final epoch | " + " | ".join(_pct(d) for d in f["per_budget"])
                         + f" | {_pct(f['average'])} | - | - | - | - | - |")
    for ref in _references(res):
        name = "US-Nets" if ref == "usnet" else ref
        lines += ["", f"| paired difference against {name} (points) | " + " | ".join(f"{x:g}" for x in b)
                  + " | average |", "|---|" + "---|" * (len(b) + 1)]
        for m, s in res["summary"].items():
            if f"vs_{ref}" in s:
                v = s[f"vs_{ref}"]
                n = len(res["summary"][m]["seeds"])
                lines.append(f"| {label(m)} | " + " | ".join(_pct(d, "se", n) for d in v["per_budget"])
                             + f" | {_pct(v['average'], 'se', n)} |")
        predicted = res.get("at_predicted_latency" if ref == "usnet" else "at_predicted_latency_reference")
        if predicted:
            lines += ["", f"| paired difference against {name} at equal PREDICTED latency (diagnostic) | "
                      + " | ".join(f"{x:g}" for x in b) + " | average |", "|---|" + "---|" * (len(b) + 1)]
            for m, v in predicted.items():
                n = len(res["summary"][m]["seeds"])
                lines.append(f"| {label(m)} | " + " | ".join(_pct(d, "se", n) for d in v["per_budget"])
                             + f" | {_pct(v['average'], 'se', n)} |")
    lines += ["", "| method | seed | " + " | ".join(f"{x:g}" for x in b) + " |", "|---|---|" + "---|" * len(b)]
    for m, per in res["per_budget"].items():
        for i, seed in enumerate(res["summary"][m]["seeds"]):
            cells = []
            for pb in per:
                r = pb["runs"][i]
                cells.append("miss" if r is None else f"{r['measured_ms']:.3f} ms, {100 * r['test']:.1f} %")
            lines.append(f"| {m} | {seed} | " + " | ".join(cells) + " |")
    if any("non_uniform" in s for s in res["summary"].values()):
        lines += ["", "| method | non-uniform sub-nets served (budgets x seeds; uniform: a width US-Nets deploys) |",
                  "|---|---|"]
        lines += [f"| {label(m)} | {s['non_uniform']['picks']} of {s['non_uniform']['of']} |"
                  for m, s in res["summary"].items() if "non_uniform" in s]
    return "\n".join(lines) + "\n"


def predicted_diffs(predicted: dict, ref: str) -> dict:
    """The paired differences at the table's predicted latency (a diagnostic): against US-Nets
    (``at_predicted_latency``) and against ``--reference`` (``at_predicted_latency_reference``)."""
    out = {"at_predicted_latency": {m: v["vs_usnet"] for m, v in predicted["summary"].items() if "vs_usnet" in v}}
    if ref != "usnet":
        out["at_predicted_latency_reference"] = {m: v[f"vs_{ref}"] for m, v in predicted["summary"].items()
                                                 if f"vs_{ref}" in v}
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, per in res["per_budget"].items():
        xs, ys, es = [], [], []
        for pb in per:
            got = [r for r in pb["runs"] if r]
            if not got:
                continue
            xs.append(statistics.fmean(r["measured_ms"] for r in got))
            accs = [100 * r["test"] for r in got]
            ys.append(statistics.fmean(accs))
            es.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
    for b in res["budgets"]:
        ax.axvline(b * res["full_ms"], color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("measured latency of the served sub-net (ms, ONNX Runtime, this CPU)")
    ax.set_ylabel("test top-1 (%), mean ± sd over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(path: Path, obj) -> None:
    from edgedyn.artifacts import atomic_write_json

    atomic_write_json(path, obj)


#: the settings two reports must share to be pooled (a seed's result depends on every one)
PROTOCOL_KEYS = ("table", "model", "data", "data_limit", "holdout_fraction", "input_size", "budgets",
                 "pretrain_epochs", "train_epochs", "final_epochs", "rank_epochs", "batch_size", "lr",
                 "score_samples", "slim_step", "batches_per_epoch", "calib_batches", "search_calib_batches")


def load_reports(paths: list[Path], across_tables: bool = False) -> dict:
    """One report from several (``--from``): the union of their runs and latencies. Refused,
    in one line naming the file and field, when two hold the same seed and row, when their
    protocols differ, or when measured reports are pooled without ``across_tables`` (timings
    of different sessions are not comparable: only the table's predictions are the same
    everywhere). ``across_tables``: each report's prices stand apart, kept per price list
    (``latency_by_table``: a predicted report's table, or a measured report's own timing,
    which must have passed its validity rule) and each seed is priced by its own
    (``table_of_seed``), refused when a seed's rows come from two lists (their paired
    difference would compare two price lists)."""
    from edgedyn.artifacts import load_json
    from edgedyn.errors import EdgedynError

    docs = [(p, load_json(p, "edgedyn.bench_search/2")) for p in paths]
    first, base = docs[0]
    key = "predicted" if base.get("latency_source") == "predicted" else "median"
    pooled: dict = {"schema": "edgedyn.bench_search/2", "latency_source": base.get("latency_source"),
                    "budgets": base["budgets"], "args": base.get("args", {}), "runs": {}, "latency": [],
                    "sources": [str(p) for p in paths]}
    lat: dict = {}
    origin: dict = {}
    by_table: dict[str, dict] = {}
    table_of_seed: dict[str, str] = {}
    for path, doc in docs:
        table = str(doc.get("args", {}).get("table", "profiles/cpu-resnet20.json"))
        if doc.get("latency_source") != base.get("latency_source"):
            raise EdgedynError(f"{path}: latency_source is {doc.get('latency_source', 'measured')!r}, {first}'s "
                               f"is {base.get('latency_source', 'measured')!r}: measured and predicted never pool")
        if len(docs) > 1 and key == "median":
            if not across_tables:
                raise EdgedynError(f"{path}: latency_source is 'measured': measured reports of different "
                                   "timings pool only with --across-timings (each seed priced by its own)")
            if not (doc.get("timing") or {}).get("recheck", {}).get("valid"):
                raise EdgedynError(f"{path}: timing.recheck.valid is not true: only valid timings are pooled")
            table = f"timing {path}"
            pooled.setdefault("timings", {})[str(path)] = doc["timing"]["recheck"].get("why", "valid")
        if doc["budgets"] != base["budgets"]:
            raise EdgedynError(f"{path}: budgets {doc['budgets']} differ from {first}'s {base['budgets']}")
        for k in PROTOCOL_KEYS:
            if across_tables and k == "table":
                continue
            if k in doc.get("args", {}) and k in base.get("args", {}) and doc["args"][k] != base["args"][k]:
                raise EdgedynError(f"{path}: args.{k} is {doc['args'][k]!r}, {first} has {base['args'][k]!r}")
        for run, v in doc["runs"].items():
            if run in origin:
                raise EdgedynError(f"{path}: runs.{run} is in {origin[run]} too")
            seed = run.split("/")[0][4:]
            if across_tables and table_of_seed.setdefault(seed, table) != table:
                raise EdgedynError(f"{path}: runs.{run} is priced by {table!r}, but seed {seed}'s other rows by "
                                   f"{table_of_seed[seed]!r}: a seed's rows must share one price list")
            origin[run] = path
            pooled["runs"][run] = v
        entries = doc["latency"] if isinstance(doc["latency"], list) else _predicted_latency(path, doc)
        into = by_table.setdefault(table, {}) if across_tables else lat
        for e in entries:
            w = tuple(e["widths"])
            if w in into and abs(into[w][key] - e[key]) > 1e-9:
                raise EdgedynError(f"{path}: latency of {list(w)} is {e[key]}, {origin.get((table, w), first)} has "
                                   f"{into[w][key]} (reports of different tables)")
            into.setdefault(w, e)
            origin.setdefault((table, w), path)
    pooled["latency"] = list(lat.values())
    if across_tables:
        pooled["latency"] = list(next(iter(by_table.values())).values())
        pooled["latency_by_table"] = {t: list(v.values()) for t, v in by_table.items()}
        pooled["table_of_seed"] = table_of_seed
    return pooled


def _predicted_latency(path: Path, doc: dict) -> list[dict]:
    """The table's prediction of every sub-net a predicted-only report deployed, for reports
    written before they kept it (their ``latency`` held the label ``"predicted"``), checked
    against the latencies recorded with the sub-nets they served."""
    from edgedyn.dynamic import DynamicNet, SubnetSpec
    from edgedyn.errors import EdgedynError
    from edgedyn.profile import LatencyTable

    a = doc.get("args", {})
    table = LatencyTable.load(a.get("table", "profiles/cpu-resnet20.json"))
    net = DynamicNet.from_name(a.get("model", "resnet20"), num_classes=10, input_size=a.get("input_size", 32),
                               channel_groups=8, min_groups=1)
    specs = {tuple(s["widths"]) for v in doc["runs"].values() for s in v["deployed"]}
    lat = {w: table.predict(net, SubnetSpec.of(w)) for w in specs}
    for m, per in doc.get("per_budget", {}).items():
        for pb in per:
            for r in pb["runs"]:
                if r is not None and abs(lat[tuple(r["widths"])] - r["measured_ms"]) > 1e-6:
                    raise EdgedynError(f"{path}: per_budget.{m}: {r['widths']} was served at {r['measured_ms']} ms, "
                                       f"the table {a.get('table')} now predicts {lat[tuple(r['widths'])]} ms")
    return [{"widths": list(w), "predicted": ms} for w, ms in lat.items()]


def summarize(args: argparse.Namespace) -> int:
    """The comparison again, from a report's JSON (or several, ``--from``), for a subset of
    its seeds and methods."""
    from edgedyn.artifacts import load_json
    from edgedyn.errors import EdgedynError

    out = Path(args.out)
    pooled = bool(args.from_reports)
    try:
        if pooled:
            doc = load_reports([Path(p) for p in args.from_reports.split(",") if p.strip()], args.across_tables)
        else:
            doc = load_json(out / "bench_search.json", "edgedyn.bench_search/2")
    except EdgedynError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    key = "predicted" if doc.get("latency_source") == "predicted" else "median"
    seeds = {int(s) for s in args.seeds.split(",")}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs, subs = {}, {}
    for run, v in doc["runs"].items():
        seed, m = int(run.split("/")[0][4:]), run.split("/", 1)[1]
        if seed in seeds and m in methods:
            runs[(seed, m)] = v
            subs[(seed, m)] = v["deployed"]
    runs = dict(sorted(runs.items(), key=lambda kv: (methods.index(kv[0][1]), kv[0][0])))
    lat = {tuple(e["widths"]): e for e in doc["latency"]}
    by_table = {t: {tuple(e["widths"]): e for e in v} for t, v in doc.get("latency_by_table", {}).items()}
    lat_of_seed = {int(sd): by_table[t] for sd, t in doc.get("table_of_seed", {}).items()} or None
    args.budgets = ",".join(f"{b:g}" for b in doc["budgets"])
    try:
        if not runs:
            raise EdgedynError("no run of --methods on --seeds in the report")
        check_reference(args, runs)
    except EdgedynError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    res = compare(args, runs, subs, lat, key, lat_of_seed)
    if key == "predicted":
        res["latency"] = "predicted"
    else:
        res.update(predicted_diffs(compare(args, runs, subs, lat, "predicted", lat_of_seed), reference_of(args)))
    report(res, lambda m: print(m))
    if pooled:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "bench_search.pooled.md"
        _write(out / "bench_search.pooled.json", {
            "schema": "edgedyn.bench_search/2", "latency_source": doc["latency_source"], "sources": doc["sources"],
            "args": {k: doc["args"][k] for k in PROTOCOL_KEYS if k in doc["args"]},
            "runs": {f"seed{s}/{m}": v for (s, m), v in runs.items()},
            **{k: v for k, v in res.items() if k != "latency"}, "latency": doc["latency"],
            **{k: doc[k] for k in ("latency_by_table", "table_of_seed", "timings") if k in doc}})
    else:
        path = out / f"bench_search.seeds{'-'.join(str(s) for s in sorted(seeds))}.md"
    sources = "" if not pooled else "Pooled from " + ", ".join(f"`{p}`" for p in doc["sources"]) + ".\n\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(sources + markdown(res, doc))
    tmp.replace(path)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from edgedyn.dynamic import DynamicNet, SubnetSpec
    from edgedyn.errors import EdgedynError
    from edgedyn.profile import LatencyTable

    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ref = reference_of(args)
    if ref != "usnet" and ref not in [m.strip() for m in args.methods.split(",")]:
        print(f"error: --reference {ref} is not in --methods", file=sys.stderr)
        return 2
    if args.summarize_only:
        return summarize(args)
    try:
        table = LatencyTable.load(args.table)
        t0 = time.time()
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        runs = run_all(args, table, log)
        if args.no_measure:
            for k, v in runs.items():  # US-Nets: every uniform width's accuracy, cached for the report
                deployed(v["dir"], k[1], args.calib_batches, log)
            log("trained and searched; run again without --no-measure (all seeds) to time and report")
            return 0
        subs = {k: deployed(v["dir"], k[1], args.calib_batches, log) for k, v in runs.items()}
        specs = sorted({tuple(s["widths"]) for v in subs.values() for s in v}, key=sum)
        if args.predicted_only:
            net = DynamicNet.from_name(args.model, num_classes=10, input_size=args.input_size, channel_groups=8,
                                       min_groups=1)
            return predicted_report(args, runs, subs, {s: table.predict(net, SubnetSpec.of(s)) for s in specs})
        timing = measure_all(specs, args, table, log)
        lat = {k: v for k, v in timing.items() if isinstance(k, tuple)}
        if not timing["recheck"]["valid"]:
            log(f"warning: this timing is not valid ({timing['recheck']['why']}); report it, and time again")
        res = compare(args, runs, subs, lat)
        check_reference(args, runs)
        res.update(predicted_diffs(compare(args, runs, subs, lat, "predicted"), reference_of(args)))
    except EdgedynError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(res, lambda m: print(m))
    from edgedyn.device import device_fingerprint, device_info

    info = device_info("cpu")
    info["fingerprint"] = device_fingerprint(info)
    out = Path(args.out)
    doc = {"schema": "edgedyn.bench_search/2", "args": vars(args), "device": info,
           "timing": {"backend": "onnxruntime-cpu", "threads": timing["threads"], "protocol":
                      "edgedyn.deploy.build.measure_runners", "stat": "median", "cpu_busy_before_timing": timing["busy"],
                      "recheck": timing["recheck"]},
           "latency": [{"widths": list(k), **v} for k, v in lat.items()],
           "runs": {f"seed{s}/{m}": {"dir": str(v["dir"]), "wall_s": v["wall_s"], "resumed": v["resumed"],
                                     "own_cpu_s": v.get("own_cpu_s"), "phase_cpu_s": v.get("phase_cpu_s"),
                                     "deployed": subs[(s, m)]}
                    for (s, m), v in runs.items()},
           "pretrain_wall_s": {str(p.parent.name): json.loads(p.read_text())["wall_s"]
                               for p in sorted(out.glob("seed*/pretrain_time.json"))},
           "bench_wall_s": time.time() - t0, **res}
    _write(out / "bench_search.json", doc)
    (out / "bench_search.md").write_text(markdown(res, doc))
    plot(res, out / "bench_search.png")
    print(f"wrote {out / 'bench_search.json'} and {out / 'bench_search.png'}")
    return 0


def predicted_report(args: argparse.Namespace, runs: dict, subs: dict, predicted: dict[tuple[int, ...], float]) -> int:
    """``--predicted-only``: the report at the table's ``predicted`` latency of every deployed
    sub-net, every figure labelled so; written beside the measured report
    (``bench_search.predicted.{json,md}``)."""
    if not runs:
        print("error: no finished run to report", file=sys.stderr)
        return 2
    lat = {s: {"predicted": ms} for s, ms in predicted.items()}
    res = compare(args, runs, subs, lat, "predicted")
    check_reference(args, runs)
    res["latency"] = "predicted"
    report(res, lambda m: print(m))
    out = Path(args.out)
    doc = {"schema": "edgedyn.bench_search/2", "args": vars(args), "latency_source": "predicted",
           "latency": [{"widths": list(k), **v} for k, v in lat.items()],
           "runs": {f"seed{s}/{m}": {"dir": str(v["dir"]), "wall_s": v["wall_s"], "resumed": v["resumed"],
                                     "own_cpu_s": v.get("own_cpu_s"), "phase_cpu_s": v.get("phase_cpu_s"),
                                     "deployed": subs[(s, m)]}
                    for (s, m), v in runs.items()},
           **{k: v for k, v in res.items() if k != "latency"}}  # res's "latency" is the label, latency_source here
    _write(out / "bench_search.predicted.json", doc)
    (out / "bench_search.predicted.md").write_text(markdown(res, doc))
    print(f"wrote {out / 'bench_search.predicted.json'} and {out / 'bench_search.predicted.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
