"""The check stage: every artifact against its fp32 PyTorch sub-net, and the measured bundle
against the latency table and itself.

- An exported ONNX (and a built fp32 model, where it can run here) must match PyTorch within
  ``FP32_TOLERANCE`` (max abs) times the outputs' scale (their max abs, at least 1): fp32
  rounding grows with the values summed, so deep nets with large logits get room in
  proportion; otherwise deploy stops with a one-line error.
- A built model that runs here is scored on the test split (accuracy, agreement with fp32,
  delta); a TensorRT int8 engine that cannot run here is estimated by its QDQ graph on ONNX
  Runtime.
- :func:`deploy_checks`: what is recorded in the manifest and warned about.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import SubnetRecord
from ..errors import EdgedynError

FP32_TOLERANCE = 1e-4
#: A deployed sub-net's measured median may differ from the table's prediction by this much.
PREDICTION_TOLERANCE = 0.10


def run_each(runner: Any, x: np.ndarray) -> np.ndarray:
    """``runner``'s outputs for every sample of ``x``, one batch-1 call each."""
    return np.concatenate([runner.infer(x[k:k + 1]) for k in range(len(x))])


def predict_all(runner: Any, x: np.ndarray) -> np.ndarray:
    """Top-1 class of every sample, one batch-1 call each."""
    return np.array([int(np.argmax(runner.infer(x[i:i + 1]))) for i in range(len(x))], dtype=np.int64)


def fp32_tolerance(ref: np.ndarray) -> float:
    """The max abs difference allowed from PyTorch's outputs ``ref``: ``FP32_TOLERANCE`` times
    their scale (max abs), at least ``FP32_TOLERANCE``."""
    return FP32_TOLERANCE * max(1.0, float(np.max(np.abs(ref))))


def max_abs_diff(got: np.ndarray, ref: np.ndarray, what: str) -> float:
    """The max abs difference of ``got`` from PyTorch's ``ref``; a one-line error naming
    ``what`` above :func:`fp32_tolerance`."""
    diff = float(np.max(np.abs(got - ref)))
    tol = fp32_tolerance(ref)
    if not diff <= tol:
        scale = float(np.max(np.abs(ref)))
        raise EdgedynError(f"{what} differs from PyTorch by {diff:.2e} (max abs, > {tol:.3g}: "
                           f"{FP32_TOLERANCE:g} x the outputs' scale, max(1, {scale:.3g}))")
    return diff


def ort_runner(path: Path, threads: int | None) -> Any:
    """An ONNX Runtime runner of ``path`` (exported ONNX and QDQ graphs are checked on it)."""
    from ..backends import BackendOptions
    from ..backends.onnxruntime import OrtRunner

    return OrtRunner(str(path), BackendOptions(threads=threads), name=str(path))


def check_built(runner: Any, label: str, backend: str, precision: str, check: np.ndarray, ref: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray, ref_pred: np.ndarray, test_fp32: float) -> dict[str, Any]:
    """Accuracy entries of a built model that runs here (fp32: checked against PyTorch first)."""
    out: dict[str, Any] = {}
    if precision == "fp32":
        out["max_abs_diff"] = max_abs_diff(run_each(runner, check), ref, f"{label}: built {backend} model")
    pred = predict_all(runner, x_test)
    out["test"] = float(np.mean(pred == y_test))
    out["agreement"] = float(np.mean(pred == ref_pred))
    out["delta"] = out["test"] - test_fp32
    return out


