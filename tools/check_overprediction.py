"""Why a fresh table over-predicts deploy: the same sub-nets timed in the profiler's context and in deploy's.

The table is calibrated on ~160 whole sub-nets timed interleaved in ONE run, all their
sessions loaded at once; deploy times a handful. Three differences could each make the
profiler read slower than deploy: the number of sessions interleaved (cache and memory
pressure: the hypothesis of issue 20), the protocol (the profiler's ~0.3 s per sub-net against
deploy's ~2 s, at least 200 calls), and the model (the profiler's raw export against
deploy's saved optimized graph). This script times K target sub-nets under each condition,
in alternating order (A B C D D C B A) so drift cancels:

- A ``profile``: the targets amid every calibration sub-net, raw sessions, the profiler's protocol;
- B ``few-raw``: the targets alone, the same raw sessions, the profiler's protocol;
- C ``deploy``: the targets alone, built and loaded as deploy does, deploy's protocol;
- D ``few-raw-deploy-protocol``: the raw sessions alone, deploy's protocol.

With ``--after-load S`` it tests another cause instead: a profile used to spend minutes
with both cores busy exporting its ~160 sub-nets right before it timed them, and deploy
starts from a quieter machine. It times the targets as deploy does (C) right after ``S``
seconds of both cores busy (two processes multiplying matrices) and after ``S`` seconds
idle, alternating (idle, load, load, idle).

    python tools/check_overprediction.py --out results/overprediction_resnet20.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from edgedyn.artifacts import atomic_write_json
    from edgedyn.backends import BackendOptions, get_backend
    from edgedyn.deploy.timing import measure_runners
    from edgedyn.device import busy_before_timing, device_info
    from edgedyn.dynamic import DynamicNet
    from edgedyn.profile.fitting import calibration_specs
    from edgedyn.profile.measure import CALIBRATION, measure_calls

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--targets", type=int, default=8)
    p.add_argument("--calibrate", type=int, default=144)
    p.add_argument("--after-load", type=float, default=None, help="seconds of load (or idle) before each timing")
    p.add_argument("--out", default="results/overprediction_resnet20.json")
    args = p.parse_args(argv)

    net = DynamicNet.from_name(args.model, input_size=args.input_size)
    cal = calibration_specs(net, args.calibrate)
    targets: list = []
    i = 0
    while len(targets) < args.targets:
        s = net.random_spec(50_000 + i, floor_p=0.5 if i % 2 else 0.0)
        i += 1
        if s not in cal and s not in targets:
            targets.append(s)
    targets.sort(key=net.macs)
    be = get_backend("onnxruntime", BackendOptions(device="cpu", threads=args.threads))
    example = torch.zeros(1, *net.input_shape[1:])
    k = len(targets)
    with tempfile.TemporaryDirectory(prefix="edgedyn-overpred-") as tmp:
        root = Path(tmp)
        dirs = [root / f"r{j}" for j in range(k + len(cal))]
        for d in dirs:
            d.mkdir()
        t0 = time.perf_counter()
        raw = be.prepare_subnets(net, targets + cal, example, dirs)
        print(f"built {len(raw)} raw sessions in {time.perf_counter() - t0:.1f} s", flush=True)
        built = []
        for j, s in enumerate(targets):
            onnx = net.export_onnx(s, root / f"d{j}.onnx")
            built.append(be.load(be.build(onnx, root / f"d{j}.opt.onnx"), tuple(net.input_shape)).activate())
        busy = busy_before_timing(print, 1.0)
        if args.after_load is not None:
            return after_load(built, args, net, targets, busy)

        def cond(name: str) -> list[float]:
            if name == "profile":
                stats = measure_calls(raw, CALIBRATION, seed=1)[:k]
                return [st.median for st in stats]
            if name == "few-raw":
                return [st.median for st in measure_calls(raw[:k], CALIBRATION, seed=1)]
            if name == "deploy":
                return [st["median"] for st in measure_runners(built)]
            return [st["median"] for st in measure_runners(raw[:k])]

        names = ["profile", "few-raw", "deploy", "few-raw-deploy-protocol"]
        runs: dict[str, list[list[float]]] = {n: [] for n in names}
        for name in names + names[::-1]:
            t = time.perf_counter()
            runs[name].append(cond(name))
            print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
    med = {n: np.median(np.array(v), axis=0) for n, v in runs.items()}
    ref = med["deploy"]
    print(f"\n{'condition':<26}{'median ratio to deploy':>24}{'min':>8}{'max':>8}   (over {k} targets, 2 passes)")
    rows = {}
    for n in names:
        r = med[n] / ref
        rows[n] = {"ratio_median": round(float(np.median(r)), 4), "ratio_min": round(float(r.min()), 4),
                   "ratio_max": round(float(r.max()), 4), "ms": [round(float(x), 5) for x in med[n]],
                   "passes": [[round(float(x), 5) for x in p] for p in runs[n]]}
        print(f"{n:<26}{rows[n]['ratio_median']:>24.3f}{rows[n]['ratio_min']:>8.3f}{rows[n]['ratio_max']:>8.3f}")
    atomic_write_json(Path(args.out), {
        "schema": "edgedyn.overprediction/1", "model": f"{net.name}@{net.input_shape[-1]}", "threads": args.threads,
        "calibration_sessions": len(cal), "targets": [list(s.widths) for s in targets],
        "cpu_busy_before_timing": busy, "device": {kk: device_info("cpu").get(kk) for kk in ("name", "isa")},
        "rows": rows})
    print(f"wrote {args.out}")
    return 0


def _burn(seconds: float) -> None:
    """Keep one core busy for ``seconds`` (matrix products, as the exporter's tracing does)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = np.tanh(a @ a.T * 1e-3)


def after_load(built: list, args: argparse.Namespace, net, targets: list, busy) -> int:
    """Deploy's timing of ``built`` after ``args.after_load`` s of both cores busy, and after as long idle."""
    import multiprocessing as mp

    import numpy as np

    from edgedyn.artifacts import atomic_write_json
    from edgedyn.deploy.timing import measure_runners

    runs: dict[str, list[list[float]]] = {"idle": [], "load": []}
    for name in ("idle", "load", "load", "idle"):
        if name == "load":
            procs = [mp.get_context("spawn").Process(target=_burn, args=(args.after_load,)) for _ in range(2)]
            for pr in procs:
                pr.start()
            for pr in procs:
                pr.join()
        else:
            time.sleep(args.after_load)
        runs[name].append([st["median"] for st in measure_runners(built)])
        print(f"after {name}: median of the targets {np.median(runs[name][-1]):.4f} ms", flush=True)
    med = {n: np.median(np.array(v), axis=0) for n, v in runs.items()}
    ratio = med["load"] / med["idle"]
    print(f"after {args.after_load:g} s of load / after as long idle: median ratio {np.median(ratio):.3f} "
          f"(min {ratio.min():.3f}, max {ratio.max():.3f}) over {len(targets)} targets, 2 passes each")
    atomic_write_json(Path(args.out), {
        "schema": "edgedyn.overprediction_after_load/1", "model": f"{net.name}@{net.input_shape[-1]}",
        "seconds": args.after_load, "cpu_busy_before_timing": busy, "ratio_median": round(float(np.median(ratio)), 4),
        "ratio_min": round(float(ratio.min()), 4), "ratio_max": round(float(ratio.max()), 4),
        "passes": {n: [[round(float(x), 5) for x in p] for p in v] for n, v in runs.items()}})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
