"""The manifest stage (:func:`make_manifest`): the deployed sub-nets' records and the bundle's shared
:class:`~edgedyn.bundle.Manifest` (the format itself lives in :mod:`edgedyn.bundle`, which the
runtime reads too)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from ..bundle import Manifest, SubnetRecord, file_record, sha256_file
from .quantize import Calibration
from .source import RunInfo


def _sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def make_manifest(run: RunInfo, root: Path, records: list[SubnetRecord], files: list[dict[str, Path]], *,
                  device: dict[str, Any], fingerprint: str, backend: dict[str, Any], precision: str, threads: int | None,
                  shape: tuple[int, ...], table_path: Any, calibration: Calibration | None, notes: list[str],
                  checks: dict[str, Any], states: dict[str, Any] | None = None) -> Manifest:
    """The manifest of the bundle being built in ``root``: every file (``files``: each record's
    by role; the int8 calibration cache; the TensorRT timing cache) recorded with its sha256,
    relative to ``root``."""
    shared: dict[str, Path] = {}
    if calibration is not None:
        shared["calib_cache"] = calibration.cache.save()
    timing = root / "timing.cache"
    if timing.is_file():
        shared["timing_cache"] = timing
    for rec, paths in zip(records, files):
        rec.files = {role: file_record(root, p) for role, p in paths.items()}
    net = run.net
    return Manifest(
        device=device,
        fingerprint=fingerprint,
        backend=backend,
        precision=precision,
        threads=threads,
        input={"name": "input", "shape": list(shape), "dtype": "float32"},
        subnets=records,
        model={"name": net.name, "signature": net.signature(), "config": net.config(),
               **({"ref": net.model_ref.to_dict()} if net.model_ref is not None else {})},
        run={"path": str(run.path), "subnets_sha256": _sha(run.path / "subnets.json"),
             "weights_sha256": _sha(run.path / "weights.pt"),
             # the sub-nets' own weights files (torch-pruning's pruned models), when the run has them
             **({"own_weights_sha256": {name: _sha(run.path / name) for name in sorted(run.own)}} if run.own else {})},
        table=str(table_path) if table_path is not None else None,
        calibration=None if calibration is None else calibration.record(),
        files={role: file_record(root, p) for role, p in shared.items()},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
        checks=checks,
        states=states or {},
    )