def check_unexecuted(onnx_diff: float, precision: str, source: Path, threads: int | None, x_test: np.ndarray,
                     y_test: np.ndarray, ref_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy entries of a built model that cannot run here (TensorRT without a CUDA GPU)."""
    out: dict[str, Any] = {"test": None, "max_abs_diff_onnx": onnx_diff}
    if precision == "int8":  # the same QDQ graph on ONNX Runtime (CPU): an estimate until run on the GPU
        pred = predict_all(ort_runner(source, threads), x_test)
        out["qdq_onnxruntime_test"] = float(np.mean(pred == y_test))
        out["qdq_onnxruntime_agreement"] = float(np.mean(pred == ref_pred))
    return out


def deploy_checks(records: Sequence[SubnetRecord], recheck: dict[str, Any] | None = None) -> dict[str, Any]:
    """What deploy verifies of the measured sub-nets (recorded in the manifest, warned about).

    - every measured median within ``PREDICTION_TOLERANCE`` of the prediction: the table's
      re-checked against its probes timed beside the sub-nets (``recheck``,
      :mod:`~edgedyn.deploy.probes`) where that correction is trusted, else the table's as it
      was; both errors are recorded (``prediction_error`` and ``prediction_error_raw``);
    - from the smallest sub-net to the largest (by MACs; the searched sub-nets are nested),
      measured latency and test accuracy both rise strictly.
    """
    from .probes import apply_recheck

    out: dict[str, Any] = {"problems": []}
    median = {r.index: r.measured["median"] for r in records if r.measured and r.measured.get("median") is not None}
    measured = [r for r in records if r.index in median]
    raw = {r.index: median[r.index] / r.predicted_ms - 1.0 for r in measured if r.predicted_ms}
    errors = raw
    if recheck is not None:
        out["recheck"] = dict(recheck)
        fixed = {r.index: apply_recheck(recheck, r.predicted_ms) for r in measured if r.predicted_ms}
        if recheck.get("trusted"):
            out["recheck"]["predicted_ms"] = {str(i): round(p, 5) for i, p in fixed.items() if p is not None}
            errors = {i: median[i] / p - 1.0 for i, p in fixed.items() if p is not None}
        else:
            out["problems"].append(f"the table's probes do not fit this machine now ({recheck.get('problem')}); "
                                   "checked against the table as it was: re-profile it here")
    if errors:
        out["prediction_error"] = {str(i): round(e, 4) for i, e in errors.items()}
        out["prediction_error_raw"] = {str(i): round(e, 4) for i, e in raw.items()}
        out["prediction_within_10pct"] = all(abs(e) <= PREDICTION_TOLERANCE for e in errors.values())
        out["prediction_raw_within_10pct"] = all(abs(e) <= PREDICTION_TOLERANCE for e in raw.values())
        against = "the re-checked table" if errors is not raw else "the table"
        for i, e in errors.items():
            if abs(e) > PREDICTION_TOLERANCE:
                out["problems"].append(f"sub-net {i}: measured latency is {100 * e:+.1f}% off {against}'s "
                                       f"prediction (tolerance {100 * PREDICTION_TOLERANCE:.0f}%)")
    ordered = sorted(measured, key=lambda r: (r.macs, r.index))
    acc = [r.accuracy["test"] for r in ordered if r.accuracy.get("test") is not None]
    if len(ordered) > 1:
        lat = [median[r.index] for r in ordered]
        out["latency_rising"] = all(a < b for a, b in zip(lat, lat[1:]))
        for lo, hi in zip(ordered, ordered[1:]):
            if not median[lo.index] < median[hi.index]:
                out["problems"].append(f"sub-net {hi.index} is larger than sub-net {lo.index} but not slower "
                                       f"({median[hi.index]:.3f} vs {median[lo.index]:.3f} ms)")
        if len(acc) == len(ordered):
            out["accuracy_rising"] = all(a < b for a, b in zip(acc, acc[1:]))
            for lo, hi in zip(ordered, ordered[1:]):
                if not lo.accuracy["test"] < hi.accuracy["test"]:
                    out["problems"].append(
                        f"sub-net {hi.index} is larger than sub-net {lo.index} but not more accurate "
                        f"({100 * hi.accuracy['test']:.2f}% vs {100 * lo.accuracy['test']:.2f}%)")
    return out
