"""``deploy``: a search run -> a bundle of per-sub-net artifacts, re-measured on this device.

The stages, each in its own module, run in this order:

1. **export** (:mod:`~edgedyn.deploy.export`): every chosen sub-net is extracted with its own
   BatchNorm statistics, exported to ONNX and checked against PyTorch (fp32, max abs diff
   <= 1e-4);
2. **quantize** (:mod:`~edgedyn.deploy.quantize`): symmetric int8 QDQ when asked;
   then the backend compiles the artifact (``Backend.build``);
3. **check** (:mod:`~edgedyn.deploy.check`): the built model against PyTorch, and its accuracy
   on the test split, where it runs here;
4. **time** (:mod:`~edgedyn.deploy.timing`): all built sub-nets measured interleaved;
5. **manifest** (:mod:`~edgedyn.deploy.assemble`): ``manifest.json``, written last.

The bundle is built in ``OUT.d/.building-<pid>``, moved to a version ``OUT.d/v-<timestamp>`` and
``out`` (a symbolic link) is renamed onto it atomically, so readers see the old bundle or the new
one, never neither and never a half-written one. A deploy holds an exclusive lock on ``out`` for
its whole run (a second deploy to the same ``out`` is refused at once), and ``out`` is checked
before any of this (:mod:`~edgedyn.deploy.outdir`). With ``sign``, ``manifest.sig`` (an
HMAC-SHA256 over the manifest, :mod:`edgedyn.bundle.signature`) is written before the swap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import Backend, BackendOptions, get_backend
from ..bundle import MANIFEST_NAME, Manifest, SubnetRecord, sign_bundle
from ..bundle.signature import read_key
from ..errors import EdgedynError
from ..locks import exclusive_lock
from ..progress import Progress
from .assemble import make_manifest
from .check import check_built, check_unexecuted, deploy_checks
from .evaluation import References, leave_out_dominated, split_arrays
from .export import export_subnet
from .outdir import building_dir, check_out, fault_point, recover, remove_stale_builds, swap_into_place
from .prediction import Prediction
from .probes import build_probes, probe_specs_for, recheck_report, state_scales
from .quantize import Calibration, calibration, quantize_subnet
from .source import RunInfo, RunSubnet, load_run
from .timing import measure_runners, time_subnets

log = logging.getLogger("edgedyn.deploy")

#: Precisions each backend can deploy here.
SUPPORTED = {"onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8")}

__all__ = ["SUPPORTED", "deploy", "measure_runners"]


def _device_info(backend: Any) -> dict[str, Any]:
    """Device facts recorded in the manifest (tests replace this for the TensorRT stand-in)."""
    return backend.device_info()


def _can_execute(backend_name: str) -> bool:
    """Whether built artifacts can be run here (TensorRT engines need a real CUDA GPU)."""
    return backend_name != "tensorrt" or bool(torch.cuda.is_available())


def _load_splits(run: RunInfo) -> Any:
    """The run's data splits, as its search made them (tests replace this with a cached one)."""
    from ..data import load_data

    d = run.data
    return load_data(d["spec"], d["input_size"], seed=d["seed"], holdout_fraction=d["holdout_fraction"],
                     limit=d["limit"])


@dataclass
class _Job:
    """What one deploy was asked for (see :func:`deploy`)."""

    backend: str
    precision: str
    calib: str | os.PathLike | np.ndarray | None
    measure_iters: int
    test_limit: int | None
    calib_limit: int
    check_samples: int
    keep_dominated: bool


def _check_request(backend: str, precision: str, threads: int | None) -> None:
    if backend not in SUPPORTED:
        raise EdgedynError(f"backend {backend!r} cannot deploy; choose one of {', '.join(SUPPORTED)}")
    if precision not in SUPPORTED[backend]:
        raise EdgedynError(f"precision {precision!r} is not supported by backend {backend!r} "
                           f"(choose one of {', '.join(SUPPORTED[backend])})")
    if threads is not None and threads < 1:
        raise EdgedynError(f"threads must be >= 1, got {threads}")


