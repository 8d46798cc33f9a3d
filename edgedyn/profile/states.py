"""Machine states: what a latency table's timings hold for, and how a table moves between them.

A table is measured once, in one *machine state*: a thread count on one CPU model and ISA
under one runtime version; on a Jetson also a board, a power mode (nvpmodel) and whether
the clocks are locked; on a GPU its clocks and power limit where readable. The machine then
moves (DVFS, heat, another power mode, another thread count), and the table does not.

- :func:`state_key` reduces a table's device facts to the fields that change a latency;
  :func:`state_id` is its short hash. Two keys with the same id are the same state.
- Every profile times a fixed set of **probes** (:func:`probe_specs`: about a dozen
  sub-nets spread from the smallest to the full model) with the calibration sub-nets, and
  stores them in its state (:class:`ModelProbes`).
- ``edgedyn recheck`` (:mod:`~edgedyn.profile.recheck`) re-times the probes now and fits a
  :class:`Correction` from the table's prediction to the new timings
  (:func:`fit_correction`); the table then holds a state for *now* beside its source.
- A table holds several states (:class:`MachineState`); ``LatencyTable.predict`` uses the
  one that matches the machine it runs on (:meth:`LatencyTable.select_state`).

The correction's form is chosen per re-check by leave-one-out error over the probes:
``scale`` (``m = a p``), ``scale+offset`` (``m = a p + b``: small sub-nets, dominated by
per-call and per-operator costs, drift differently from large ones) or ``quadratic``
(``m = b + a p + c p^2``: another thread count, where the per-operator cost of waking
threads and the speed-up of parallel compute both grow with a sub-net's size). A more
complex form is kept only where it lowers the leave-one-out MAPE by :data:`PARSIMONY`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .. import validate
from ..errors import ArtifactError

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec


class TableLike(Protocol):
    """What this module reads and writes of a :class:`~edgedyn.profile.table.LatencyTable`
    (the table module imports this one, not the reverse)."""

    device: dict[str, Any]
    backend: dict[str, Any]
    created: str
    states: dict[str, MachineState]
    base_state: str | None
    active_state: str | None

    def raw_predict(self, net: DynamicNet, spec: SubnetSpec) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...

#: probes a profile times and stores (``recheck --probes K`` re-times K of them)
DEFAULT_PROBES = 12
#: a correction whose leave-one-out probe MAPE is above this is not trusted: re-profile
TRUST_MAPE = 8.0
#: nor one that scales the table by less or more than these
SCALE_RANGE = (0.25, 4.0)
FORMS = ("identity", "scale", "scale+offset", "quadratic")
#: the probes each form needs at least
MIN_PROBES = {"scale": 2, "scale+offset": 4, "quadratic": 6}
#: a more complex form must lower the leave-one-out MAPE by this fraction to be chosen
PARSIMONY = 0.1
#: ... and by this many points of MAPE (%): below it both fit to rounding, not to the machine
#: (exact data fits every form to ~1e-14 %, and which is smaller then depends on the CPU's BLAS)
PARSIMONY_POINTS = 0.01
PROBE_SEED = 30_000


# -- the key -------------------------------------------------------------------------
_CPU_FIELDS = ("cpu_model", "isa")
_CUDA_FIELDS = ("gpu_name", "compute_capability", "driver_version", "gpu_clocks", "power_limit_w")
_JETSON_FIELDS = ("board", "module", "l4t", "power_mode", "clocks_locked")


def state_key(device: dict[str, Any], backend: dict[str, Any]) -> dict[str, Any]:
    """The fields of a table's ``device`` and ``backend`` that change a measured latency."""
    kind = str(device.get("kind", "unknown"))
    key: dict[str, Any] = {"kind": kind, "backend": backend.get("name"), "backend_version": backend.get("version"),
                           "threads": backend.get("threads")}
    fields = {"cpu": _CPU_FIELDS, "cuda": _CUDA_FIELDS, "jetson": _CUDA_FIELDS + _JETSON_FIELDS}.get(kind, ())
    if kind == "cpu":
        key["cpu_model"] = device.get("cpu_model", device.get("name"))
    for f in fields:
        if f in device and f not in key:
            v = device[f]
            if f == "power_mode" and isinstance(v, dict):  # its list of modes is not the state
                v = {k: v[k] for k in ("name", "id") if k in v}
            key[f] = v
    return key


