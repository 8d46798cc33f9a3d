"""The bundle manifest (``manifest.json``, schema ``"edgedyn.bundle/1"``).

A bundle is a directory holding one deployable artifact per sub-net (an optimized ONNX
Runtime model or a TensorRT engine), the ONNX it was built from, shared files (TensorRT
timing cache, int8 calibration ranges) and ``manifest.json``, written last::

    {"schema": "edgedyn.bundle/1", "created": ISO date,
     "device": {...device_info...}, "fingerprint": "cpu:<CPU name>",
     "backend": {"name": "onnxruntime", "version": "1.32.0"}, "precision": "fp32", "threads": 2,
     "input": {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"},
     "model": {"name", "signature", "config", "ref": {"ref", "source_sha256"}},
     "run": {"path", "subnets_sha256"},
     "table": path or null, "calibration": {...} or null,
     "files": {"timing_cache": {"path", "sha256", "bytes"}, ...},   # shared files
     "subnets": [{"index", "spec": {"widths"}, "budget", "macs", "params",
                  "files": {"model": {...}, "onnx": {...}, ...},
                  "predicted_ms", "measured": {"median", "p90", "p99", "n"} or null,
                  "accuracy": {"test", "test_fp32", "delta", "agreement", "n_test",
                               "holdout_fp32", "n_holdout", "search_test", "search_holdout"}}]}

``model.ref`` is the model reference (:meth:`edgedyn.models.ModelRef.to_dict`: a name, or a
factory ``file.py:function`` with the sha256 of its file); bundles written before it lack it.
Every listed file carries its sha256; :func:`~edgedyn.bundle.files.verify_files` checks them.
Deploy writes this file (:mod:`edgedyn.deploy`), the runtime reads it (:mod:`edgedyn.runtime`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import validate
from ..artifacts import atomic_write_json, load_json, require
from ..dynamic import SubnetSpec
from ..errors import ArtifactError

BUNDLE_SCHEMA = "edgedyn.bundle/1"
MANIFEST_NAME = "manifest.json"
ACCURACIES = ("test", "test_fp32", "holdout_fp32", "agreement", "search_test", "search_holdout")  # fractions in [0, 1]
MAX_THREADS = 4096  # a thread count above this in a manifest is corrupt, not a big machine
MAX_INPUT_ELEMENTS = 1 << 28  # 1 GiB of float32: no real request is larger


@dataclass
class SubnetRecord:
    """One deployed sub-net as the manifest records it."""

    index: int
    spec: SubnetSpec
    files: dict[str, dict[str, Any]]
    macs: int
    params: int
    predicted_ms: float | None = None
    measured: dict[str, Any] | None = None  # median, p90, p99, n (ms)
    accuracy: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None  # the smallest budget this sub-net serves
    budgets: list[dict[str, Any]] = field(default_factory=list)  # every budget the search picked it for

    @property
    def model_file(self) -> str:
        return self.files["model"]["path"]

    @property
    def expected_ms(self) -> float | None:
        """Measured median on this device, else the table's prediction."""
        if self.measured and self.measured.get("median") is not None:
            return float(self.measured["median"])
        return self.predicted_ms

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "spec": self.spec.to_dict(), "budget": self.budget,
                "budgets": self.budgets or ([self.budget] if self.budget else []), "macs": self.macs,
                "params": self.params, "files": self.files, "predicted_ms": self.predicted_ms,
                "measured": self.measured, "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> SubnetRecord:
        if not isinstance(obj, dict):
            raise ArtifactError(f"{where}: must be an object")
        files = require(obj, "files", dict, where)
        if "model" not in files:
            raise ArtifactError(f"{where}.files: field 'model' is missing")
        for role, rec in files.items():
            _check_file_record(rec, f"{where}.files.{role}")
        measured = obj.get("measured")
        if measured is not None:
            if not isinstance(measured, dict):
                raise ArtifactError(f"{where}: field 'measured' must be an object or null")
            w = f"{where}.measured"
            # deploy-time latencies (ms): finite, > 0, and percentiles in order
            lat = [validate.positive(require(measured, k, (int, float), w), w, k) for k in ("median", "p90", "p99")]
            if not lat[0] <= lat[1] <= lat[2]:
                raise ArtifactError(f"{w}: fields 'median' <= 'p90' <= 'p99' must hold, got {lat[0]!r}, "
                                    f"{lat[1]!r}, {lat[2]!r}")
            validate.optional(validate.positive, measured.get("p10"), w, "p10")
            validate.optional(validate.integer, measured.get("n"), w, "n")
        predicted = validate.optional(validate.positive, obj.get("predicted_ms"), where, "predicted_ms")
        accuracy = obj.get("accuracy") or {}
        if not isinstance(accuracy, dict):
            raise ArtifactError(f"{where}: field 'accuracy' must be an object")
        for k in ACCURACIES:
            validate.optional(validate.fraction, accuracy.get(k), f"{where}.accuracy", k)
        validate.optional(validate.finite, accuracy.get("delta"), f"{where}.accuracy", "delta", lo=-1.0, hi=1.0)
        validate.optional(validate.nonneg, accuracy.get("max_abs_diff"), f"{where}.accuracy", "max_abs_diff")
        validate.optional(validate.integer, accuracy.get("n_test"), f"{where}.accuracy", "n_test")
        validate.optional(validate.integer, accuracy.get("n_holdout"), f"{where}.accuracy", "n_holdout")
        budget = obj.get("budget")
        budgets = obj.get("budgets") or ([budget] if budget else [])
        if not isinstance(budgets, list):
            raise ArtifactError(f"{where}: field 'budgets' must be a list")
        for j, b in enumerate(([budget] if budget is not None else []) + budgets):
            if not isinstance(b, dict):
                raise ArtifactError(f"{where}: field 'budget' must be an object or null, and 'budgets' a list "
                                    "of objects")
            if "value" in b:
                validate.positive(b["value"], f"{where}.budget" if j == 0 and budget is not None else f"{where}.budgets",
                           "value")
        return cls(
            index=validate.integer(require(obj, "index", int, where), where, "index", lo=0),
            spec=_spec(require(obj, "spec", (dict, list), where), f"{where}.spec"),
            files=files,
            macs=validate.integer(require(obj, "macs", int, where), where, "macs", lo=0),
            params=validate.integer(require(obj, "params", int, where), where, "params", lo=0),
            predicted_ms=predicted,
            measured=measured,
            accuracy=accuracy,
            budget=budget,
            budgets=list(budgets),
        )


