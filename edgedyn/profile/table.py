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
                                           "spearman_flops", "points"}},
     "states": {"<state id>": {...MachineState...}}, "base_state": "<state id>"}

``source`` is ``measured``, ``interpolated`` or ``roofline``. A sub-net's *block sum* is
the sum over its keys under the table's ``layout`` (reorders included, see
:mod:`~edgedyn.blocks.layout`) of ``ms - call_overhead_ms``: each entry was timed as one
backend call, the whole sub-net is one call. A prediction is the calibration's linear
model over the sub-net's features (:data:`FEATURES`: the block sum with the model's
fitted per-block corrections, and the weight and activation elements its blocks touch),
fitted for that model on whole sub-nets (:mod:`~edgedyn.profile.calibration`); or the
plain block sum where the model has none.

``states`` (:mod:`~edgedyn.profile.states`): the machine states the table holds. The state
the entries were measured in (``base_state``) stores the probes timed with the calibration;
``edgedyn recheck`` adds or updates a state with probes timed later and a correction from
this prediction to them; ``profile --merge`` in another state adds a state with its own
table. :meth:`LatencyTable.predict` uses the state that matches this machine
(:meth:`LatencyTable.select_state`), and warns once when none does. A table without states
(written before probes existed) predicts as profiled. Version 1 tables (no layout, blocks timed warm
in isolation) must be re-profiled.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import validate
from ..artifacts import atomic_write_json, load_json, require
from ..blocks import PLAIN, BlockKey, Layout, all_keys, subnet_keys
from ..errors import ArtifactError, EdgedynError
from .calibration import FEATURES, Calibration, key_features
from .states import MachineState

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec

_INF = float("inf")
log = logging.getLogger("edgedyn.table")