def state_id(key: dict[str, Any]) -> str:
    """A short hash of a state key (canonical JSON)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def describe(key: dict[str, Any]) -> str:
    """A short human label: ``cpu AMD EPYC 9R14 (avx512) 2 threads onnxruntime 1.20.1``."""
    parts = [str(key.get("kind"))]
    name = key.get("cpu_model") or key.get("gpu_name") or key.get("board")
    if name:
        parts.append(str(name))
    if key.get("isa"):
        parts.append(f"({key['isa']})")
    mode = key.get("power_mode")
    if isinstance(mode, dict):
        parts.append(f"power mode {mode.get('name', mode.get('id'))}")
    if key.get("clocks_locked") is not None and key.get("kind") == "jetson":
        parts.append("clocks locked" if key["clocks_locked"] is True else "clocks not locked")
    if key.get("gpu_clocks"):
        parts.append(f"clocks {key['gpu_clocks']}")
    if key.get("threads"):
        parts.append(f"{key['threads']} thread{'s' if key['threads'] != 1 else ''}")
    parts.append(f"{key.get('backend')} {key.get('backend_version')}")
    return " ".join(parts)


def current_key(table_device_kind: str, backend_name: str, threads: int | None) -> dict[str, Any]:
    """The state key of this machine now, for a table of ``backend_name`` at ``threads``."""
    from ..backends import BackendOptions, get_backend

    backend = get_backend(backend_name, BackendOptions(device=table_device_kind, threads=threads))
    return state_key(backend.device_info(), {"name": backend_name, "version": backend.version(),
                                             "threads": threads})


# -- probes ----------------------------------------------------------------------------
def probe_specs(net: DynamicNet, k: int = DEFAULT_PROBES) -> list[SubnetSpec]:
    """``k`` fixed reference sub-nets from the smallest to the full model: the two ends,
    uniform widths between them and seeded random ones (thin and wide), ordered by MACs.
    The same ``net`` always gives the same probes."""
    if k < 2:
        raise ArtifactError(f"probes: need at least 2, got {k}")
    uniform = max(1, (k - 2 + 1) // 2)
    ratios = [0.2 + 0.7 * i / max(1, uniform - 1) for i in range(uniform)] if uniform > 1 else [0.5]
    specs = list(dict.fromkeys([net.min_spec(), net.full_spec()] + [net.uniform_spec(r) for r in ratios]))
    i = 0
    while len(specs) < k and i < 50 * k:
        s = net.random_spec(PROBE_SEED + i, floor_p=0.5 if i % 2 else 0.0)
        i += 1
        if s not in specs:
            specs.append(s)
    return sorted(specs, key=lambda s: (net.macs(s), s.widths))


def spread_subset(n: int, k: int) -> list[int]:
    """``k`` indices of ``n`` ordered items spread from the first to the last."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)}) if k > 1 else [n - 1]


# -- the correction --------------------------------------------------------------------
@dataclass(frozen=True)
class Correction:
    """``measured = scale * predicted + offset_ms + quad * predicted^2`` in one state
    (identity: the table as profiled)."""

    form: str = "identity"
    scale: float = 1.0
    offset_ms: float = 0.0
    quad: float = 0.0  # 1/ms

    def apply(self, ms: float) -> float:
        return self.scale * ms + self.offset_ms + self.quad * ms * ms

    @property
    def is_identity(self) -> bool:
        return self.form == "identity"

    def to_dict(self) -> dict[str, Any]:
        out = {"form": self.form, "scale": round(self.scale, 6), "offset_ms": round(self.offset_ms, 6)}
        if self.form == "quadratic":
            out["quad"] = round(self.quad, 8)
        return out

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> Correction:
        if not isinstance(obj, dict):
            raise ArtifactError(f"{where}: field 'correction' must be an object")
        form = obj.get("form")
        if form not in FORMS:
            raise ArtifactError(f"{where}: field 'correction.form' is {form!r}, expected one of {FORMS}")
        scale = validate.finite(obj.get("scale", 1.0), where, "correction.scale")
        offset = validate.finite(obj.get("offset_ms", 0.0), where, "correction.offset_ms")
        quad = validate.finite(obj.get("quad", 0.0), where, "correction.quad")
        return cls(form, scale, offset, quad)


def _fit(form: str, p: np.ndarray, m: np.ndarray) -> Correction:
    """Least squares in relative error (each probe weighs 1/m: small sub-nets count as much)."""
    w = 1.0 / m
    if form == "scale":
        return Correction("scale", float(np.sum(w * w * p * m) / np.sum(w * w * p * p)), 0.0)
    if form == "scale+offset":
        (scale, offset), *_ = np.linalg.lstsq(np.stack([p * w, w], axis=1), m * w, rcond=None)
        return Correction("scale+offset", float(scale), float(offset))
    (scale, offset, quad), *_ = np.linalg.lstsq(np.stack([p * w, w, p * p * w], axis=1), m * w, rcond=None)
    return Correction("quadratic", float(scale), float(offset), float(quad))