def _prepare_out(out: Path, run: RunInfo) -> None:
    """``out`` is not the run, its folder exists, and no killed deploy's leftovers lie beside it
    (the caller holds the bundle's lock)."""
    if out.resolve() == run.path.resolve():
        raise EdgedynError(f"{out}: the bundle cannot be written into the run directory")
    remove_stale_builds(out)
    recover(out)


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgedynError(f"{out}: cannot create its folder ({err.strerror or err}); choose another --out") from None


def deploy(
    run_dir: str | os.PathLike,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    calib: str | os.PathLike | np.ndarray | None = None,
    out: str | os.PathLike = "bundle",
    table: str | os.PathLike | None = None,
    threads: int | None = None,
    *,
    measure_iters: int = 2000,
    test_limit: int | None = None,
    calib_limit: int = 256,
    check_samples: int = 8,
    backend_extra: dict[str, Any] | None = None,
    keep_dominated: bool = False,
    progress: bool = True,
    sign: str | os.PathLike | bytes | None = None,
) -> Manifest:
    """Build a deployable bundle from a search run and return its (saved) manifest.

    Args:
        run_dir: the search run (``subnets.json`` + ``weights.pt``).
        backend: ``onnxruntime`` (CPU) or ``tensorrt``.
        precision: ``fp32``, ``int8`` (both backends) or ``fp16`` (TensorRT).
        calib: int8 calibration data: a folder of images or a ``.npy`` (see ``calib/README.md``),
            or an array; default: ``calib_limit`` samples of the run's training split.
        out: the bundle: a symbolic link to ``OUT.d/v-<timestamp>``, replaced atomically (an
            older edgedyn's plain bundle folder too); refused if it is the current directory,
            a file, or a non-empty folder that is not a bundle.
        table: latency table for the predicted latencies (default: the run's, if present).
        threads: CPU intra-op threads (ONNX Runtime); default: the latency table's (its
            predictions hold for that count only), else the CPUs this process may use.
        measure_iters: timed calls per sub-net at most (interleaved) for median/p90/p99;
            each sub-net is timed for about ``MEASURE_MS`` (at least 200 calls).
        test_limit: test samples the reported accuracy uses (None: the whole test split).
        check_samples: test samples compared with PyTorch after export.
        backend_extra: extra ``BackendOptions`` (e.g. TensorRT ``workspace_bytes``).
        keep_dominated: deploy every pick; by default a pick whose fp32 accuracy on the run's
            holdout (a part of the training data: decisions never use the test split) is not
            above a cheaper pick's is left out, and the cheaper pick serves its budget
            (:func:`~edgedyn.deploy.evaluation.dominated`; the manifest's ``notes`` name it).
        progress: a bar per sub-net built on a terminal; off a terminal, a plain line every
            30 s or so while sub-nets are built and timed (:class:`~edgedyn.progress.Progress`).
        sign: a key file (or the key's bytes, at least 16): write ``manifest.sig``, an
            HMAC-SHA256 over the manifest, which ``Selector.load(..., verify_key=...)`` and
            ``edgedyn run --verify-key`` check.
    """
    _check_request(backend, precision, threads)
    out = check_out(out)  # before any work
    key = read_key(sign) if sign is not None else None
    run = load_run(run_dir)
    _make_parent(out)
    job = _Job(backend, precision, calib, measure_iters, test_limit, calib_limit, check_samples, keep_dominated)
    with exclusive_lock(out, "bundle"):  # a second deploy to this out is refused at once
        _prepare_out(out, run)
        return _deploy_locked(run, out, job, table, threads, backend_extra, progress, key)