def _states(obj: Any, n: int, where: str) -> dict[str, Any]:
    """The manifest's ``states``: each state's per-sub-net latency scale, checked."""
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where}: field 'states' must be an object")
    if not obj:
        return {}
    by_id = require(obj, "by_id", dict, f"{where}: states")
    if obj.get("deployed") is not None and obj.get("deployed") not in by_id:
        raise ArtifactError(f"{where}: field 'states.deployed' is {obj.get('deployed')!r}, not one of its states")
    for sid, st in by_id.items():
        w = f"{where}: states.by_id[{sid}]"
        if not isinstance(st, dict):
            raise ArtifactError(f"{w}: must be an object")
        scale = require(st, "scale", list, w)
        if len(scale) != n:
            raise ArtifactError(f"{w}: field 'scale' has {len(scale)} entries for {n} sub-nets")
        for i, v in enumerate(scale):
            validate.finite(v, w, f"scale[{i}]", lo=0.01, hi=100.0)
    return obj


def _spec(obj: Any, where: str) -> SubnetSpec:
    spec = SubnetSpec.from_dict(obj, where)
    bad = next((w for w in spec.widths if w < 1), None)
    if bad is not None:
        raise ArtifactError(f"{where}: field 'widths' must hold integers >= 1, got {bad}")
    return spec


def _check_model_ref(ref: Any, where: str) -> None:
    if ref is None:
        return
    if not isinstance(ref, dict) or not isinstance(ref.get("ref"), str) \
            or not isinstance(ref.get("source_sha256"), (str, type(None))):
        raise ArtifactError(f"{where}: field 'model.ref' must be an object with 'ref' (a string) and "
                            "'source_sha256' (a string or null)")


def _check_file_record(rec: Any, where: str) -> None:
    if not isinstance(rec, dict):
        raise ArtifactError(f"{where}: must be an object with 'path' and 'sha256'")
    path = require(rec, "path", str, where)
    require(rec, "sha256", str, where)
    validate.optional(validate.integer, rec.get("bytes"), where, "bytes")
    if Path(path).is_absolute() or ".." in Path(path).parts:
        raise ArtifactError(f"{where}: field 'path' must be relative to the bundle, got {path!r}")