def _loo_errors(form: str, p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Relative error of each probe predicted by the correction fitted on the others."""
    out = np.empty(len(p))
    for i in range(len(p)):
        keep = np.arange(len(p)) != i
        out[i] = _fit(form, p[keep], m[keep]).apply(float(p[i])) / m[i] - 1.0
    return out


@dataclass
class FitReport:
    """How well a correction explains the probes (percentages)."""

    correction: Correction
    mape_before: float  # the table as it was, against the probes timed now
    mape_after: float  # leave-one-out, the chosen form
    worst_after: float  # leave-one-out, the worst probe
    candidates: dict[str, float] = field(default_factory=dict)  # form -> leave-one-out MAPE
    errors_after: list[float] = field(default_factory=list)  # leave-one-out relative error per probe

    def to_dict(self) -> dict[str, Any]:
        return {"probe_mape_before": round(self.mape_before, 3), "probe_mape_after_loo": round(self.mape_after, 3),
                "probe_worst_after_loo": round(self.worst_after, 3),
                "loo_mape_by_form": {k: round(v, 3) for k, v in self.candidates.items()},
                "probe_errors_loo": self.errors_after}


def fit_correction(predicted: np.ndarray, measured: np.ndarray) -> FitReport:
    """The correction from ``predicted`` to ``measured`` (ms, one per probe), its form chosen
    by leave-one-out MAPE: each form where the probes are enough (:data:`MIN_PROBES`), a more
    complex one only where it beats the simpler by :data:`PARSIMONY` and :data:`PARSIMONY_POINTS`."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    before = float(np.mean(np.abs(p / m - 1.0)) * 100)
    forms = [f for f in ("scale", "scale+offset", "quadratic") if len(p) >= MIN_PROBES[f]]
    loo = {f: _loo_errors(f, p, m) for f in forms} if len(p) >= 3 else {"scale": np.abs(p / m - 1.0) * 0}
    score = {f: float(np.mean(np.abs(e)) * 100) for f, e in loo.items()}
    best = next(iter(score))
    for f in list(score)[1:]:
        if score[f] < score[best] * (1.0 - PARSIMONY) and score[best] - score[f] > PARSIMONY_POINTS:
            best = f
    corr = _fit(best, p, m)
    return FitReport(corr, before, score[best], float(np.max(np.abs(loo[best])) * 100), score,
                     [round(float(e), 5) for e in loo[best]])


def trust_problem(report: FitReport, predicted: np.ndarray) -> str | None:
    """Why a correction cannot be trusted (probes that no scale and offset explain), or None."""
    c = report.correction
    ratios = [c.apply(float(x)) / float(x) for x in predicted]
    if min(ratios) <= 0:
        return "the fitted correction makes a probe's latency <= 0"
    if not SCALE_RANGE[0] <= min(ratios) <= max(ratios) <= SCALE_RANGE[1]:
        return (f"the probes need the table scaled by {min(ratios):.3g}x to {max(ratios):.3g}x, outside "
                f"{SCALE_RANGE[0]:g}..{SCALE_RANGE[1]:g}x")
    if report.mape_after > TRUST_MAPE:
        return (f"after the best correction ({c.form}) the probes are still {report.mape_after:.1f}% off "
                f"(leave-one-out; trusted up to {TRUST_MAPE:g}%)")
    return None


# -- what a table stores ----------------------------------------------------------------
@dataclass
class ModelProbes:
    """One model's probes in one state: its network's config (to rebuild it), the probes
    timed in that state, and the correction from the table's own prediction to them."""

    model: str  # "resnet20@32"
    net: dict[str, Any]  # DynamicNet.config()
    probes: list[dict[str, Any]]  # {"widths", "measured_ms", "predicted_ms"?}
    correction: Correction = field(default_factory=Correction)
    fit: dict[str, Any] = field(default_factory=dict)  # FitReport.to_dict() of a re-check

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "net": self.net, "probes": self.probes, "correction": self.correction.to_dict(),
                "fit": self.fit}

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> ModelProbes:
        if not isinstance(obj, dict):
            raise ArtifactError(f"{where}: must be an object")
        net, probes = obj.get("net"), obj.get("probes")
        if not isinstance(net, dict) or not isinstance(net.get("model"), str):
            raise ArtifactError(f"{where}: field 'net' must be an object with a 'model' reference")
        if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
            raise ArtifactError(f"{where}: field 'probes' must be a list of objects")
        for i, p in enumerate(probes):
            validate.positive(validate.field_of(p, "measured_ms", f"{where}: probes[{i}]"), f"{where}: probes[{i}]",
                              "measured_ms")
            if not isinstance(p.get("widths"), list):
                raise ArtifactError(f"{where}: probes[{i}]: field 'widths' must be a list")
        fit = obj.get("fit", {})
        return cls(str(obj.get("model", "?")), net, probes, Correction.from_dict(obj.get("correction", {
            "form": "identity"}), where), fit if isinstance(fit, dict) else {})