def _deploy_locked(run: RunInfo, out: Path, job: _Job, table: str | os.PathLike | None, threads: int | None,
                   backend_extra: dict[str, Any] | None, progress: bool, key: bytes | None) -> Manifest:
    """Build in ``OUT.d/.building-<pid>``, sign, and swap into place (the lock is held)."""
    backend = job.backend
    prediction = Prediction(run, table, backend, job.precision, threads)  # a bad table fails before anything is written
    tmp = building_dir(out)
    extra = dict(backend_extra or {})
    if backend == "tensorrt":
        extra.setdefault("timing_cache", str(tmp / "timing.cache"))
    be = get_backend(backend, BackendOptions(device="cpu" if backend == "onnxruntime" else "cuda",
                                             precision=job.precision, threads=prediction.threads, extra=extra))
    # a step per distinct sub-net built; off a terminal, a line every 30 s or so, also while the
    # test split is evaluated and while one large sub-net builds
    bar = Progress(total=len({s.spec for s in run.subnets}), desc="deploy: sub-nets built", unit="sub-net", leave=False,
                   disable=not progress)
    try:
        manifest = _build(run, be, job, out, tmp, prediction, bar)
        fault_point("built")
        manifest.save(tmp / MANIFEST_NAME)  # last, but for its signature
        if key is not None:
            sign_bundle(tmp, key)
        fault_point("manifest")
        swap_into_place(tmp, out)
    except BaseException:
        bar.close(done=False)
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            tmp.parent.rmdir()  # OUT.d, if this deploy made it and left nothing in it
        raise
    bar.close()
    manifest.path = out / MANIFEST_NAME
    return manifest


@dataclass
class _Subnets:
    """What building each sub-net needs, and what it produced (records, their files, runners)."""

    run: RunInfo
    be: Backend
    job: _Job
    out: Path
    tmp: Path
    prediction: Prediction
    refs: References
    x_test: np.ndarray
    y_test: np.ndarray
    calibration: Calibration | None
    execute: bool
    records: list[SubnetRecord]
    files: list[dict[str, Path]]
    runners: list[Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.run.net.input_shape)

    @property
    def check(self) -> np.ndarray:
        """The test samples every artifact is compared with PyTorch on."""
        return self.x_test[:max(1, self.job.check_samples)]


def _build(run: RunInfo, be: Backend, job: _Job, out: Path, tmp: Path, prediction: Prediction,
           bar: Progress | None = None) -> Manifest:
    """Every stage, in ``tmp``; returns the manifest (not yet saved)."""
    from ..device import device_fingerprint

    version = be.version()
    device = _device_info(be)
    fingerprint = device_fingerprint(device)
    prediction.on_device(fingerprint, be.layout())
    shape = tuple(int(d) for d in run.net.input_shape)
    splits = _load_splits(run)
    x_test, y_test = split_arrays(splits, job.test_limit)
    if len(x_test) == 0:
        raise EdgedynError(f"{run.path}: the run's test split ({run.data['spec']}) is empty")
    # decisions (which picks to deploy, the selector's ranking) on the run's holdout, a part of
    # the training data; the test split only reports
    x_hold, y_hold = split_arrays(splits, None, "holdout")
    cal = None
    if job.precision == "int8":
        cal = calibration(job.calib, splits, run.data["spec"], shape, job.calib_limit, tmp, run.net.signature())
    refs = References(run.net_for, x_test, x_hold, y_hold)
    notes: list[str] = []
    served_by = leave_out_dominated(run.subnets, refs, notes) if not job.keep_dominated and len(y_hold) else {}
    work = _Subnets(run, be, job, out, tmp, prediction, refs, x_test, y_test, cal, _can_execute(job.backend),
                    [], [], [])
    _build_subnets(work, served_by, bar if bar is not None else Progress(disable=True))
    recheck: dict[str, Any] | None = None
    if work.runners:
        table = prediction.table
        probe_specs = probe_specs_for(table, run.net) if table is not None and table.measured else []
        probe_runners = build_probes(be, run.net, probe_specs, tmp) if probe_specs else []
        probe_stats = time_subnets(work.runners, work.records, device,
                                   job.backend == "onnxruntime" and be.options.device == "cpu", job.measure_iters,
                                   quiet=bar is None or bar.disabled, probes=probe_runners)
        if probe_specs:
            recheck = recheck_report(table, run.net, probe_specs, [st["median"] for st in probe_stats])
    else:
        notes.append(f"{job.backend} artifacts were built but not executed here (no CUDA GPU): "
                     "latency and accuracy of the built engines are unmeasured")
    checks = deploy_checks(work.records, recheck)
    for problem in checks.get("problems", []):
        log.warning("%s", problem)
    return make_manifest(run, tmp, work.records, work.files, device=device, fingerprint=fingerprint,
                         backend={"name": job.backend, "version": version}, precision=job.precision,
                         threads=prediction.threads, shape=shape, table_path=prediction.path, calibration=cal,
                         notes=notes, checks=checks,
                         states=state_scales(prediction.table, run.net, work.records) if work.records else {})


