"""``edgedyn recheck``: re-time a table's probes now and move the table to this machine state.

A table is a snapshot of one machine state (:mod:`~edgedyn.profile.states`). ``recheck``
rebuilds each model whose probes the table stores, times the probes as the profiler timed
them (:data:`~edgedyn.profile.measure.WHOLE_NET`, interleaved), fits a correction from the
table's prediction to the timings (its form chosen by leave-one-out error), and writes a
table that holds, beside everything the source held, the state of *now* (for the thread
count asked for) with that correction and its provenance: the source file and hash, the
time, and the probe error before and after. Seconds, not a profile.

Where no scale and offset explain the probes (:func:`~edgedyn.profile.states.trust_problem`)
nothing is written and a one-line error advises a full profile.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ArtifactError, EdgedynError
from .states import (
    FitReport,
    MachineState,
    ModelProbes,
    current_key,
    ensure_own_state,
    fit_correction,
    probe_specs,
    record_probes,
    spread_subset,
    trust_problem,
)
from .states import (
    state_key as own_key_of,
)
from .table import TABLE_SCHEMA, LatencyTable, timestamp

if TYPE_CHECKING:
    from ..backends import Backend
    from ..blocks.layout import Layout
    from ..dynamic import DynamicNet, SubnetSpec

#: times ``specs`` of ``net`` on ``backend`` (ms each); tests inject a mocked machine
Measure = Callable[["Backend", "DynamicNet", Sequence["SubnetSpec"]], list[float]]


@dataclass
class ModelRecheck:
    """One model's re-check: its probes, the table's prediction and the timings now."""

    model: str
    specs: list[SubnetSpec]
    predicted: np.ndarray
    measured: np.ndarray
    report: FitReport

    def summary(self) -> str:
        """``state 0.87x (small) .. 0.91x (full); probe MAPE 14.2% -> 1.8%``: the corrected over
        the table's prediction at the smallest and the largest probe."""
        c = self.report.correction
        lo, hi = float(self.predicted[0]), float(self.predicted[-1])
        return (f"{self.model}: state {c.apply(lo) / lo:.2f}x (small) .. {c.apply(hi) / hi:.2f}x (full); probe MAPE "
                f"{self.report.mape_before:.1f}% -> {self.report.mape_after:.1f}% ({c.form}, leave-one-out, "
                f"{len(self.specs)} probes)")


@dataclass
class RecheckResult:
    table: LatencyTable
    state: MachineState
    models: list[ModelRecheck]
    seconds: float


def own_key(table: LatencyTable) -> dict[str, Any]:
    """The key of the state a table's entries were measured in."""
    return own_key_of(table.device, table.backend)


def measure_specs(backend: Backend, net: DynamicNet, specs: Sequence[SubnetSpec]) -> list[float]:
    """Per-call median latency (ms) of whole sub-nets ``specs``, built as the profiler builds
    its calibration and timed interleaved in bursts, about a second of calls each
    (:data:`~edgedyn.profile.measure.WHOLE_NET`: a dozen probes can afford more calls than
    the profiler's 150-200 sub-nets)."""
    import tempfile

    import torch

    from .measure import WHOLE_NET, measure_calls

    example = torch.zeros(1, *net.input_shape[1:])
    with tempfile.TemporaryDirectory(prefix="edgedyn-recheck-") as tmp:
        workdirs = [Path(tmp) / str(i) for i in range(len(specs))]
        for wd in workdirs:
            wd.mkdir()
        runners = backend.prepare_subnets(net, list(specs), example, workdirs)
        stats = measure_calls(runners, WHOLE_NET, seed=len(specs))
        for r in runners:
            r.deactivate()
    return [st.median for st in stats]


def table_models(table: LatencyTable, path: Path, model: str | None,
                 input_size: int | None = None) -> dict[str, ModelProbes]:
    """The models whose probes ``table`` stores (its own state's first), or with ``model``
    given, that model's probes chosen now; a one-line error for a table without probes."""
    held: dict[str, ModelProbes] = {}
    order = ([table.states[table.base_state]] if table.base_state in table.states else []) + list(
        table.states.values())
    for st in order:
        for sig, mp in st.models.items():
            held.setdefault(sig, mp)
    if model is not None:
        from ..dynamic import DynamicNet

        net = DynamicNet.from_name(model, input_size=input_size)
        if net.arch_signature() not in table.calibration:
            have = sorted(c.model for c in table.calibration.values()) or ["none"]
            raise ArtifactError(f"{path}: field 'calibration' holds no calibration of {net.name}@"
                                f"{net.input_shape[-1]} (it has: {', '.join(have)})")
        found = held.get(net.arch_signature())
        if found is not None:
            return {net.arch_signature(): found}
        return {net.arch_signature(): ModelProbes(f"{net.name}@{net.input_shape[-1]}", net.config(), [
            {"widths": list(s.widths)} for s in probe_specs(net)])}
    if not held:
        models = sorted(c.model for c in table.calibration.values()) or ["MODEL@SIZE"]
        name, _, size = models[0].partition("@")
        raise ArtifactError(f"{path}: field 'states' is missing: the table was written before probes existed; "
                            f"name the model to re-check it with probes chosen now (edgedyn recheck --table "
                            f"{path} --model {name} --input-size {size or 'N'} ...), or profile it again")
    return held


