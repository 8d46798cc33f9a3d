"""``deploy``: a search run -> a bundle of per-sub-net artifacts, re-measured on this device.

For every chosen sub-net: extract it with its own BatchNorm statistics, export ONNX, check
the ONNX against PyTorch (fp32, max abs diff <= 1e-4), quantize to symmetric int8 QDQ when
asked, compile with the backend (``Backend.build``), then measure all built sub-nets
interleaved and write ``manifest.json`` last. The bundle is built in a temporary sibling
directory and renamed into place, so ``out`` is never half-written; ``out`` is checked
before any of this (:func:`check_out`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import BackendOptions, get_backend
from ..errors import EdgedynError
from ..progress import Progress
from .manifest import MANIFEST_NAME, Manifest, SubnetRecord, file_record
from .quantize import CALIB_CACHE_NAME, CalibCache, data_digest, quantize_qdq
from .run import RunInfo, load_run

log = logging.getLogger("edgedyn.deploy")

#: Precisions each backend can deploy here.
SUPPORTED = {"onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
FP32_TOLERANCE = 1e-4


def _device_info(backend: Any) -> dict[str, Any]:
    """Device facts recorded in the manifest (tests replace this for the TensorRT stand-in)."""
    return backend.device_info()


def _can_execute(backend_name: str) -> bool:
    """Whether built artifacts can be run here (TensorRT engines need a real CUDA GPU)."""
    return backend_name != "tensorrt" or bool(torch.cuda.is_available())


# -- data ------------------------------------------------------------------------------
def _load_splits(run: RunInfo) -> Any:
    from ..data import load_data

    d = run.data
    return load_data(d["spec"], d["input_size"], seed=d["seed"], holdout_fraction=d["holdout_fraction"],
                     limit=d["limit"])


def _test_split(splits: Any, limit: int | None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    from ..data import make_loader

    xs, ys, n = [], [], 0
    for x, y in make_loader(getattr(splits, split), 256, shuffle=False):
        xs.append(x.numpy())
        ys.append(y.numpy())
        n += len(y)
        if limit is not None and n >= limit:
            break
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


def _default_calibration(splits: Any, limit: int) -> np.ndarray:
    """``limit`` samples spread evenly over the run's training split."""
    train = splits.train
    idx = np.unique(np.linspace(0, len(train) - 1, min(limit, len(train))).astype(np.int64))
    return np.stack([np.asarray(train[int(i)][0], dtype=np.float32) for i in idx])


# -- measurement -----------------------------------------------------------------------
#: deploy times each sub-net for about this long (ms)
MEASURE_MS = 2000.0


def _timed(runner: Any) -> Any:
    """``runner`` if it has ``timed_call``, else an adapter over its ``time()``."""
    if callable(getattr(runner, "timed_call", None)):
        return runner

    class _Adapter:
        def timed_call(self) -> float:
            return float(runner.time(n_warmup=0, n_iters=1)[0])

    return _Adapter()


def measure_runners(runners: Sequence[Any], iters: int = 2000, warmup: int = 10, seed: int = 0,
                    burst: int = 10, target_ms: float | None = MEASURE_MS) -> list[dict[str, Any]]:
    """Per-call latency (ms) of each runner: median, p10, p90, p99, as a server sees it.

    The same protocol (:func:`~edgedyn.profile.measure.measure_calls`) the profiler
    calibrates its table on, so the prediction and this measurement are comparable. Each
    runner gets ``iters`` calls at most, about ``target_ms`` of them (at least 200): a
    measurement that lasts a fraction of a second is at the mercy of any passing stall.
    """
    from ..profile.measure import Calls, measure_calls

    protocol = Calls(calls=iters, burst=burst, warmup=warmup, target_ms=target_ms, min_calls=200)
    stats = measure_calls([_timed(r) for r in runners], protocol, seed=seed)
    return [{"median": round(st.median, 6), "p10": round(st.p10, 6), "p90": round(st.p90, 6),
             "p99": round(st.p99, 6), "n": st.n} for st in stats]