@dataclass
class MachineState:
    """One machine state of a table: its key, where it came from, each model's probes and
    correction, and (a state added by a full ``profile --merge``) its own table."""

    key: dict[str, Any]
    source: str  # "profile" | "recheck" | "merge"
    created: str
    models: dict[str, ModelProbes] = field(default_factory=dict)  # arch signature -> probes
    provenance: dict[str, Any] = field(default_factory=dict)
    table: TableLike | None = None  # a state profiled in full (its own LatencyTable)

    @property
    def id(self) -> str:
        return state_id(self.key)

    @property
    def threads(self) -> int | None:
        t = self.key.get("threads")
        return int(t) if isinstance(t, int) else None

    def label(self) -> str:
        return describe(self.key)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "label": self.label(), "key": self.key, "source": self.source,
                               "created": self.created, "provenance": self.provenance,
                               "models": {sig: mp.to_dict() for sig, mp in self.models.items()}}
        if self.table is not None:
            out["table"] = self.table.to_dict()
        return out

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> MachineState:
        if not isinstance(obj, dict):
            raise ArtifactError(f"{where}: must be an object")
        key = obj.get("key")
        if not isinstance(key, dict):
            raise ArtifactError(f"{where}: field 'key' must be an object")
        if obj.get("id") not in (None, state_id(key)):
            raise ArtifactError(f"{where}: field 'id' is {obj.get('id')!r}, but its key hashes to {state_id(key)!r}")
        models = obj.get("models", {})
        if not isinstance(models, dict):
            raise ArtifactError(f"{where}: field 'models' must be an object")
        prov = obj.get("provenance", {})
        # a state's own table (``obj["table"]``) is read by the table module, which owns its format
        return cls(key, str(obj.get("source", "?")), str(obj.get("created", "")),
                   {sig: ModelProbes.from_dict(m, f"{where}.models[{sig}]") for sig, m in models.items()},
                   prov if isinstance(prov, dict) else {})


def record_probes(table: TableLike, net: DynamicNet, specs: list[SubnetSpec], measured: list[float], *,
                  source: str, key: dict[str, Any] | None = None, correction: Correction | None = None,
                  report: FitReport | None = None, provenance: dict[str, Any] | None = None) -> MachineState:
    """Store ``net``'s probes ``specs``, timed at ``measured`` ms, in ``table``'s state ``key``
    (default: the table's own), with the correction that state needs (default: none); the
    state is added when the table does not hold it yet. Each probe keeps the table's own
    prediction beside its timing."""
    import datetime

    key = key if key is not None else state_key(table.device, table.backend)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    state = table.states.get(state_id(key))
    if state is None:
        state = table.states[state_id(key)] = MachineState(key, source, now)
    else:
        state.source, state.created = source, now
    if provenance is not None:
        state.provenance = provenance
    rows = [{"widths": list(s.widths), "measured_ms": round(float(m), 5),
             "predicted_ms": round(float(table.raw_predict(net, s)), 5)} for s, m in zip(specs, measured)]
    state.models[net.arch_signature()] = ModelProbes(f"{net.name}@{net.input_shape[-1]}", net.config(), rows,
                                                     correction or Correction(),
                                                     report.to_dict() if report is not None else {})
    return state


def ensure_own_state(table: TableLike) -> None:
    """Give a table written before probes existed its own state (without probes) as ``base_state``."""
    if table.base_state is None:
        own = MachineState(state_key(table.device, table.backend), "profile", table.created)
        table.states.setdefault(own.id, own)
        table.base_state = own.id


def add_state_table(target: TableLike, table: TableLike) -> TableLike:
    """``target`` holding ``table`` (a full profile in another machine state) as a state of its
    own: ``table``'s probes and its entries and calibration (``profile --merge``)."""
    import datetime

    ensure_own_state(target)
    key = state_key(table.device, table.backend)
    models = dict(table.states[table.base_state].models) if table.base_state in table.states else {}
    table.states, table.base_state, table.active_state = {}, None, None
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    state = MachineState(key, "merge", now, models, {"profiled": table.created}, table)
    target.states[state.id] = state
    return target
