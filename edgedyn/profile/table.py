"""LatencyTable: per-block latencies of one device, with whole-network calibration.

File format (JSON, ``schema: "edgedyn.latency_table/1"``)::

    {"schema": ..., "measured": true, "created": ISO date,
     "device": {...device_info...}, "backend": {"name", "version", "threads"},
     "precision": "fp32", "batch": 1, "sources": [...],
     "entries": {"<BlockKey.to_str()>": {"ms", "p10", "p90", "iqr", "n", "source"}},
     "calibration": {"<architecture signature>": {"model", "scale", "per_transition_ms",
                                                    "offset_ms", "layout_block", "n", "points"}},
     "validation": {"<architecture signature>": {"k", "mape", "within_10pct", "spearman_table",
                                           "spearman_flops", "points"}}}

``source`` is ``measured``, ``interpolated`` or ``roofline``. A prediction is
``scale * sum(block ms) + offset_ms`` with the calibration fitted for that model, or the
plain sum where the model has none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import atomic_write_json, load_json, require
from ..errors import ArtifactError
from .blocks import BlockKey, all_keys, subnet_keys

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec

TABLE_SCHEMA = "edgedyn.latency_table/1"
SOURCES = ("measured", "interpolated", "roofline")


@dataclass
class Entry:
    ms: float
    source: str = "measured"
    p10: float | None = None
    p90: float | None = None
    iqr: float | None = None
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"ms": round(self.ms, 6), "source": self.source}
        for k in ("p10", "p90", "iqr"):
            if getattr(self, k) is not None:
                d[k] = round(getattr(self, k), 6)
        if self.n:
            d["n"] = self.n
        return d


@dataclass
class Calibration:
    """``measured = scale * sum(blocks) + per_transition_ms * transitions + offset_ms``.

    ``transitions`` is :func:`~edgedyn.profile.blocks.layout_transitions` with the table's
    ``layout_block`` (0 where the backend has no blocked layouts, or the fit did not need it).
    """

    model: str
    scale: float
    offset_ms: float
    n: int
    points: list[dict[str, Any]] = field(default_factory=list)  # spec widths, sum, measured
    per_transition_ms: float = 0.0
    layout_block: int = 0

    def apply(self, raw_ms: float, transitions: float = 0.0) -> float:
        return self.scale * raw_ms + self.per_transition_ms * transitions + self.offset_ms


@dataclass
class LatencyTable:
    """A device's latency lookup table. Use :meth:`predict` as the search's cost."""

    device: dict[str, Any]
    backend: dict[str, Any]
    precision: str = "fp32"
    batch: int = 1
    measured: bool = True
    entries: dict[BlockKey, Entry] = field(default_factory=dict)
    calibration: dict[str, Calibration] = field(default_factory=dict)
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    created: str = ""
    path: Path | None = None

    # -- prediction -------------------------------------------------------------------
    def _where(self) -> str:
        return str(self.path) if self.path else "latency table"

    def raw_sum(self, net: "DynamicNet", spec: "SubnetSpec") -> float:
        """Sum of the sub-net's block latencies (ms), before calibration."""
        total = 0.0
        for key in subnet_keys(net, spec, self.batch, self.precision):
            entry = self.entries.get(key)
            if entry is None:
                raise ArtifactError(f"{self._where()}: no entry for block {key.to_str()} of model {net.name!r} "
                                    f"(profile it: edgedyn profile --model {net.name} ...)")
            total += entry.ms
        return total

    def predict(self, net: "DynamicNet", spec: "SubnetSpec") -> float:
        """Predicted end-to-end latency of ``spec`` in ms."""
        raw = self.raw_sum(net, spec)
        cal = self.calibration.get(net.arch_signature())
        if cal is None:
            return raw
        if cal.per_transition_ms:
            from .blocks import layout_transitions

            return cal.apply(raw, layout_transitions(net, spec, cal.layout_block))
        return cal.apply(raw)

    def check_model(self, net: "DynamicNet") -> None:
        """One-line ArtifactError unless every block any sub-net of ``net`` uses is in the table."""
        missing = [k for k in all_keys(net, self.batch, self.precision) if k not in self.entries]
        if missing:
            raise ArtifactError(f"{self._where()}: {len(missing)} blocks of model {net.name!r} at input "
                                f"{net.input_shape[-1]} are missing (first: {missing[0].to_str()}); "
                                f"profile it with: edgedyn profile --model {net.name} "
                                f"--input-size {net.input_shape[-1]}")

    def check_matches(self, *, device: str | None = None, precision: str | None = None,
                      batch: int | None = None, fingerprint: str | None = None) -> None:
        """One-line ArtifactError when the table was made for another device, precision or batch."""
        if precision is not None and precision != self.precision:
            raise ArtifactError(f"{self._where()}: field 'precision' is {self.precision!r}, asked for {precision!r}")
        if batch is not None and batch != self.batch:
            raise ArtifactError(f"{self._where()}: field 'batch' is {self.batch}, asked for {batch}")
        if device is not None and device != self.device.get("kind"):
            raise ArtifactError(f"{self._where()}: field 'device.kind' is {self.device.get('kind')!r}, "
                                f"asked for {device!r}")
        if fingerprint is not None and fingerprint != self.device.get("fingerprint"):
            raise ArtifactError(f"{self._where()}: field 'device.fingerprint' is "
                                f"{self.device.get('fingerprint')!r}, this device is {fingerprint!r}")

    def warn_if_unmeasured(self) -> str | None:
        """The warning every command prints for a table not measured on hardware (else None)."""
        if self.measured:
            return None
        return (f"{self._where()} is NOT measured on hardware (an analytic estimate: "
                f"{self.backend.get('name')}); treat its latencies as planning figures")

    # -- persistence ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TABLE_SCHEMA,
            "measured": self.measured,
            "created": self.created,
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "batch": self.batch,
            "sources": self.sources,
            "counts": {s: sum(1 for e in self.entries.values() if e.source == s) for s in SOURCES},
            "calibration": {sig: {"model": c.model, "scale": c.scale, "offset_ms": c.offset_ms,
                                  "per_transition_ms": c.per_transition_ms, "layout_block": c.layout_block,
                                  "n": c.n, "points": c.points} for sig, c in self.calibration.items()},
            "validation": self.validation,
            "entries": {k.to_str(): e.to_dict() for k, e in sorted(self.entries.items())},
        }

    def save(self, path: str | os.PathLike) -> Path:
        self.path = Path(path)
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """Load and validate a table; errors name the file and the field."""
        path = Path(path)
        return cls.from_dict(load_json(path, TABLE_SCHEMA), path)

    @classmethod
    def load_partial(cls, obj: dict, path: Path) -> "LatencyTable":
        """The table inside a profile checkpoint (``*.partial.json``)."""
        if not isinstance(obj, dict) or obj.get("schema") != TABLE_SCHEMA:
            raise ArtifactError(f"{path}: field 'table' is not a latency table")
        return cls.from_dict(obj, path)

    @classmethod
    def from_dict(cls, obj: dict, path: Path) -> "LatencyTable":
        w = str(path)
        device = require(obj, "device", dict, w)
        backend = require(obj, "backend", dict, w)
        precision = require(obj, "precision", str, w)
        batch = require(obj, "batch", int, w)
        measured = require(obj, "measured", bool, w)
        raw_entries = require(obj, "entries", dict, w)
        entries: dict[BlockKey, Entry] = {}
        for text, e in raw_entries.items():
            where = f"{w}: entries[{text[:60]}...]"
            try:
                key = BlockKey.from_str(text)
            except (ValueError, TypeError) as err:
                raise ArtifactError(f"{where}: bad block key ({err})") from None
            if not isinstance(e, dict):
                raise ArtifactError(f"{where}: entry must be an object")
            ms = require(e, "ms", (int, float), where)
            if not ms >= 0:
                raise ArtifactError(f"{where}: field 'ms' must be >= 0")
            source = e.get("source", "measured")
            if source not in SOURCES:
                raise ArtifactError(f"{where}: field 'source' is {source!r}, expected one of {SOURCES}")
            entries[key] = Entry(float(ms), source, e.get("p10"), e.get("p90"), e.get("iqr"), int(e.get("n", 0)))
        calibration = {}
        for sig, c in require(obj, "calibration", dict, w).items():
            where = f"{w}: calibration[{sig}]"
            calibration[sig] = Calibration(str(c.get("model", "?")), float(require(c, "scale", (int, float), where)),
                                           float(require(c, "offset_ms", (int, float), where)),
                                           int(c.get("n", 0)), list(c.get("points", [])),
                                           float(c.get("per_transition_ms", 0.0)), int(c.get("layout_block", 0)))
        return cls(device=device, backend=backend, precision=precision, batch=batch, measured=measured,
                   entries=entries, calibration=calibration, validation=dict(obj.get("validation", {})),
                   sources=list(obj.get("sources", [])), created=str(obj.get("created", "")), path=path)