def _predict_all(runner: Any, x: np.ndarray) -> np.ndarray:
    """Top-1 class of every sample, one batch-1 call each."""
    return np.array([int(np.argmax(runner.infer(x[i:i + 1]))) for i in range(len(x))], dtype=np.int64)


def _load_table(run: RunInfo, table: Any) -> tuple[Any, Any]:
    """The latency table given (``table``), else the run's if its file is there; or Nones."""
    table_path = table if table is not None else (run.table if run.table and Path(run.table).is_file() else None)
    if table_path is None:
        return None, None
    from ..profile.table import LatencyTable

    return LatencyTable.load(table_path), table_path


def _serving_threads(lat_table: Any, table_path: Any, backend: str, threads: int | None) -> int | None:
    """CPU threads the bundle serves with (ONNX Runtime): asked for, else those the table
    was profiled with (chosen for this model on this CPU, whatever its precision), else all cores."""
    if backend != "onnxruntime":
        return threads
    if threads is not None:
        return threads
    have = lat_table.backend.get("threads") if lat_table is not None else None
    if have is not None and lat_table.backend.get("name") == backend:
        log.info("%s: serving with the table's %s CPU threads", table_path, have)
        return int(have)
    from ..backends.onnxruntime import default_threads

    return default_threads()


def _predicts(lat_table: Any, table_path: Any, backend: str, precision: str, threads: int | None) -> bool:
    """Whether the table's latencies hold for this bundle (a warning says why not)."""
    if lat_table.precision != precision or lat_table.backend.get("name") != backend:
        log.warning("%s: a %s %s table does not predict %s %s; no predicted latencies", table_path,
                    lat_table.backend.get("name"), lat_table.precision, backend, precision)
        return False
    if threads is not None and lat_table.backend.get("threads") not in (None, threads):
        log.warning("%s: the table was profiled with %s CPU threads, this bundle serves with %s; "
                    "no predicted latencies", table_path, lat_table.backend.get("threads"), threads)
        return False
    return True


