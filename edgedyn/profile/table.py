"""LatencyTable: per-block latencies of one device, with whole-network calibration.

File format (JSON, ``schema: "edgedyn.latency_table/2"``)::

    {"schema": ..., "measured": true, "created": ISO date,
     "device": {...device_info...}, "backend": {"name", "version", "threads"},
     "precision": "fp32", "batch": 1, "sources": [...],
     "layout": {"kind": "plain" | "nchwc", "block": 0 | 8 | 16},
     "call_overhead_ms": fixed cost of one backend call, included in every entry,
     "entries": {"<BlockKey.to_str()>": {"ms", "p10", "p90", "iqr", "n", "source"}},
     "calibration": {"<architecture signature>": {"model", "coef": {feature: value}, "offset_ms",
                                                    "n", "cv_mape", "prior_rel",
                                                    "corrections": {"<BlockKey>": ms}, "points",
                                                    "model_ref": {"ref", "source_sha256"} (optional)}},
     "validation": {"<architecture signature>": {"k", "mape", "within_10pct", "spearman_table",
                                           "spearman_flops", "points"}}}

``source`` is ``measured``, ``interpolated`` or ``roofline``. A sub-net's *block sum* is
the sum over its keys under the table's ``layout`` (reorders included, see
:mod:`~edgedyn.blocks.layout`) of ``ms - call_overhead_ms``: each entry was timed as one
backend call, the whole sub-net is one call. A prediction is the calibration's linear
model over the sub-net's features (:data:`FEATURES`: the block sum with the model's
fitted per-block corrections, and the weight and activation elements its blocks touch),
fitted for that model on whole sub-nets (:mod:`~edgedyn.profile.calibration`); or the
plain block sum where the model has none. Version 1 tables (no layout, blocks timed warm
in isolation) must be re-profiled.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import validate
from ..artifacts import atomic_write_json, load_json, require
from ..blocks import PLAIN, BlockKey, Layout, all_keys, subnet_keys
from ..errors import ArtifactError
from .calibration import FEATURES, Calibration, key_features

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec

_INF = float("inf")

TABLE_SCHEMA = "edgedyn.latency_table/2"
SOURCES = ("measured", "interpolated", "roofline")
MAX_THREADS = 4096  # a thread count above this in a table is corrupt, not a big machine


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
    sources: list[dict[str, Any]] = field(default_factory=list)  # an analytic table's citations
    created: str = ""
    path: Path | None = None
    layout: Layout = PLAIN
    call_overhead_ms: float = 0.0

    # -- prediction -------------------------------------------------------------------
    def _where(self) -> str:
        return str(self.path) if self.path else "latency table"

    def keys(self, net: DynamicNet, spec: SubnetSpec) -> list[BlockKey]:
        """The keys a sub-net's latency is made of in this table (its layout's reorders included)."""
        return subnet_keys(net, spec, self.batch, self.precision, self.layout)

    def raw_sum(self, net: DynamicNet, spec: SubnetSpec) -> float:
        """The sub-net's block sum (ms), before calibration; see the module docstring."""
        return self._block_sum(net, self.keys(net, spec))

    def block_ms(self, net: DynamicNet, key: BlockKey) -> float:
        """A key's share of a sub-net's block sum: its entry less the fixed cost of one call."""
        entry = self.entries.get(key)
        if entry is None:
            raise ArtifactError(f"{self._where()}: no entry for block {key.to_str()} of model {net.name!r} "
                                f"(profile it: edgedyn profile --model {net.name} ...)")
        return max(entry.ms - self.call_overhead_ms, 0.0)

    def _block_sum(self, net: DynamicNet, keys: list[BlockKey],
                   corrections: dict[BlockKey, float] | None = None) -> float:
        total = sum(self.block_ms(net, key) for key in keys)
        if corrections:
            total += sum(corrections.get(key, 0.0) for key in keys)
        return total

    def features(self, net: DynamicNet, spec: SubnetSpec, corrected: bool = True) -> dict[str, float]:
        """The calibration features of a sub-net (:data:`FEATURES`).

        ``corrected``: the block sum includes the model's fitted per-block corrections.
        """
        cal = self.calibration.get(net.arch_signature()) if corrected else None
        return self.features_of_keys(net, self.keys(net, spec), cal.corrections if cal else None)

    def features_of_keys(self, net: DynamicNet, keys: list[BlockKey],
                         corrections: dict[BlockKey, float] | None = None) -> dict[str, float]:
        """:meth:`features` of a sub-net whose keys (:meth:`keys`) are already built."""
        w, a = key_features(keys)
        return {"block_sum": self._block_sum(net, keys, corrections), "weight_melems": w, "act_melems": a}

    def predict(self, net: DynamicNet, spec: SubnetSpec) -> float:
        """Predicted end-to-end latency of ``spec`` in ms (a finite number > 0).

        Raises :class:`ArtifactError` naming the model and the table when the prediction is
        not finite or not positive (e.g. a negative memory coefficient outweighing a tiny
        block sum).
        """
        cal = self.calibration.get(net.arch_signature())
        keys = self.keys(net, spec)
        if cal is None:
            ms = self._block_sum(net, keys)
        else:
            ms = cal.apply(self.features_of_keys(net, keys, cal.corrections))
        if not 0.0 < ms < _INF:  # NaN fails too
            raise ArtifactError(f"{self._where()}: the predicted latency of model {net.name!r} sub-net {spec} is "
                                f"{ms!r} ms, not a finite number > 0 (its calibration or call_overhead_ms is "
                                f"unusable; re-profile: edgedyn profile --model {net.name} ...)")
        return ms

    def check_model(self, net: DynamicNet) -> None:
        """One-line ArtifactError unless every block any sub-net of ``net`` uses is in the table."""
        missing = [k for k in all_keys(net, self.batch, self.precision, self.layout) if k not in self.entries]
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
            "layout": self.layout.to_json(),
            "call_overhead_ms": round(self.call_overhead_ms, 6),
            "counts": {s: sum(1 for e in self.entries.values() if e.source == s) for s in SOURCES},
            "calibration": {sig: {"model": c.model, "coef": c.coef, "offset_ms": c.offset_ms, "n": c.n,
                                  "cv_mape": c.cv_mape, "prior_rel": c.prior_rel,
                                  "corrections": {k.to_str(): round(v, 7) for k, v in sorted(c.corrections.items())},
                                  "points": c.points, **_model_ref_field(c)} for sig, c in self.calibration.items()},
            "validation": self.validation,
            "entries": {k.to_str(): e.to_dict() for k, e in sorted(self.entries.items())},
        }

    def save(self, path: str | os.PathLike) -> Path:
        self.path = Path(path)
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Load and validate a table; errors name the file and the field."""
        path = Path(path)
        return cls.from_dict(load_json(path, TABLE_SCHEMA), path)

    @classmethod
    def load_partial(cls, obj: dict, path: Path) -> LatencyTable:
        """The table inside a profile checkpoint (``*.partial.json``)."""
        if not isinstance(obj, dict) or obj.get("schema") != TABLE_SCHEMA:
            raise ArtifactError(f"{path}: field 'table' is not a latency table")
        return cls.from_dict(obj, path)

    @classmethod
    def from_dict(cls, obj: dict, path: Path) -> LatencyTable:
        """Build a table from its JSON object, checking every field and number once (via
        :mod:`edgedyn.validate`); errors are one line naming ``path`` and the field."""
        w = str(path)
        device = require(obj, "device", dict, w)
        backend = require(obj, "backend", dict, w)
        if backend.get("threads") is not None:
            validate.integer(backend["threads"], w, "backend.threads", lo=1, hi=MAX_THREADS)
        precision = require(obj, "precision", str, w)
        batch = validate.integer(require(obj, "batch", int, w), w, "batch", lo=1)
        measured = require(obj, "measured", bool, w)
        entries = _entries_from(require(obj, "entries", dict, w), w)
        calibration = {sig: _calibration_from(c, f"{w}: calibration[{sig}]")
                       for sig, c in require(obj, "calibration", dict, w).items()}
        layout = _layout_from(require(obj, "layout", dict, w), w)
        # every entry was timed as one call and includes its fixed cost: the cost of one
        # call cannot exceed the largest entry
        largest = max((e.ms for e in entries.values()), default=None)
        overhead = validate.finite(validate.field_of(obj, "call_overhead_ms", w), w, "call_overhead_ms", lo=0.0,
                                   hi=largest)
        bad = next((k for k in entries if k.layout not in ("plain", layout.tag)), None)
        if bad is not None:
            raise ArtifactError(f"{w}: entries[{bad.to_str()[:60]}...]: layout {bad.layout!r} does not match "
                                f"field 'layout' ({layout.tag!r})")
        validation = obj.get("validation", {})
        sources = obj.get("sources", [])
        if not isinstance(validation, dict) or not isinstance(sources, list):
            raise ArtifactError(f"{w}: field 'validation' must be an object and 'sources' a list")
        # the catch-all: no NaN or infinity anywhere else either (device info, points, validation)
        validate.all_finite(obj, w)
        return cls(device=device, backend=backend, precision=precision, batch=batch, measured=measured,
                   entries=entries, calibration=calibration, validation=dict(validation),
                   sources=list(sources), created=str(obj.get("created", "")), path=path,
                   layout=layout, call_overhead_ms=overhead)


def timestamp() -> str:
    """Now in UTC, to the second (ISO 8601): when a table was created or refitted."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _entries_from(raw_entries: dict, w: str) -> dict[BlockKey, Entry]:
    """The table's ``entries`` object, each key and number checked."""
    entries: dict[BlockKey, Entry] = {}
    for text, e in raw_entries.items():
        where = f"{w}: entries[{text[:60]}...]"
        try:
            key = BlockKey.from_str(text)
        except (ValueError, TypeError) as err:
            raise ArtifactError(f"{where}: bad block key ({err})") from None
        if not isinstance(e, dict):
            raise ArtifactError(f"{where}: entry must be an object")
        ms = validate.positive(validate.field_of(e, "ms", where), where, "ms")
        source = e.get("source", "measured")
        if source not in SOURCES:
            raise ArtifactError(f"{where}: field 'source' is {source!r}, expected one of {SOURCES}")
        p10, p90, iqr = (validate.optional(validate.nonneg, e.get(k), where, k) for k in ("p10", "p90", "iqr"))
        n = validate.integer(e.get("n", 0), where, "n", lo=0)
        entries[key] = Entry(ms, source, p10, p90, iqr, n)
    return entries


