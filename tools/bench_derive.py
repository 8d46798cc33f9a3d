#!/usr/bin/env python
"""Building the profiler's whole sub-nets: one export each vs derived from one export.

Builds the ONNX Runtime runners of the profiler's calibration and validation sub-nets
(``--calibrate`` + ``--validate``, the profiler's own specs) both ways, as the profiler
does: ``Backend.prepare_many`` on the extracted sub-nets (one torch.onnx export each, in
worker processes) and ``OnnxBackend.prepare_subnets`` (the full network exported once, the
sub-nets' graphs derived from it; :mod:`edgedyn.dynamic.onnx_derive`). Then times
``--latency`` of the sub-nets built both ways, interleaved (``measure_calls``, the
profiler's whole-network protocol), so a derived graph that ran slower or faster than its
own export would show.

Usage::

    python tools/bench_derive.py --model resnet20 --input-size 32 [--calibrate 144 --validate 10]
        [--latency 6] [--threads 1] [--skip-export] [--out results/bench_derive.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from edgedyn.artifacts import atomic_write_json
from edgedyn.backends import BackendOptions
from edgedyn.backends.onnxruntime import OnnxRuntimeBackend
from edgedyn.dynamic import DynamicNet
from edgedyn.profile.fitting import calibration_specs, validation_specs
from edgedyn.profile.measure import WHOLE_NET, measure_calls


def _dirs(root: Path, kind: str, n: int) -> list[Path]:
    out = [root / kind / str(i) for i in range(n)]
    for d in out:
        d.mkdir(parents=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--calibrate", type=int, default=144)
    ap.add_argument("--validate", type=int, default=10)
    ap.add_argument("--latency", type=int, default=6, help="sub-nets timed both ways, interleaved")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-export", action="store_true", help="time only the derived build (the latency check "
                                                                   "still exports its sub-nets)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    net = DynamicNet.from_name(args.model, input_size=args.input_size)
    specs = calibration_specs(net, args.calibrate) + validation_specs(net, args.validate, args.calibrate)
    example = torch.zeros(1, *net.input_shape[1:])
    backend = OnnxRuntimeBackend(BackendOptions(threads=args.threads))
    result: dict = {"model": net.name, "input_size": net.input_shape[-1], "subnets": len(specs),
                    "threads": args.threads, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="edgedyn-bench-derive-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        derived = backend.prepare_subnets(net, specs, example, _dirs(root, "derived", len(specs)), log=print)
        result["derive_s"] = round(time.perf_counter() - t0, 2)
        print(f"derived: {len(derived)} sub-nets built in {result['derive_s']} s")
        k = min(args.latency, len(specs))
        if args.skip_export:
            t0 = time.perf_counter()
            exported = backend.prepare_many([net.extract(s) for s in specs[:k]], example, _dirs(root, "export", k))
            result["export_s_for_latency_only"] = round(time.perf_counter() - t0, 2)
        else:
            t0 = time.perf_counter()
            exported = backend.prepare_many([net.extract(s) for s in specs], example, _dirs(root, "export", len(specs)))
            result["export_s"] = round(time.perf_counter() - t0, 2)
            print(f"exported: {len(exported)} sub-nets built in {result['export_s']} s "
                  f"({result['export_s'] / max(result['derive_s'], 1e-9):.1f}x the derived build)")
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        stats = measure_calls(derived[:k] + exported[:k], WHOLE_NET, seed=0)
        rows = []
        for i, spec in enumerate(specs[:k]):
            d, e = stats[i].median, stats[k + i].median
            rows.append({"spec": str(spec), "derived_ms": round(d, 5), "exported_ms": round(e, 5),
                         "ratio": round(d / e, 4)})
            print(f"{str(spec):60s} derived {d:.4f} ms  exported {e:.4f} ms  ratio {d / e:.3f}")
        result["latency"] = rows
    if args.out is not None:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