# -- the bundle directory --------------------------------------------------------------
def file_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` if it is not a folder (then nothing can be
    written at ``path``), else None."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_out(out: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, a bundle directory that deploy could not write or must not
    replace: a file; a non-empty folder that is not an edgedyn bundle; a path under a file."""
    out = Path(out)
    blocker = file_ancestor(out)
    if blocker is not None:
        raise EdgedynError(f"{out}: {blocker} is a file, not a folder; choose another {option}")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise EdgedynError(f"{out}: exists and is a file, not an edgedyn bundle; choose another {option}")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise EdgedynError(f"{out}: exists and is not an edgedyn bundle (a non-empty folder without "
                               f"{MANIFEST_NAME}); choose another {option}")
    return out


def _remove_stale_builds(out: Path) -> None:
    """Remove ``.<out>.building-<pid>`` / ``.<out>.old-<pid>`` siblings a killed deploy left behind."""
    from ..profile.profiler import pid_alive

    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(building|old)-(\d+)$")
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        m = pattern.match(path.name)
        if m and int(m[2]) != os.getpid() and not pid_alive(int(m[2])) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s (left behind by a killed deploy)", path)


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
            raise EdgedynError(f"{out}: exists and is not an edgedyn bundle; choose another --out")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


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
) -> Manifest:
    """Build a deployable bundle from a search run and return its (saved) manifest.

    Args:
        run_dir: the search run (``subnets.json`` + ``weights.pt``).
        backend: ``onnxruntime`` (CPU) or ``tensorrt``.
        precision: ``fp32``, ``int8`` (both backends) or ``fp16`` (TensorRT).
        calib: int8 calibration data: a folder of images or a ``.npy`` (see ``calib/README.md``),
            or an array; default: ``calib_limit`` samples of the run's training split.
        out: the bundle directory (replaced atomically if it already holds a bundle).
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
            (:func:`dominated`; the manifest's ``notes`` name it).
        progress: a bar per sub-net built on a terminal; off a terminal, a plain line every
            30 s or so while sub-nets are built and timed (:class:`~edgedyn.progress.Progress`).
    """
    if backend not in SUPPORTED:
        raise EdgedynError(f"backend {backend!r} cannot deploy; choose one of {', '.join(SUPPORTED)}")
    if precision not in SUPPORTED[backend]:
        raise EdgedynError(f"precision {precision!r} is not supported by backend {backend!r} "
                           f"(choose one of {', '.join(SUPPORTED[backend])})")
    if threads is not None and threads < 1:
        raise EdgedynError(f"threads must be >= 1, got {threads}")
    out = check_out(out)  # before any work
    run = load_run(run_dir)
    if out.resolve() == run.path.resolve():
        raise EdgedynError(f"{out}: the bundle cannot be written into the run directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgedynError(f"{out}: cannot create its folder ({err.strerror or err}); choose another --out") from None
    _remove_stale_builds(out)
    lat_table, table_path = _load_table(run, table)  # a bad table fails before anything is written
    # without any table, the search's own latency costs (from the run's table) are the prediction
    search_cost = lat_table is None
    threads = _serving_threads(lat_table, table_path, backend, threads)
    if lat_table is not None and not _predicts(lat_table, table_path, backend, precision, threads):
        lat_table = table_path = None
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    extra = dict(backend_extra or {})
    if backend == "tensorrt":
        extra.setdefault("timing_cache", str(tmp / "timing.cache"))
    be = get_backend(backend, BackendOptions(device="cpu" if backend == "onnxruntime" else "cuda",
                                             precision=precision, threads=threads, extra=extra))
    # a step per distinct sub-net built; off a terminal, a line every 30 s or so, also while the
    # test split is evaluated and while one large sub-net builds
    bar = Progress(total=len({s.spec for s in run.subnets}), desc="deploy: sub-nets built", unit="sub-net", leave=False,
                   disable=not progress)
    try:
        manifest = _build(run, be, backend, precision, calib, out, tmp, lat_table, table_path, search_cost,
                          threads, measure_iters, test_limit, calib_limit, check_samples, keep_dominated, bar)
        manifest.save(tmp / MANIFEST_NAME)  # last
        _swap_into_place(tmp, out)
    except BaseException:
        bar.close(done=False)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bar.close()
    manifest.path = out / MANIFEST_NAME
    return manifest


def _build(run: RunInfo, be: Any, backend: str, precision: str, calib: Any, out: Path, tmp: Path,
           lat_table: Any, table_path: Any, search_cost: bool, threads: int | None, measure_iters: int,
           test_limit: int | None, calib_limit: int, check_samples: int, keep_dominated: bool = False,
           bar: Progress | None = None) -> Manifest:
    from ..export import export_onnx

    version = be.version()
    device = _device_info(be)
    from ..device import device_fingerprint

    if lat_table is not None and lat_table.device.get("fingerprint") != device_fingerprint(device):
        log.warning("%s: field 'device.fingerprint' is %r, this device is %r; no predicted latencies", table_path,
                    lat_table.device.get("fingerprint"), device_fingerprint(device))
        lat_table = table_path = None
    execute = _can_execute(backend)
    net = run.net
    shape = tuple(int(d) for d in net.input_shape)
    splits = _load_splits(run)
    x_test, y_test = _test_split(splits, test_limit)
    if len(x_test) == 0:
        raise EdgedynError(f"{run.path}: the run's test split ({run.data['spec']}) is empty")
    # decisions (which picks to deploy, the selector's ranking) on the run's holdout, a part of
    # the training data; the test split only reports
    x_hold, y_hold = _test_split(splits, None, "holdout")
    check = x_test[:max(1, check_samples)]

    calib_x = cache = None
    calib_source = None
    if precision == "int8":
        if calib is None:
            calib_x, calib_source = _default_calibration(splits, calib_limit), f"train split of {run.data['spec']}"
        elif isinstance(calib, np.ndarray):
            calib_x, calib_source = np.asarray(calib, dtype=np.float32), "array"
        else:
            from ..data import load_calibration

            calib_x, calib_source = load_calibration(calib, shape[-1], limit=calib_limit), str(calib)
        if calib_x.ndim != 4 or tuple(calib_x.shape[1:]) != shape[1:]:
            raise EdgedynError(f"calibration data has shape {tuple(calib_x.shape)}, expected [N, {', '.join(map(str, shape[1:]))}]")
        cache = CalibCache(tmp, net.signature(), data_digest(calib_x), calib_source)

    suffix = ".opt.onnx" if backend == "onnxruntime" else be.artifact_suffix
    records: list[SubnetRecord] = []
    runners: list[Any] = []
    by_spec: dict[Any, SubnetRecord] = {}
    notes: list[str] = []
    references: dict[Any, tuple[torch.nn.Module, np.ndarray]] = {}
    holdout_acc: dict[Any, float] = {}

    def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[k:k + 512])).argmax(1).numpy()
                                   for k in range(0, len(x), 512)])

    def reference(spec: Any) -> tuple[torch.nn.Module, np.ndarray]:
        """The sub-net's fp32 PyTorch model and its top-1 predictions on the test split."""
        if spec not in references:
            model = net.extract(spec).cpu().eval()
            references[spec] = (model, predict(model, x_test))
            holdout_acc[spec] = float(np.mean(predict(model, x_hold) == y_hold)) if len(y_hold) else float("nan")
        return references[spec]

    by_index = {s.index: s for s in run.subnets}
    served_by: dict[int, int] = {}
    if not keep_dominated and len(y_hold):
        for s in run.subnets:
            reference(s.spec)
        fp32_acc = {s.index: holdout_acc[s.spec] for s in run.subnets}
        served_by = dominated(run.subnets, fp32_acc)
        for i, j in served_by.items():
            notes.append(f"search pick {i} {by_index[i].spec} left out: its fp32 holdout accuracy "
                         f"{100 * fp32_acc[i]:.2f}% is not above pick {j}'s {100 * fp32_acc[j]:.2f}%, which costs "
                         f"less; pick {j} serves its budget")
            log.info("%s", notes[-1])
    bar = bar if bar is not None else Progress(disable=True)
    bar.set_total(len({by_index[served_by.get(s.index, s.index)].spec for s in run.subnets}))
    for sub in sorted(run.subnets, key=lambda s: (s.macs, s.index)):
        i, spec = sub.index, by_index[served_by.get(sub.index, sub.index)].spec
        if spec in by_spec:  # several budgets picked the same sub-net: one artifact serves them all
            by_spec[spec].budgets.append(sub.budget)
            log.info("sub-net %d %s is sub-net %d's spec: deployed once, serving budgets %s", i, spec,
                     by_spec[spec].index, [b.get("text") for b in by_spec[spec].budgets if b])
            continue
        i = len(records)
        label = f"sub-net {i} {spec}"
        model, ref_pred = reference(spec)
        onnx_path = export_onnx(model, torch.zeros(shape), tmp / f"subnet{i}.onnx")
        with torch.no_grad():
            ref = model(torch.from_numpy(check)).numpy()
        from ..backends.onnxruntime import OrtRunner

        onnx_runner = OrtRunner(str(onnx_path), BackendOptions(threads=threads), name=str(onnx_path))
        got = np.concatenate([onnx_runner.infer(check[k:k + 1]) for k in range(len(check))])
        diff = float(np.max(np.abs(got - ref)))
        if not diff <= FP32_TOLERANCE:
            raise EdgedynError(f"{label}: exported ONNX differs from PyTorch by {diff:.2e} (max abs, > {FP32_TOLERANCE:g})")
        files = {"onnx": onnx_path}
        source = onnx_path
        if precision == "int8":
            spec_json = spec.to_json()
            reused = cache.reuse_from(out, spec_json, i)
            source = quantize_qdq(onnx_path, tmp / f"subnet{i}.int8.onnx", calib_x, cache.ranges_path(i))
            cache.record(spec_json, i, reused)
            files["qdq"] = source
            files["calib_ranges"] = cache.ranges_path(i)
        artifact = be.build(source, tmp / f"subnet{i}{suffix}")
        files = {"model": Path(artifact), **files}
        fp16 = tmp / f"subnet{i}.fp16.onnx"
        if fp16.is_file():
            files["onnx_fp16"] = fp16

        accuracy: dict[str, Any] = {"test_fp32": float(np.mean(ref_pred == y_test)), "n_test": int(len(y_test)),
                                    "holdout_fp32": holdout_acc[spec] if len(y_hold) else None,
                                    "n_holdout": int(len(y_hold)),
                                    "search_test": sub.test_accuracy, "search_holdout": sub.holdout_accuracy}
        if execute:
            runner = be.load(artifact, shape)
            runner.activate()
            if precision == "fp32":
                got = np.concatenate([runner.infer(check[k:k + 1]) for k in range(len(check))])
                diff = float(np.max(np.abs(got - ref)))
                if not diff <= FP32_TOLERANCE:
                    raise EdgedynError(f"{label}: built {backend} model differs from PyTorch by {diff:.2e} "
                                       f"(max abs, > {FP32_TOLERANCE:g})")
                accuracy["max_abs_diff"] = diff
            pred = _predict_all(runner, x_test)
            accuracy["test"] = float(np.mean(pred == y_test))
            accuracy["agreement"] = float(np.mean(pred == ref_pred))
            accuracy["delta"] = accuracy["test"] - accuracy["test_fp32"]
            runners.append(runner)
        else:
            accuracy["test"] = None
            accuracy["max_abs_diff_onnx"] = diff
            if precision == "int8":  # the same QDQ graph on ONNX Runtime (CPU): an estimate until run on the GPU
                qdq_runner = OrtRunner(str(source), BackendOptions(threads=threads), name=str(source))
                pred = _predict_all(qdq_runner, x_test)
                accuracy["qdq_onnxruntime_test"] = float(np.mean(pred == y_test))
                accuracy["qdq_onnxruntime_agreement"] = float(np.mean(pred == ref_pred))
        predicted = None
        if lat_table is not None:
            predicted = float(lat_table.predict(net, spec))
        elif search_cost and run.cost_unit == "ms" and sub.cost is not None and precision == "fp32":
            predicted = float(sub.cost)  # the search's own latency cost (an fp32 table)
        records.append(SubnetRecord(index=i, spec=spec, files={k: v for k, v in files.items()}, macs=int(sub.macs),
                                    params=int(sub.params), predicted_ms=predicted, accuracy=accuracy,
                                    budget=sub.budget, budgets=[sub.budget] if sub.budget else []))
        by_spec[spec] = records[-1]
        bar.update()

    if runners:
        if backend == "onnxruntime" and be.options.device == "cpu":
            from ..device import busy_before_timing

            busy = busy_before_timing(log.warning)
            if busy is not None:
                device["cpu_busy_before_measure"] = busy
        with Progress(desc=f"deploy: timing {len(runners)} sub-nets", bar=False, disable=bar.disabled):
            measured = measure_runners(runners, iters=measure_iters)
        for rec, stats in zip(records, measured):
            rec.measured = stats
        for r in runners:
            r.deactivate()
    else:
        notes.append(f"{backend} artifacts were built but not executed here (no CUDA GPU): "
                     "latency and accuracy of the built engines are unmeasured")

    checks = deploy_checks(records)
    for problem in checks.get("problems", []):
        log.warning("%s", problem)

    shared: dict[str, Path] = {}
    if cache is not None:
        shared["calib_cache"] = cache.save()
    timing = tmp / "timing.cache"
    if timing.is_file():
        shared["timing_cache"] = timing
    for rec in records:
        rec.files = {role: file_record(tmp, Path(p)) for role, p in rec.files.items()}
    return Manifest(
        device=device,
        fingerprint=device_fingerprint(device),
        backend={"name": backend, "version": version},
        precision=precision,
        threads=threads,
        input={"name": "input", "shape": list(shape), "dtype": "float32"},
        subnets=records,
        model={"name": net.name, "signature": net.signature(), "config": net.config()},
        run={"path": str(run.path), "subnets_sha256": _sha(run.path / "subnets.json"),
             "weights_sha256": _sha(run.path / "weights.pt")},
        table=str(table_path) if table_path is not None else None,
        calibration=None if cache is None else {"source": calib_source, "samples": int(len(calib_x)),
                                                "data_sha256": cache.digest, "method": "MinMax",
                                                "cache": CALIB_CACHE_NAME},
        files={role: file_record(tmp, p) for role, p in shared.items()},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
        checks=checks,
    )


def dominated(subnets: Sequence[Any], accuracy: dict[int, float]) -> dict[int, int]:
    """Search picks no more accurate than a cheaper pick: index -> the cheaper pick serving it.

    ``accuracy`` is each pick's fp32 accuracy on deploy's evaluation (test) split, the
    accuracy the runtime selector ranks sub-nets by: the selector runs the most accurate
    sub-net that fits a budget, and a cheaper pick fits every budget a dominated one fits,
    so the dominated one would never run. Picks are ordered by MACs (they are nested).
    """
    out: dict[int, int] = {}
    best = None
    for s in sorted(subnets, key=lambda s: (s.macs, s.index)):
        if best is not None and accuracy[s.index] <= accuracy[best.index]:
            out[s.index] = best.index
        else:
            best = s
    return out


#: A deployed sub-net's measured median may differ from the table's prediction by this much.
PREDICTION_TOLERANCE = 0.10


def deploy_checks(records: Sequence[SubnetRecord]) -> dict[str, Any]:
    """What deploy verifies of the measured sub-nets (recorded in the manifest, warned about).

    - every measured median within ``PREDICTION_TOLERANCE`` of the table's prediction;
    - from the smallest sub-net to the largest (by MACs; the searched sub-nets are nested),
      measured latency and test accuracy both rise strictly.
    """
    out: dict[str, Any] = {"problems": []}
    measured = [r for r in records if r.measured and r.measured.get("median") is not None]
    errors = {r.index: r.measured["median"] / r.predicted_ms - 1.0 for r in measured if r.predicted_ms}
    if errors:
        out["prediction_error"] = {str(i): round(e, 4) for i, e in errors.items()}
        out["prediction_within_10pct"] = all(abs(e) <= PREDICTION_TOLERANCE for e in errors.values())
        for i, e in errors.items():
            if abs(e) > PREDICTION_TOLERANCE:
                out["problems"].append(f"sub-net {i}: measured latency is {100 * e:+.1f}% off the table's "
                                       f"prediction (tolerance {100 * PREDICTION_TOLERANCE:.0f}%)")
    ordered = sorted(measured, key=lambda r: (r.macs, r.index))
    acc = [r.accuracy.get("test") for r in ordered]
    if len(ordered) > 1:
        lat = [r.measured["median"] for r in ordered]
        out["latency_rising"] = all(a < b for a, b in zip(lat, lat[1:]))
        for lo, hi in zip(ordered, ordered[1:]):
            if not lo.measured["median"] < hi.measured["median"]:
                out["problems"].append(f"sub-net {hi.index} is larger than sub-net {lo.index} but not slower "
                                       f"({hi.measured['median']:.3f} vs {lo.measured['median']:.3f} ms)")
        if all(a is not None for a in acc):
            out["accuracy_rising"] = all(a < b for a, b in zip(acc, acc[1:]))
            for lo, hi in zip(ordered, ordered[1:]):
                if not lo.accuracy["test"] < hi.accuracy["test"]:
                    out["problems"].append(
                        f"sub-net {hi.index} is larger than sub-net {lo.index} but not more accurate "
                        f"({100 * hi.accuracy['test']:.2f}% vs {100 * lo.accuracy['test']:.2f}%)")
    return out


def _sha(path: Path) -> str | None:
    from .manifest import sha256_file

    return sha256_file(path) if path.is_file() else None