TABLE_SCHEMA = "edgedyn.latency_table/2"
SOURCES = ("measured", "interpolated", "roofline")
#: a budget margin from a table's error tail needs this many checked sub-nets, and stays in this range
MIN_TAIL_POINTS = 8
MARGIN_RANGE = (0.01, 0.3)
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
    states: dict[str, MachineState] = field(default_factory=dict)
    base_state: str | None = None  # the state the entries were measured in
    active_state: str | None = None  # the state predictions follow (None: chosen on first use)
    _state_warned: bool = field(default=False, repr=False, compare=False)

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

    def raw_predict(self, net: DynamicNet, spec: SubnetSpec) -> float:
        """The latency of ``spec`` (ms) as this table's own entries and calibration predict it,
        in the state they were measured in (no state's correction)."""
        cal = self.calibration.get(net.arch_signature())
        keys = self.keys(net, spec)
        if cal is None:
            return self._block_sum(net, keys)
        return cal.apply(self.features_of_keys(net, keys, cal.corrections))

    def predict(self, net: DynamicNet, spec: SubnetSpec) -> float:
        """Predicted end-to-end latency of ``spec`` in ms (a finite number > 0), in the table's
        active machine state (:meth:`select_state`).

        Raises :class:`ArtifactError` naming the model and the table when the prediction is
        not finite or not positive (e.g. a negative memory coefficient outweighing a tiny
        block sum).
        """
        ms = self._in_state(self.current_state(), net, spec)
        if not 0.0 < ms < _INF:  # NaN fails too
            raise ArtifactError(f"{self._where()}: the predicted latency of model {net.name!r} sub-net {spec} is "
                                f"{ms!r} ms, not a finite number > 0 (its calibration or call_overhead_ms is "
                                f"unusable; re-profile: edgedyn profile --model {net.name} ...)")
        return ms

    def predict_in(self, state_id: str, net: DynamicNet, spec: SubnetSpec) -> float:
        """:meth:`predict` in the table's state ``state_id`` (whatever state is active)."""
        if state_id not in self.states:
            raise ArtifactError(f"{self._where()}: holds no machine state {state_id!r}")
        return self._in_state(self.states[state_id], net, spec)

    def _in_state(self, state: MachineState | None, net: DynamicNet, spec: SubnetSpec) -> float:
        src = state.table if state is not None and state.table is not None else self
        ms = src.raw_predict(net, spec)
        if state is not None:
            probes = state.models.get(net.arch_signature())
            if probes is not None and not probes.correction.is_identity:
                ms = probes.correction.apply(ms)
        return ms

    # -- machine states ---------------------------------------------------------------
    def current_state(self) -> MachineState | None:
        """The state predictions follow: chosen for this machine on first use; None for a
        table without states."""
        if not self.states:
            return None
        if self.active_state is None:
            self.select_state()
        return self.states.get(self.active_state or "")

    def select_state(self, threads: int | None = None, key: dict[str, Any] | None = None) -> MachineState | None:
        """Follow the state that matches ``key`` (default: this machine now, at ``threads``
        CPU threads, default the table's own). Where none matches, the table's own state is
        used and a warning says so, once per table."""
        if not self.states:
            return None
        from .states import current_key, describe, state_id

        if key is None:
            try:
                key = current_key(str(self.device.get("kind", "cpu")), str(self.backend.get("name")),
                                  threads if threads is not None else self.backend.get("threads"))
            except EdgedynError as err:
                key = {"unreadable": str(err)}
        sid = state_id(key)
        if sid in self.states:
            self.active_state = sid
            return self.states[sid]
        self.active_state = self.base_state if self.base_state in self.states else next(iter(self.states))
        if not self._state_warned:
            self._state_warned = True
            held = "; ".join(st.label() for st in self.states.values())
            log.warning("%s: none of its %d machine states matches this machine (%s); predicting in state %s. "
                        "Re-check it here: edgedyn recheck --table %s --out NEW.json", self._where(), len(self.states),
                        describe(key) if "unreadable" not in key else key["unreadable"], held if
                        len(self.states) == 1 else self.states[self.active_state].label(), self._where())
        return self.states[self.active_state]

    def margin(self, net: DynamicNet, q: float = 95.0) -> tuple[float, str] | None:
        """The budget margin this table's own error tail calls for, for ``net`` (a fraction),
        and where it comes from; None where the table holds fewer than :data:`MIN_TAIL_POINTS`
        errors of ``net``.

        The errors are the relative under-predictions ``measured / predicted - 1`` of the
        sub-nets it was checked on in the active state: its validation sub-nets (the table's
        own state) and its probes (leave-one-out after a re-check's correction; as profiled
        in the table's own state). A pick predicted at ``(1 - margin) x budget`` then meets the
        budget unless its error is beyond the ``q``-th percentile: ``margin = e / (1 + e)``
        for that percentile ``e``, within [:data:`MARGIN_RANGE`].
        """
        import numpy as np

        sig = net.arch_signature()
        errors: list[float] = []
        names = []
        state = self.current_state()
        probes = state.models.get(sig) if state is not None else None
        if probes is not None and probes.fit.get("probe_errors_loo"):
            # relative errors of corrected predictions, measured / predicted - 1
            errors += [1.0 / (1.0 + e) - 1.0 for e in probes.fit["probe_errors_loo"]]
            names.append(f"{len(probes.fit['probe_errors_loo'])} re-checked probes")
        elif probes is not None:
            errors += [p["measured_ms"] / p["predicted_ms"] - 1.0 for p in probes.probes if p.get("predicted_ms")]
            names.append(f"{len(probes.probes)} probes")
        val = self.validation.get(sig)
        if val and (state is None or state.id == self.base_state):
            points = [p for p in val.get("points", []) if p.get("predicted_ms")]
            errors += [p["measured_ms"] / p["predicted_ms"] - 1.0 for p in points]
            names.append(f"{len(points)} validation sub-nets")
        if len(errors) < MIN_TAIL_POINTS:
            return None
        tail = max(float(np.percentile(errors, q)), 0.0)
        margin = min(max(tail / (1.0 + tail), MARGIN_RANGE[0]), MARGIN_RANGE[1])
        return margin, f"{self._where()}: p{q:g} under-prediction {100 * tail:.1f}% over {' and '.join(names)}"

    @property
    def threads(self) -> int | None:
        """CPU threads of the active state (else the table's own)."""
        state = self.current_state()
        if state is not None and state.threads is not None:
            return state.threads
        t = self.backend.get("threads")
        return int(t) if isinstance(t, int) else None

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
            **({"base_state": self.base_state, "states": {sid: st.to_dict() for sid, st in self.states.items()}}
               if self.states else {}),
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
        states, base = _states_from(obj, w)
        return cls(device=device, backend=backend, precision=precision, batch=batch, measured=measured,
                   entries=entries, calibration=calibration, validation=dict(validation),
                   sources=list(sources), created=str(obj.get("created", "")), path=path,
                   layout=layout, call_overhead_ms=overhead, states=states, base_state=base)


def timestamp() -> str:
    """Now in UTC, to the second (ISO 8601): when a table was created or refitted."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _states_from(obj: dict, w: str) -> tuple[dict[str, MachineState], str | None]:
    """The table's ``states`` and ``base_state`` (absent in a table written before probes existed)."""
    raw = obj.get("states", {})
    if not isinstance(raw, dict):
        raise ArtifactError(f"{w}: field 'states' must be an object")
    states: dict[str, MachineState] = {}
    for sid, st in raw.items():
        state = MachineState.from_dict(st, f"{w}: states[{sid}]")
        if st.get("table") is not None:  # a state profiled in full: its own table
            if not isinstance(st["table"], dict):
                raise ArtifactError(f"{w}: states[{sid}]: field 'table' must be a latency table")
            state.table = LatencyTable.from_dict(st["table"], Path(f"{w}: states[{sid}].table"))
        if state.id != sid:
            raise ArtifactError(f"{w}: states[{sid}]: its key hashes to {state.id!r}, not to its name")
        states[sid] = state
    base = obj.get("base_state")
    if states and base not in states:
        raise ArtifactError(f"{w}: field 'base_state' is {base!r}, not one of its states")
    return states, base if states else None


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