def rebuild(mp: ModelProbes, path: Path, k: int | None) -> tuple[DynamicNet, list[SubnetSpec]]:
    """The network of stored probes ``mp`` and ``k`` of its probes (all by default), spread
    from the smallest to the largest."""
    from ..dynamic import DynamicNet, SubnetSpec
    from ..models import resolve_model

    cfg = mp.net
    ref = resolve_model(cfg["model"])
    ref.check_unchanged(cfg.get("model_sha256"), str(path))
    options = {o: cfg[o] for o in ("channel_groups", "group_size", "min_groups", "grid_block") if o in cfg}
    net = DynamicNet.from_name(ref, num_classes=cfg.get("num_classes"), input_size=cfg.get("input_size"), **options)
    specs = []
    for i, row in enumerate(mp.probes):
        try:
            specs.append(net.check_spec(SubnetSpec(tuple(int(w) for w in row["widths"]))))
        except (EdgedynError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: probe {i} of {mp.model}: field 'widths' does not fit the rebuilt "
                                f"network ({err})") from None
    if k is not None:
        if not 2 <= k <= len(specs):
            raise ArtifactError(f"{path}: --probes {k}: the table holds {len(specs)} probes of {mp.model}; "
                                f"give 2 to {len(specs)}")
        specs = [specs[i] for i in spread_subset(len(specs), k)]
    return net, specs


def check_out(source: Path, out: Path, overwrite: bool) -> None:
    """Refuse, before anything is timed, an ``--out`` that would replace the source table or
    another file without ``--overwrite``."""
    from ..artifacts import refuse_foreign

    if out.is_dir():
        raise EdgedynError(f"{out}: is a folder; --out must be a table file (JSON)")
    if not overwrite and out.exists():
        same = out.resolve() == source.resolve()
        raise EdgedynError(f"{out}: exists{' (it is the input table)' if same else ''}; choose another --out, "
                           "or pass --overwrite to replace it")
    refuse_foreign(out, TABLE_SCHEMA, allow=overwrite, hint="; choose another --out")


def recheck(table_path: str | Path, out: str | Path, *, threads: int | None = None, probes: int | None = None,
            model: str | None = None, input_size: int | None = None, overwrite: bool = False,
            measure: Measure = measure_specs, state_key: dict[str, Any] | None = None,
            layout: Layout | None = None, log: Callable[[str], None] = print) -> RecheckResult:
    """Re-check the table at ``table_path`` against this machine now and write it to ``out``.

    ``threads``: the CPU thread count of the new state (default: the table's). ``probes``:
    re-time that many of each model's stored probes (default: all). ``model``: a table
    written before probes existed is re-checked on probes chosen now for this model.
    ``measure``, ``state_key`` and ``layout`` replace the timing, the machine's key and the
    activation layout its backend runs (tests); a table of another layout is refused before
    anything is timed (the backend's own layout is asked unless a ``state_key`` stands in for
    the machine).
    """
    from ..backends import BackendOptions, get_backend
    from ..locks import exclusive_lock

    t0 = time.perf_counter()
    path, out = Path(table_path), Path(out)
    if probes is not None and probes < 2:
        raise EdgedynError(f"--probes must be >= 2, got {probes}")
    table = LatencyTable.load(path)
    if not table.measured:
        raise ArtifactError(f"{path}: field 'measured' is false: an analytic table has no timings to re-check")
    check_out(path, out, overwrite)
    if table.precision != "fp32" and table.backend.get("name") != "tensorrt":
        raise ArtifactError(f"{path}: field 'precision' is {table.precision!r}: {table.backend.get('name')} probes are "
                            "timed in fp32 here; re-check an fp32 table, or profile this precision again")
    held = table_models(table, path, model, input_size)
    nets = {sig: rebuild(mp, path, probes) for sig, mp in held.items()}  # every probe checked before timing
    threads = threads if threads is not None else table.backend.get("threads")
    backend = get_backend(str(table.backend.get("name")), BackendOptions(
        device=str(table.device.get("kind", "cpu")), precision=table.precision, threads=threads))
    here = layout if layout is not None else backend.layout() if state_key is None else None
    if here is not None and here != table.layout:  # no correction of timings turns one layout model into another
        raise ArtifactError(f"{path}: field 'layout' is {table.layout.tag!r}, {table.backend.get('name')} runs "
                            f"{here.tag!r} on this device: the table was profiled on another CPU (another "
                            "instruction set); profile this one: edgedyn profile --out NEW.json")
    key = state_key if state_key is not None else current_key(
        str(table.device.get("kind", "cpu")), str(table.backend.get("name")), threads)
    results = []
    for net, specs in nets.values():
        measured = np.array(measure(backend, net, specs), float)
        predicted = np.array([table.raw_predict(net, s) for s in specs])
        report = fit_correction(predicted, measured)
        problem = trust_problem(report, predicted)
        if problem is not None:
            raise ArtifactError(f"{path}: the probes of {net.name}@{net.input_shape[-1]} timed now do not fit the "
                                f"table: {problem}; nothing written. Profile it again in this state: edgedyn "
                                f"profile --model {net.name} --out NEW.json")
        results.append((net, specs, measured, predicted, report))
    seconds = time.perf_counter() - t0
    provenance = {"source_table": str(path), "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                  "source_state": table.base_state,
                  "rechecked": timestamp(), "seconds": round(seconds, 2)}
    ensure_own_state(table)  # a table written before probes existed
    state = None
    checks = []
    for net, specs, measured, predicted, report in results:
        state = record_probes(table, net, specs, list(measured), source="recheck", key=key,
                              correction=report.correction, report=report, provenance=provenance)
        checks.append(ModelRecheck(f"{net.name}@{net.input_shape[-1]}", specs, predicted, measured, report))
    if state is None:  # pragma: no cover - a table holds one model at least
        raise ArtifactError(f"{path}: no model to re-check")
    table.active_state = state.id
    with exclusive_lock(out, "latency table"):
        table.save(out)
    for c in checks:
        log(c.summary())
    log(f"{out}: state {state.label()} ({state.id}), {len(table.states)} state(s) held; "
        f"re-checked in {seconds:.1f} s")
    return RecheckResult(table, state, checks, seconds)