def _build_subnets(work: _Subnets, served_by: dict[int, int], bar: Progress) -> None:
    """One artifact per distinct sub-net serving the run's picks, smallest first."""
    by_index = {s.index: s for s in work.run.subnets}
    by_spec: dict[Any, SubnetRecord] = {}
    bar.set_total(len({by_index[served_by.get(s.index, s.index)].spec for s in work.run.subnets}))
    for sub in sorted(work.run.subnets, key=lambda s: (s.macs, s.index)):
        spec = by_index[served_by.get(sub.index, sub.index)].spec
        if spec in by_spec:  # several budgets picked the same sub-net: one artifact serves them all
            by_spec[spec].budgets.append(sub.budget)  # type: ignore[arg-type]  # as before: a pick has a budget
            log.info("sub-net %d %s is sub-net %d's spec: deployed once, serving budgets %s", sub.index, spec,
                     by_spec[spec].index, [b.get("text") for b in by_spec[spec].budgets if b])
            continue
        by_spec[spec] = _build_subnet(work, sub, spec)
        bar.update()


def _build_subnet(work: _Subnets, sub: RunSubnet, spec: Any) -> SubnetRecord:
    """Export, quantize, compile and check one sub-net; its record, files and runner join ``work``'s."""
    i, job, tmp = len(work.records), work.job, work.tmp
    label = f"sub-net {i} {spec}"
    model, ref_pred = work.refs.reference(spec)
    threads = work.prediction.threads
    exported = export_subnet(model, work.shape, tmp / f"subnet{i}.onnx", work.check, threads, label)
    files: dict[str, Path] = {"onnx": exported.path}
    source = exported.path
    if work.calibration is not None:
        source, quantized = quantize_subnet(work.calibration, work.out, spec.to_json(), exported.path, i)
        files.update(quantized)
    suffix = ".opt.onnx" if job.backend == "onnxruntime" else work.be.artifact_suffix
    artifact = Path(work.be.build(source, tmp / f"subnet{i}{suffix}"))
    files = {"model": artifact, **files}
    fp16 = tmp / f"subnet{i}.fp16.onnx"
    if fp16.is_file():
        files["onnx_fp16"] = fp16
    hold = work.refs.holdout_accuracy(spec) if len(work.refs.y_hold) else None
    accuracy: dict[str, Any] = {"test_fp32": float(np.mean(ref_pred == work.y_test)), "n_test": int(len(work.y_test)),
                                "holdout_fp32": hold, "n_holdout": int(len(work.refs.y_hold)),
                                "search_test": sub.test_accuracy, "search_holdout": sub.holdout_accuracy}
    if work.execute:
        runner = work.be.load(artifact, work.shape)
        runner.activate()
        accuracy.update(check_built(runner, label, job.backend, job.precision, work.check, exported.reference,
                                    work.x_test, work.y_test, ref_pred, accuracy["test_fp32"]))
        work.runners.append(runner)
    else:
        accuracy.update(check_unexecuted(exported.diff, job.precision, source, threads, work.x_test, work.y_test,
                                         ref_pred))
    record = SubnetRecord(index=i, spec=spec, files={}, macs=int(sub.macs), params=int(sub.params),
                          predicted_ms=work.prediction.predicted_ms(sub, spec), accuracy=accuracy,
                          budget=sub.budget, budgets=[sub.budget] if sub.budget else [])
    work.records.append(record)
    work.files.append(files)
    return record
