#!/usr/bin/env python
"""INT8 calibration methods compared: top-1 agreement with fp32 and test accuracy per sub-net.

For every pick of a search run, the fp32 ONNX export is quantized to symmetric QDQ (the
format deploy writes, which TensorRT also builds) with each ONNX Runtime calibration
method, and run on ONNX Runtime over the run's test split, one sample per call as deploy
does. Methods: MinMax (deploy's), Percentile 99.999, Entropy, and MinMax with the first
conv and the classifier left in fp32.

Usage::

    python tools/bench_int8.py --run runs/bench_search_digits/progressive_latency \\
        --calib calib/digits_32.npy --out results/bench_int8.json

Prints a table and writes JSON. About 1 minute per sub-net on 2 cores for digits.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgedyn.artifacts import atomic_write_json
from edgedyn.backends import BackendOptions
from edgedyn.backends.onnxruntime import OrtRunner
from edgedyn.data import load_calibration
from edgedyn.deploy.build import _load_splits
from edgedyn.deploy.check import predict_all
from edgedyn.deploy.evaluation import split_arrays
from edgedyn.deploy.quantize import QDQ_OPTIONS
from edgedyn.deploy.source import load_run
from edgedyn.export import export_onnx


def _methods():
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": (CalibrationMethod.MinMax, {}, False),
        "percentile_99.999": (CalibrationMethod.Percentile, {"CalibPercentile": 99.999}, False),
        "entropy": (CalibrationMethod.Entropy, {}, False),
        "minmax_first_last_fp32": (CalibrationMethod.MinMax, {}, True),
    }


def _quantize(src: Path, dst: Path, calib: np.ndarray, method, extra: dict, keep_ends: bool) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 1
            return {"input": np.ascontiguousarray(calib[self.i - 1:self.i], dtype=np.float32)}

    exclude = None
    if keep_ends:
        nodes = onnx.load(str(src)).graph.node
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        exclude = convs[:1] + [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                    extra_options={**QDQ_OPTIONS, **extra}, nodes_to_exclude=exclude)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--calib", type=Path, required=True, help="calibration data (.npy or a folder of images)")
    ap.add_argument("--calib-limit", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("results/bench_int8.json"))
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's progress lines

    run = load_run(args.run)
    net = run.net
    shape = tuple(int(d) for d in net.input_shape)
    x, y = split_arrays(_load_splits(run), None)
    calib = load_calibration(args.calib, shape[-1], limit=args.calib_limit)
    methods = _methods()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgedyn-int8-") as tmp:
        for sub in run.subnets:
            model = net.extract(sub.spec).eval()
            src = export_onnx(model, torch.zeros(shape), Path(tmp) / f"s{sub.index}.onnx")
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).argmax(1).numpy()
            row = {"subnet": sub.index, "spec": list(sub.spec.widths), "fp32_test": float(np.mean(ref == y)),
                   "n_test": int(len(y)), "methods": {}}
            for name, (method, extra, keep_ends) in methods.items():
                dst = Path(tmp) / f"s{sub.index}.{name}.onnx"
                _quantize(src, dst, calib, method, extra, keep_ends)
                pred = predict_all(OrtRunner(str(dst), BackendOptions(threads=args.threads), name=str(dst)), x)
                row["methods"][name] = {"agreement": float(np.mean(pred == ref)), "test": float(np.mean(pred == y))}
            rows.append(row)
            cells = "  ".join(f"{n} {100 * r['agreement']:.2f}/{100 * r['test']:.2f}" for n, r in row["methods"].items())
            print(f"sub-net {sub.index} fp32 {100 * row['fp32_test']:.2f}%  (agreement/test %) {cells}", flush=True)
    atomic_write_json(args.out, {"benchmark": "int8_calibration", "run": str(args.run), "calib": str(args.calib),
                                 "calib_samples": int(len(calib)), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