def _calibration_from(c: Any, where: str) -> Calibration:
    """One model's ``calibration`` object, each feature, number and correction checked."""
    if not isinstance(c, dict):
        raise ArtifactError(f"{where}: must be an object")
    coef = require(c, "coef", dict, where)
    if "block_sum" not in coef or any(ft not in FEATURES for ft in coef):
        raise ArtifactError(f"{where}: field 'coef' must map features {FEATURES} (with 'block_sum') "
                            "to numbers")
    # the block-sum scale is fitted > 0 (calibration refuses otherwise); the memory
    # terms may be negative, any prediction <= 0 is refused by predict()
    coefs = {ft: validate.finite(v, where, f"coef.{ft}") for ft, v in coef.items()}
    validate.positive(coef["block_sum"], where, "coef.block_sum")
    raw_corr = c.get("corrections", {})
    if not isinstance(raw_corr, dict):
        raise ArtifactError(f"{where}: field 'corrections' must be an object")
    corrections: dict[BlockKey, float] = {}
    for text, v in raw_corr.items():
        try:
            k = BlockKey.from_str(text)
        except (ValueError, TypeError) as err:
            raise ArtifactError(f"{where}: field 'corrections' has a bad entry {text[:60]!r} ({err})") from None
        corrections[k] = validate.finite(v, where, f"corrections[{text[:60]}]")
    points = c.get("points", [])
    if not isinstance(points, list):
        raise ArtifactError(f"{where}: field 'points' must be a list")
    return Calibration(
        str(c.get("model", "?")), coefs, validate.finite(validate.field_of(c, "offset_ms", where), where, "offset_ms"),
        validate.integer(c.get("n", 0), where, "n", lo=0), points,
        validate.optional(validate.nonneg, c.get("cv_mape"), where, "cv_mape"), corrections,
        validate.nonneg(c.get("prior_rel", 0.0), where, "prior_rel"), _model_ref_from(c.get("model_ref"), where))


def _model_ref_field(c: Calibration) -> dict[str, Any]:
    """The calibration's model reference, when it has one (tables before it have none)."""
    return {"model_ref": c.model_ref} if c.model_ref is not None else {}


def _model_ref_from(obj: Any, where: str) -> dict[str, Any] | None:
    """A calibration's optional ``model_ref`` ({"ref", "source_sha256"}); informational: a table is
    matched to a model by its architecture signature, not by the factory file's hash."""
    if obj is None:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("ref"), str) \
            or not isinstance(obj.get("source_sha256"), (str, type(None))):
        raise ArtifactError(f"{where}: field 'model_ref' must be an object with 'ref' (a string) and "
                            "'source_sha256' (a string or null)")
    return {"ref": obj["ref"], "source_sha256": obj["source_sha256"]}


def _layout_from(lay: dict, w: str) -> Layout:
    """The table's ``layout`` object."""
    validate.integer(lay.get("block", 0), w, "layout.block", lo=0, hi=1024)
    try:
        return Layout.from_json(lay)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{w}: field 'layout' is invalid ({err})") from None