@dataclass
class Manifest:
    """A bundle's manifest. :meth:`load` validates the schema and every field used."""

    device: dict[str, Any]
    fingerprint: str
    backend: dict[str, Any]
    precision: str
    threads: int | None
    input: dict[str, Any]
    subnets: list[SubnetRecord]
    model: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    table: str | None = None
    calibration: dict[str, Any] | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)  # deploy's checks of the measured sub-nets
    # the latency table's machine states: {"deployed": id, "by_id": {id: {"label", "key", "scale": [per
    # sub-net: its latency in that state over its latency in the state deployed in]}}} (empty: none)
    states: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the manifest file, when loaded or saved

    @property
    def root(self) -> Path:
        """The bundle directory."""
        if self.path is None:
            raise ArtifactError("manifest has no path (not loaded from or saved to a bundle)")
        return self.path.parent

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    @property
    def input_dtype(self) -> str:
        return str(self.input.get("dtype", "float32"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": BUNDLE_SCHEMA,
            "created": self.created,
            "device": self.device,
            "fingerprint": self.fingerprint,
            "backend": self.backend,
            "precision": self.precision,
            "threads": self.threads,
            "input": self.input,
            "model": self.model,
            "run": self.run,
            "table": self.table,
            "calibration": self.calibration,
            "files": self.files,
            "notes": self.notes,
            "checks": self.checks,
            "subnets": [s.to_dict() for s in self.subnets],
            **({"states": self.states} if self.states else {}),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a bundle's manifest is written last)."""
        self.path = atomic_write_json(path, self.to_dict())
        return self.path

    @classmethod
    def from_dict(cls, obj: dict[str, Any], path: Path) -> Manifest:
        where = str(path)
        if obj.get("schema") != BUNDLE_SCHEMA:
            raise ArtifactError(f"{where}: field 'schema' is {obj.get('schema')!r}, expected {BUNDLE_SCHEMA!r}")
        backend = require(obj, "backend", dict, where)
        require(backend, "name", str, f"{where}: backend")
        inp = require(obj, "input", dict, where)
        shape = require(inp, "shape", list, f"{where}: input")
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ArtifactError(f"{where}: field 'input.shape' must be a list of positive integers")
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise ArtifactError(f"{where}: field 'input.shape' {shape} has {math.prod(shape)} elements, more than "
                                f"the {MAX_INPUT_ELEMENTS} an input may have")
        threads = obj.get("threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
            raise ArtifactError(f"{where}: field 'threads' must be an integer or null")
        validate.optional(validate.integer, threads, where, "threads", lo=1, hi=MAX_THREADS)
        dtype = inp.get("dtype", "float32")
        try:
            import numpy as np

            ok = isinstance(dtype, str) and np.dtype(dtype).kind in "fiu"
        except TypeError:
            ok = False
        if not ok:
            raise ArtifactError(f"{where}: field 'input.dtype' must name a numeric dtype (e.g. 'float32'), "
                                f"got {dtype!r}")
        if obj.get("table") is not None and not isinstance(obj.get("table"), str):
            raise ArtifactError(f"{where}: field 'table' must be a path or null")
        if obj.get("calibration") is not None and not isinstance(obj.get("calibration"), dict):
            raise ArtifactError(f"{where}: field 'calibration' must be an object or null")
        subnets_raw = require(obj, "subnets", list, where)
        if not subnets_raw:
            raise ArtifactError(f"{where}: field 'subnets' is empty")
        subnets = [SubnetRecord.from_dict(s, f"{where}: subnets[{i}]") for i, s in enumerate(subnets_raw)]
        files = obj.get("files") or {}
        if not isinstance(files, dict):
            raise ArtifactError(f"{where}: field 'files' must be an object")
        for role, rec in files.items():
            _check_file_record(rec, f"{where}: files.{role}")
        for k in ("model", "run", "checks"):
            if not isinstance(obj.get(k) or {}, dict):
                raise ArtifactError(f"{where}: field '{k}' must be an object")
        _check_model_ref((obj.get("model") or {}).get("ref"), where)
        if not isinstance(obj.get("notes") or [], list):
            raise ArtifactError(f"{where}: field 'notes' must be a list")
        states = _states(obj.get("states") or {}, len(subnets), where)
        # the catch-all: no NaN or infinity anywhere else either (checks, calibration, device)
        validate.all_finite(obj, where)
        return cls(
            device=require(obj, "device", dict, where),
            fingerprint=require(obj, "fingerprint", str, where),
            backend=backend,
            precision=require(obj, "precision", str, where),
            threads=threads,
            input=inp,
            subnets=subnets,
            model=obj.get("model") or {},
            run=obj.get("run") or {},
            table=obj.get("table"),
            calibration=obj.get("calibration"),
            files=files,
            created=str(obj.get("created", "")),
            notes=list(obj.get("notes") or []),
            checks=dict(obj.get("checks") or {}),
            states=states,
            path=path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Load ``manifest.json`` (or a bundle directory holding one); one-line ArtifactError if bad."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        return cls.from_dict(load_json(path, BUNDLE_SCHEMA), path)

    def all_files(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, record) of every file the manifest lists, shared ones first."""
        out = [(f"files.{role}", rec) for role, rec in self.files.items()]
        for s in self.subnets:
            out += [(f"subnets[{s.index}].files.{role}", rec) for role, rec in s.files.items()]
        return out
