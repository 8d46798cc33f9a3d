"""INT8: explicit, symmetric Q/DQ ONNX from calibration data (ONNX Runtime's static quantization).

The same QDQ file runs on ONNX Runtime (CPU) and builds an int8 TensorRT engine (TRT 10
and 11): activations and weights symmetric int8 (zero point 0), biases left in float.
Activation ranges are kept per sub-net in ONNX Runtime's calibration cache format under
``calib/`` in the bundle, indexed by ``calib_cache.json``, so re-deploying with the same
model and calibration data skips calibration.

The quantize stage of deploy: :func:`calibration` gathers the data once per bundle,
:func:`quantize_subnet` writes each sub-net's QDQ graph.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_write_json, load_json
from ..device import int8_saturates
from ..errors import ArtifactError, EdgedynError

CALIB_CACHE_SCHEMA = "edgedyn.calib_cache/1"
CALIB_CACHE_NAME = "calib_cache.json"
CALIB_DIR = "calib"
QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def data_digest(x: np.ndarray) -> str:
    """sha256 of the calibration tensors (shape and bytes)."""
    h = hashlib.sha256(str((x.shape, str(x.dtype))).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


class CalibCache:
    """``calib_cache.json``: which ranges file belongs to which (model signature, spec, data)."""

    def __init__(self, root: Path, signature: str, digest: str, source: str) -> None:
        self.root, self.signature, self.digest, self.source = root, signature, digest, source
        self.entries: dict[str, dict[str, Any]] = {}

    def key(self, spec_json: str) -> str:
        return spec_json

    def ranges_path(self, index: int) -> Path:
        return self.root / CALIB_DIR / f"subnet{index}.ranges.json"

    def reuse_from(self, previous_root: Path, spec_json: str, index: int) -> bool:
        """Copy the previous bundle's ranges for this spec when model and data are unchanged."""
        index_file = previous_root / CALIB_CACHE_NAME
        if not index_file.is_file():
            return False
        try:
            doc = load_json(index_file, CALIB_CACHE_SCHEMA)
        except ArtifactError as err:
            logging.getLogger("edgedyn.deploy").warning("ignoring calibration cache: %s", err)
            return False
        if doc.get("signature") != self.signature or doc.get("data_sha256") != self.digest:
            return False
        entry = (doc.get("subnets") or {}).get(spec_json)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return False
        src = previous_root / entry["path"]
        if not src.is_file():
            return False
        dst = self.ranges_path(index)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return True

    def record(self, spec_json: str, index: int, reused: bool) -> None:
        self.entries[spec_json] = {"path": self.ranges_path(index).relative_to(self.root).as_posix(),
                                   "reused": reused}

    def save(self) -> Path:
        return atomic_write_json(self.root / CALIB_CACHE_NAME, {
            "schema": CALIB_CACHE_SCHEMA, "signature": self.signature, "data_sha256": self.digest,
            "source": self.source, "method": "MinMax", "options": QDQ_OPTIONS, "subnets": self.entries})


def quantize_qdq(src: Path, dst: Path, calib: np.ndarray, ranges: Path, input_name: str = "input",
                 reduce_range: bool = False) -> Path:
    """Write symmetric int8 QDQ ONNX of ``src`` to ``dst``; ranges come from/go to ``ranges``.
    ``reduce_range``: weights in 7 bits, for CPUs whose 8-bit kernels saturate
    (:func:`~edgedyn.device.int8_saturates`)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    batch = 1

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= len(calib):
                return None
            x = calib[self._i:self._i + batch]
            self._i += batch
            return {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    ranges.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint at WARNING
    try:
        quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options=dict(QDQ_OPTIONS),
                        calibration_cache_path=str(ranges), reduce_range=reduce_range)
    except Exception as err:
        first = " ".join(str(err).split())[:200]
        raise EdgedynError(f"{src}: int8 quantization failed ({first})") from None
    finally:
        quiet.setLevel(level)
    return dst


@dataclass
class Calibration:
    """A bundle's int8 calibration: the data, where it came from, and the ranges cache."""

    x: np.ndarray
    source: str
    cache: CalibCache
    #: weights in 7 bits: this CPU's 8-bit kernels saturate (AVX2 or AVX-512 without VNNI), and
    #: the bundle's accuracy check runs the QDQ graphs here
    reduce_range: bool = field(default_factory=int8_saturates)

    def record(self) -> dict[str, object]:
        """The manifest's ``calibration`` field."""
        return {"source": self.source, "samples": int(len(self.x)), "data_sha256": self.cache.digest,
                "method": "MinMax", "cache": CALIB_CACHE_NAME, "weight_bits": 7 if self.reduce_range else 8}


def default_calibration(splits: Any, limit: int) -> np.ndarray:
    """``limit`` samples spread evenly over the run's training split."""
    train = splits.train
    idx = np.unique(np.linspace(0, len(train) - 1, min(limit, len(train))).astype(np.int64))
    return np.stack([np.asarray(train[int(i)][0], dtype=np.float32) for i in idx])


def calibration(calib: str | os.PathLike | np.ndarray | None, splits: Any, data_spec: str, shape: tuple[int, ...],
                limit: int, root: Path, signature: str) -> Calibration:
    """Calibration data: ``calib`` (a folder of images, a ``.npy`` or an array), else ``limit``
    samples of the run's training split; one-line error for data of the wrong shape."""
    if calib is None:
        x, source = default_calibration(splits, limit), f"train split of {data_spec}"
    elif isinstance(calib, np.ndarray):
        x, source = np.asarray(calib, dtype=np.float32), "array"
    else:
        from ..data import load_calibration

        x, source = load_calibration(Path(calib), shape[-1], limit=limit), str(calib)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape[1:]:
        raise EdgedynError(f"calibration data has shape {tuple(x.shape)}, expected [N, {', '.join(map(str, shape[1:]))}]")
    return Calibration(x, source, CalibCache(root, signature, data_digest(x), source))


def quantize_subnet(cal: Calibration, previous: Path, spec_json: str, onnx_path: Path, index: int
                    ) -> tuple[Path, dict[str, Path]]:
    """Sub-net ``index``'s QDQ graph next to ``onnx_path``, reusing ranges from the bundle at
    ``previous`` when model and data are unchanged; returns it and the files to record."""
    cache = cal.cache
    reused = cache.reuse_from(previous, spec_json, index)
    qdq = quantize_qdq(onnx_path, onnx_path.with_name(f"subnet{index}.int8.onnx"), cal.x, cache.ranges_path(index),
                       reduce_range=cal.reduce_range)
    cache.record(spec_json, index, reused)
    return qdq, {"qdq": qdq, "calib_ranges": cache.ranges_path(index)}
