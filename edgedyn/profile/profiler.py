"""``edgedyn profile``: measure a model's blocks on this device and build a LatencyTable.

Phases: (1) block grid, measured interleaved in chunks (a subset when ``subsample > 1``,
the rest interpolated), each block in the layout the backend runs it in inside a network
(:mod:`~edgedyn.profile.layout`), plus the fixed cost of one backend call; (2)
whole-network calibration on ``calibrate`` sub-nets measured end to end
(:mod:`~edgedyn.profile.calibration`: a linear model over the block sum and memory
terms, then per-block corrections fitted jointly where cross-validation says they help);
(3) optional validation on K other random sub-nets (MAPE, share within 10%, Spearman of
the table and of FLOPs).

Progress is checkpointed to ``<out>.partial.json``; ``resume=True`` continues from it. A
fresh profile refuses to start over an existing partial unless ``overwrite=True``.

Build folders live in the temporary directory as ``edgedyn-<kind>-<pid>-XXXX``; each run
first removes those that a killed run (its pid no longer alive) left behind.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_json, load_json
from ..backends import BackendOptions, OnnxBackend
from ..errors import ArtifactError, EdgedynError
from ..progress import Progress
from .blocks import BlockKey, all_keys
from .calibration import FOLDS, Calibration, fit_calibration
from .layout import as_run
from .measure import BLOCKS, WHOLE_NET, measure_calls, measure_interleaved
from .table import Entry, LatencyTable

PARTIAL_SCHEMA = "edgedyn.profile_partial/1"
DEVICE_BACKEND_DEFAULTS = {"cpu": ("onnxruntime", "fp32"), "cuda": ("tensorrt", "fp16"), "jetson": ("tensorrt", "fp16")}
CALIBRATION_SEED = 10_000
FLOOR_P = 0.5  # calibration's floor-heavy sub-nets: each group at its floor with this probability
VALIDATION_SEED = 20_000
#: Kinds of build folder the profiler makes in the temporary directory (``edgedyn-<kind>-<pid>-XXXX``).
TEMP_KINDS = ("subnets", "blocks", "threads")
_TEMP_NAME = re.compile(r"^edgedyn-(?P<kind>[a-z0-9]+)-(?P<pid>[0-9]+)-.+$")


class ProfileInterrupted(EdgedynError):
    """A profile stopped by Ctrl-C; its progress is kept in the partial file (the CLI exits 130)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # unknown: never remove what might be in use
    return True


def owned_tempdir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary build folder named ``edgedyn-<kind>-<this pid>-XXXX`` (see :func:`remove_stale_tempdirs`)."""
    return tempfile.TemporaryDirectory(prefix=f"edgedyn-{kind}-{os.getpid()}-")


def remove_stale_tempdirs(root: str | os.PathLike | None = None, kinds: tuple[str, ...] = TEMP_KINDS) -> list[Path]:
    """Remove ``edgedyn-<kind>-<pid>-*`` folders in ``root`` (default: the temporary directory)
    whose process is gone (a SIGKILLed run's); never a live process's, nor another user's.
    Returns the folders removed."""
    root = Path(root if root is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for path in entries:
        m = _TEMP_NAME.match(path.name)
        if m is None or m["kind"] not in kinds:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_symlink() or not path.is_dir() or (uid is not None and st.st_uid != uid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


@dataclass
class ProfileConfig:
    model: str
    out: Path
    input_size: int | None = None
    num_classes: int | None = None
    device: str = "cpu"
    backend: str | None = None  # default follows the device
    precision: str | None = None
    batch: int = 1
    threads: int | None = None
    channel_groups: int = 8
    group_size: int | None = None
    min_groups: int = 1
    subsample: int | None = None  # measure every N-th width per axis; default 1, tensorrt 2
    calibrate: int = 144  # whole sub-nets: enough for per-block corrections (calibration.py)
    validate: int = 0
    roofline_device: Path | None = None
    resume: bool = False
    merge: bool = False
    overwrite: bool = False  # a fresh profile may replace an existing <out>.partial.json
    chunk: int = 512  # blocks timed together: a large pool leaves each block as cold as in a network
    passes: int = 3  # each block is timed in this many differently shuffled pools

    def resolved(self) -> ProfileConfig:
        backend, precision = DEVICE_BACKEND_DEFAULTS.get(self.device, ("onnxruntime", "fp32"))
        cfg = ProfileConfig(**{**asdict(self), "out": Path(self.out)})
        cfg.backend = self.backend or backend
        cfg.precision = self.precision or precision
        if cfg.subsample is None:
            cfg.subsample = 2 if cfg.backend == "tensorrt" else 1
        if cfg.device not in DEVICE_BACKEND_DEFAULTS:
            raise EdgedynError(f"unknown device {cfg.device!r}; choose cpu, cuda or jetson")
        if cfg.batch < 1 or cfg.subsample < 1 or cfg.calibrate < 0 or cfg.validate < 0 or cfg.passes < 1:
            raise EdgedynError("batch, subsample and passes must be >= 1; calibrate and validate >= 0")
        if cfg.threads is not None and cfg.threads < 1:
            raise EdgedynError(f"threads must be >= 1, got {cfg.threads}")
        if cfg.resume and cfg.overwrite:
            raise EdgedynError("give --resume or --overwrite, not both")
        return cfg

    @property
    def partial_path(self) -> Path:
        out = Path(self.out)
        return out.with_name(out.name + ".partial.json")

    def check_paths(self) -> None:
        """Refuse, before anything is measured or written, an ``out`` that cannot be written
        and a fresh profile that would overwrite an interrupted one's progress."""
        out = Path(self.out)
        if out.is_dir():
            raise EdgedynError(f"{out}: is a folder; --out must be a table file (JSON)")
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise EdgedynError(f"{out}: {parent} is a file, not a folder; choose another --out")
                break
        partial = self.partial_path
        if partial.exists() and not self.resume and not self.overwrite:
            raise EdgedynError(f"{partial}: an interrupted profile's progress is there; continue it with "
                               "--resume or discard it with --overwrite")


def _subsample_keys(keys: list[BlockKey], step: int) -> tuple[list[BlockKey], list[BlockKey]]:
    """Split keys into (measure, interpolate): every ``step``-th width per axis plus the ends."""
    if step <= 1:
        return list(keys), []
    by_geom: dict[BlockKey, list[BlockKey]] = {}
    for k in keys:
        by_geom.setdefault(k.with_channels(0, 0), []).append(k)
    measure, interp = [], []
    for ks in by_geom.values():
        cins, couts = sorted({k.c_in for k in ks}), sorted({k.c_out for k in ks})
        keep_in = {c for i, c in enumerate(cins) if i % step == 0 or i == len(cins) - 1}
        keep_out = {c for i, c in enumerate(couts) if i % step == 0 or i == len(couts) - 1}
        for k in ks:
            (measure if k.c_in in keep_in and k.c_out in keep_out else interp).append(k)
    return measure, interp


def interpolate(entries: dict[BlockKey, Entry], wanted: list[BlockKey]) -> dict[BlockKey, Entry]:
    """Fill ``wanted`` keys by (bi)linear interpolation over channel counts of measured neighbours."""
    from scipy.interpolate import RegularGridInterpolator

    out: dict[BlockKey, Entry] = {}
    by_geom: dict[BlockKey, dict[tuple[int, int], float]] = {}
    for k, e in entries.items():
        if e.source == "measured":
            by_geom.setdefault(k.with_channels(0, 0), {})[(k.c_in, k.c_out)] = e.ms
    for k in wanted:
        pts = by_geom.get(k.with_channels(0, 0))
        if not pts:
            raise EdgedynError(f"cannot interpolate block {k.to_str()}: nothing measured with its geometry")
        if all(ci == co for ci, co in pts):  # pools, adds, depthwise: one channel axis
            xs = sorted(p[0] for p in pts)
            out[k] = Entry(float(np.interp(k.c_in, xs, [pts[(x, x)] for x in xs])), "interpolated")
            continue
        cins, couts = sorted({p[0] for p in pts}), sorted({p[1] for p in pts})
        grid = np.array([[pts.get((ci, co), np.nan) for co in couts] for ci in cins])
        if np.isnan(grid).any():
            raise EdgedynError(f"cannot interpolate block {k.to_str()}: its measured grid is incomplete")
        axes, values, point = [], grid, []
        if len(cins) > 1:
            axes.append(np.array(cins, float)); point.append(k.c_in)
        else:
            values = values[0]
        if len(couts) > 1:
            axes.append(np.array(couts, float)); point.append(k.c_out)
        else:
            values = values[..., 0] if values.ndim > 1 else values
        ms = float(RegularGridInterpolator(axes, values)(np.array([point]))[0]) if axes else float(values)
        out[k] = Entry(ms, "interpolated")
    return out


def share_as_run(entries: dict[BlockKey, Entry]) -> int:
    """Give measured keys that run the same computation (:func:`~edgedyn.profile.layout.as_run`)
    the mean of their timings; returns how many entries were pooled.

    Their timings differ only by noise: a cold call of a 5-50 us block moves by several
    microseconds with its neighbours in the pool, and on resnet20 that noise had put
    16 -> 16-channel convs below the call's fixed cost (entries of 0 us) while 16 -> 8 read
    8 us more. Pooling removes noise that the search would otherwise exploit. Idempotent.
    """
    groups: dict[BlockKey, list[BlockKey]] = {}
    for k, e in entries.items():
        if e.source == "measured":
            groups.setdefault(as_run(k), []).append(k)
    pooled = 0
    for ks in groups.values():
        if len(ks) < 2:
            continue
        ms = float(np.mean([entries[k].ms for k in ks]))
        for k in ks:  # each keeps its own spread (p10 / p90: its lowest and highest pass)
            entries[k] = dataclasses.replace(entries[k], ms=ms)
        pooled += len(ks)
    return pooled


class Profiler:
    """Runs one profile. ``log`` receives one-line progress messages."""

    def __init__(self, cfg: ProfileConfig, log: Callable[[str], None] = print, progress: bool = True) -> None:
        from ..dynamic import DynamicNet

        self.cfg = cfg.resolved()
        self.log = log
        self.progress = progress
        c = self.cfg
        self.net = DynamicNet.from_name(c.model, num_classes=c.num_classes, input_size=c.input_size,
                                        channel_groups=c.channel_groups, group_size=c.group_size,
                                        min_groups=c.min_groups)
        self.partial_path = c.partial_path
        self.options = BackendOptions(device=c.device, precision=c.precision, threads=c.threads)
        self.block_passes: dict[str, list[float]] = {}  # key -> median of each pass so far (resume)
        self.thread_choice: dict | None = None  # timings behind an automatic thread count

    # -- setup ------------------------------------------------------------------------
    def _new_table(self) -> LatencyTable:
        from ..device import device_fingerprint, device_info

        c = self.cfg
        if c.backend == "roofline":
            from ..backends.roofline import RooflineDevice

            dev = RooflineDevice.load(self._roofline_path())
            info = {"kind": c.device, "name": dev.name, "fingerprint": f"{c.device}:{dev.name}",
                    "roofline": dev.to_json()}
            return LatencyTable(device=info, backend={"name": "roofline", "version": "1"}, precision=c.precision,
                                batch=c.batch, measured=False, sources=list(dev.sources), created=_now())
        backend = self._backend()
        info = device_info(c.device)
        info["fingerprint"] = device_fingerprint(info)
        if hasattr(os, "getloadavg"):
            info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
        from ..device import busy_before_timing

        busy = busy_before_timing(self.log)
        if busy is not None:
            info["cpu_busy_at_start"] = busy
        meta = {"name": c.backend, "version": backend.version(), "threads": self.options.threads}
        if self.thread_choice is not None:
            meta["thread_choice"] = self.thread_choice
        return LatencyTable(device=info, backend=meta,
                            precision=c.precision, batch=c.batch, measured=True, created=_now(),
                            layout=backend.layout())

    def _roofline_path(self) -> Path:
        if self.cfg.roofline_device is not None:
            return Path(self.cfg.roofline_device)
        return Path(__file__).resolve().parents[2] / "profiles" / "devices" / "jetson_agx_orin_64gb.json"

    def _start(self) -> tuple[LatencyTable, dict[str, dict]]:
        c = self.cfg
        c.check_paths()  # before anything existing is touched
        for stale in remove_stale_tempdirs():
            self.log(f"removed {stale} (left behind by a killed run)")
        existing = partial = where = None
        if c.resume and self.partial_path.is_file():
            partial = load_json(self.partial_path, PARTIAL_SCHEMA)
            existing, where = LatencyTable.load_partial(partial["table"], self.partial_path), self.partial_path
        elif c.merge and c.out.is_file():
            existing, where = LatencyTable.load(c.out), c.out
        if existing is not None and existing.backend.get("name") != c.backend:
            raise ArtifactError(f"{where}: field 'backend.name' is {existing.backend.get('name')!r}, "
                                f"asked for {c.backend!r}")
        self._set_threads(existing, where)
        fresh = self._new_table()
        if existing is None:
            if c.resume:
                self.log(f"nothing to resume at {self.partial_path}; starting afresh")
            elif c.overwrite and self.partial_path.exists():  # every input checked: now discard it
                self.partial_path.unlink()
                self.log(f"discarded {self.partial_path} (--overwrite)")
            return fresh, {}
        existing.check_matches(device=c.device, precision=c.precision, batch=c.batch,
                               fingerprint=fresh.device.get("fingerprint"))
        _check_layout(existing, fresh, where)
        if partial is None:  # merge
            return existing, {}
        whole = partial.get("whole", {})
        self.block_passes = {k: list(v) for k, v in partial.get("block_passes", {}).items()}
        self.log(f"resuming: {len(existing.entries)} blocks and {len(whole)} sub-nets already measured")
        return existing, whole

    def _set_threads(self, existing: LatencyTable | None, where: Path | None) -> None:
        """The CPU thread count (ONNX Runtime): asked for, the existing table's, or chosen by timing."""
        c = self.cfg
        if c.backend != "onnxruntime" or c.device != "cpu":
            return
        have = existing.backend.get("threads") if existing is not None else None
        if c.threads is not None:
            if have is not None and have != c.threads:
                raise ArtifactError(f"{where}: field 'backend.threads' is {have}, but {c.threads} threads were "
                                    "asked for; a table holds for one thread count")
            threads = c.threads
        elif have is not None:
            threads = int(have)
        else:
            threads, self.thread_choice = self._choose_threads()
        self.options = dataclasses.replace(self.options, threads=threads)

    def _choose_threads(self) -> tuple[int, dict | None]:
        """Time the reference sub-nets at 1, 2, 4, ... threads; keep the fewest within tolerance."""
        from ..backends.onnxruntime import default_threads
        from ..export import export_many
        from .threads import TOLERANCE, choose_threads, thread_candidates

        candidates = thread_candidates(default_threads())
        if len(candidates) == 1:
            return candidates[0], None
        net = self.net
        names = ["smallest", "half", "full"]
        specs = [net.min_spec(), net.uniform_spec(0.5), net.full_spec()]
        example = self._example()
        self.log(f"threads: timing {', '.join(names)} sub-nets at {', '.join(map(str, candidates))} threads")
        backends = [self._backend(threads=t) for t in candidates]
        with owned_tempdir("threads") as tmp:
            modules = [net.extract(s) for s in specs]
            if isinstance(backends[0], OnnxBackend):  # export once, a session per thread count
                paths = export_many([(m, example, Path(tmp) / f"{n}.onnx") for m, n in zip(modules, names)])
                runners = [be.from_onnx(p, example) for be in backends for p in paths]
            else:
                runners = [be.prepare(m, example, Path(tmp)) for be in backends for m in modules]
            stats = measure_calls(runners, WHOLE_NET, seed=1)
            del runners
        medians = {t: [stats[i * len(specs) + j].median for j in range(len(specs))] for i, t in enumerate(candidates)}
        threads = choose_threads(medians)
        self.log("threads: " + "; ".join(f"{t}: " + ", ".join(f"{m:.4g}" for m in ms) + " ms"
                                         for t, ms in medians.items()) + f" -> {threads}")
        return threads, {"reference": names, "median_ms": {str(t): [round(m, 5) for m in ms]
                                                             for t, ms in medians.items()},
                         "tolerance": TOLERANCE, "chosen": threads}

    def _checkpoint(self, table: LatencyTable, whole: dict[str, dict]) -> None:
        atomic_write_json(self.partial_path, {"schema": PARTIAL_SCHEMA, "config": {k: str(v) for k, v in
                                                                                asdict(self.cfg).items()},
                                              "table": table.to_dict(), "whole": whole,
                                              "block_passes": self.block_passes})

    # -- phases -----------------------------------------------------------------------
    def run(self) -> LatencyTable:
        c = self.cfg
        t_start = time.perf_counter()
        table, whole = self._start()
        try:
            self._blocks(table, whole)
            if table.measured:
                if c.validate and c.calibrate >= 2:
                    # one interleaved batch: calibration and validation see the same drift
                    self._measure_specs(self._calibration_specs() + self._validation_specs(), whole, table,
                                        "calibration + validation")
                self._calibrate(table, whole)
                if c.validate:
                    self._validate(table, whole)
        except KeyboardInterrupt:
            self._checkpoint(table, whole)
            raise ProfileInterrupted(f"interrupted; progress kept in {self.partial_path}; "
                                     "continue with --resume") from None
        except BaseException:
            self._checkpoint(table, whole)
            raise
        table.backend["profile_seconds"] = round(time.perf_counter() - t_start, 1)
        table.save(c.out)
        self.partial_path.unlink(missing_ok=True)
        return table

    def _blocks(self, table: LatencyTable, whole: dict) -> None:
        c = self.cfg
        keys = all_keys(self.net, c.batch, c.precision, table.layout)
        if c.backend == "roofline":
            from ..backends.roofline import RooflineDevice, block_latency_ms

            dev = RooflineDevice.load(self._roofline_path())
            for k in keys:
                table.entries.setdefault(k, Entry(block_latency_ms(dev, k), "roofline"))
            self.log(f"roofline: {len(keys)} block entries from {dev.name}")
            return
        if table.layout.kind != "plain":
            self.log(f"layout {table.layout.tag}: blocks timed in the layout they run in inside the network"
                     + ("" if table.layout.applies(self.net) else
                        f" (not modelled for {self.net.name}: its blocks stay plain)"))
        measure, interp = _subsample_keys(keys, c.subsample)
        todo = [k for k in measure if table.entries.get(k, Entry(0, "interpolated")).source != "measured"]
        self.log(f"{self.net.name}: {len(keys)} distinct blocks; measuring {len(todo)} in {c.passes} passes "
                 f"({len(measure) - len(todo)} already in the table), interpolating {len(interp)}")
        done = self.block_passes
        bar = Progress(total=len(todo) * c.passes, initial=sum(min(len(done.get(k.to_str(), [])), c.passes) for k in todo),
                       desc="blocks", unit="blk", disable=not self.progress, log=self.log)
        protocol = dataclasses.replace(BLOCKS, min_reps=-(-BLOCKS.min_reps // c.passes),
                                       max_reps=-(-BLOCKS.max_reps // c.passes), target_ms=BLOCKS.target_ms / c.passes)
        last_ckpt = time.monotonic()
        overheads = []
        # a build directory for backends that compile blocks to files (TensorRT); removed after
        with owned_tempdir("blocks") as tmp, bar:
            make = self._block_runner_factory(Path(tmp))
            empty = self._backend().overhead_runner()
            for p in range(c.passes):
                # every pass mixes all kinds of blocks in new pools: each block is timed among
                # several different cache neighbours, and at several moments (drift)
                left = [k for k in todo if len(done.get(k.to_str(), [])) <= p]
                left = [left[i] for i in np.random.default_rng(p).permutation(len(left))]
                for i in range(0, len(left), c.chunk):
                    chunk = left[i:i + c.chunk]
                    runners = [make(k) for k in chunk] + ([empty] if empty is not None else [])
                    stats = measure_interleaved(runners, protocol, seed=p * 100_003 + i)
                    for k, st in zip(chunk, stats):
                        done.setdefault(k.to_str(), []).append(st.median)
                    if empty is not None:
                        overheads.append(stats[-1].median)
                    del runners
                    bar.update(len(chunk))
                    if time.monotonic() - last_ckpt > 10:
                        self._checkpoint(table, whole)
                        last_ckpt = time.monotonic()
        for k in todo:
            per_pass = np.array(done.pop(k.to_str()))
            # the median over passes; p10 / p90 hold the lowest and highest pass (spread across pools)
            table.entries[k] = Entry(float(np.median(per_pass)), "measured", float(per_pass.min()),
                                     float(per_pass.max()), None, len(per_pass))
        pooled = share_as_run(table.entries)
        if pooled:
            self.log(f"{pooled} blocks share their timing with blocks ONNX Runtime runs on the same padded shapes")
        if overheads:  # measured alongside every chunk; a resumed or merged run keeps the old one
            table.call_overhead_ms = float(np.median(overheads))
            self.log(f"fixed cost of one {c.backend} call: {table.call_overhead_ms * 1e3:.1f} us "
                     "(in every block entry; paid once per sub-net)")
        if interp:
            table.entries.update(interpolate(table.entries, [k for k in interp
                                                             if table.entries.get(k) is None
                                                             or table.entries[k].source != "measured"]))
        self._checkpoint(table, whole)

    def _backend(self, **options):
        """The profiled backend; ``options`` change its :class:`BackendOptions` (e.g. ``threads``)."""
        from ..backends import get_backend

        return get_backend(self.cfg.backend, dataclasses.replace(self.options, **options))

    def _block_runner_factory(self, workdir: Path):
        backend = self._backend()
        return lambda k: backend.block_runner(k, workdir)

    def _measure_specs(self, specs, whole: dict, table: LatencyTable, label: str) -> list[float]:
        """End-to-end latency (ms) of whole sub-nets, measured interleaved, as deploy runs them."""
        todo = [s for s in specs if s.to_json() not in whole]
        if todo:
            backend = self._backend()
            example = self._example()
            runners = []
            with owned_tempdir("subnets") as tmp:
                workdirs = [Path(tmp) / str(j) for j in range(len(todo))]
                for wd in workdirs:
                    wd.mkdir()
                with Progress(total=len(todo), desc=f"{label} build", disable=not self.progress,
                              log=self.log) as bar:
                    runners = backend.prepare_many([self.net.extract(s) for s in todo], example, workdirs,
                                                   progress=lambda: bar.update(1))
                self.log(f"{label}: timing {len(runners)} sub-nets end to end (interleaved)")
                with Progress(desc=f"{label}: timing {len(runners)} sub-nets", bar=False, disable=not self.progress,
                              log=self.log):  # off a terminal: a line every 30 s while it runs
                    stats = measure_calls(runners, WHOLE_NET, seed=len(whole))
                for s, st in zip(todo, stats):
                    whole[s.to_json()] = st.to_dict()
                del runners
            self._checkpoint(table, whole)
        return [whole[s.to_json()]["ms"] for s in specs]

    def _example(self):
        import torch

        return torch.zeros(self.cfg.batch, *self.net.input_shape[1:])

    def _calibration_specs(self):
        """The smallest, the full and three uniform sub-nets, then random ones; one random
        sub-net in three has each group at its floor with probability 1/2 (the search's
        picks are thin: without these, the table read sub-nets with 2-channel inner layers
        5-11 % slow, and predicted random ones no better)."""
        net = self.net
        n = max(self.cfg.calibrate, 2)
        specs = list(dict.fromkeys([net.min_spec(), net.full_spec()] + [net.uniform_spec(r) for r in (0.25, 0.5, 0.75)]))
        i = 0
        while len(specs) < n:
            s = net.random_spec(CALIBRATION_SEED + i, floor_p=FLOOR_P if i % 3 == 2 else 0.0)
            i += 1
            if s not in specs:
                specs.append(s)
        return specs[:n]

    def _calibrate(self, table: LatencyTable, whole: dict) -> None:
        if self.cfg.calibrate < 2:
            self.log("calibration skipped (needs >= 2 sub-nets); predictions are plain block sums")
            return
        specs = self._calibration_specs()
        measured = np.array(self._measure_specs(specs, whole, table, "calibration"))
        self._fit_calibration(table, specs, measured)

    def _fit_calibration(self, table: LatencyTable, specs: list, measured: np.ndarray) -> None:
        """Fit the model's calibration on whole sub-nets ``specs`` measured at ``measured`` ms."""
        net = self.net
        spec_keys = [table.keys(net, s) for s in specs]
        feats = [table.features_of_keys(net, ks) for ks in spec_keys]
        keys = sorted({k for ks in spec_keys for k in ks})
        col = {k: j for j, k in enumerate(keys)}
        counts = np.zeros((len(specs), len(keys)))
        for i, ks in enumerate(spec_keys):
            for k in ks:
                counts[i, col[k]] += 1
        # the prior's width follows each block's timing as measured, the call's fixed cost
        # included (a block timed at about that cost has a near-zero entry, not a certain one)
        timed = np.array([table.entries[k].ms for k in keys])
        fit = fit_calibration(feats, measured, counts, timed)
        corrections = {} if fit.corrections is None else {
            k: float(d) for k, d in zip(keys, fit.corrections) if abs(d) > 1e-7}
        points = [{"widths": list(s.widths), **{k: round(float(v), 5) for k, v in f.items()},
                   "measured_ms": round(float(m), 4)} for s, f, m in zip(specs, feats, measured)]
        table.calibration[net.arch_signature()] = Calibration(
            f"{net.name}@{net.input_shape[-1]}", fit.coef, fit.offset_ms, len(specs), points, fit.cv_mape,
            corrections, fit.prior_rel)
        terms = " + ".join(f"{v:.4g} x {k}" for k, v in fit.coef.items())
        fixed = (f"; per-block corrections on {len(corrections)} blocks (prior width {fit.prior_rel:g})"
                 if corrections else "; no per-block corrections (they did not cross-validate)")
        self.log(f"calibration on {len(specs)} sub-nets: measured = {terms} + {fit.offset_ms:.4f} ms{fixed} "
                 f"({FOLDS}-fold MAPE {fit.cv_mape:.2f}%)")

    def _validation_specs(self):
        """K random sub-nets, none of them used for calibration."""
        cal = set(self._calibration_specs())
        specs, i = [], 0
        while len(specs) < self.cfg.validate:
            s = self.net.random_spec(VALIDATION_SEED + i)
            i += 1
            if s not in cal and s not in specs:
                specs.append(s)
        return specs

    def _validate(self, table: LatencyTable, whole: dict) -> None:
        specs = self._validation_specs()
        measured = np.array(self._measure_specs(specs, whole, table, "validation"))
        self._score_validation(table, specs, measured)

    def _score_validation(self, table: LatencyTable, specs: list, measured: np.ndarray) -> None:
        """The table's accuracy on unseen sub-nets ``specs`` measured at ``measured`` ms."""
        from scipy.stats import spearmanr

        net = self.net
        pred = np.array([table.predict(net, s) for s in specs])
        macs = np.array([net.macs(s) for s in specs], float)
        err = np.abs(pred - measured) / measured
        result = {
            "model": f"{net.name}@{net.input_shape[-1]}",
            "k": len(specs),
            "mape": round(float(err.mean() * 100), 3),
            "within_10pct": round(float((err <= 0.10).mean() * 100), 2),
            "spearman_table": _rank_corr(spearmanr, pred, measured),
            "spearman_flops": _rank_corr(spearmanr, macs, measured),
            "points": [{"widths": list(s.widths), "predicted_ms": round(float(p), 4),
                        "measured_ms": round(float(m), 4), "mmacs": round(float(a) / 1e6, 3)}
                       for s, p, m, a in zip(specs, pred, measured, macs)],
        }
        table.validation[net.arch_signature()] = result
        fmt = lambda r: "n/a" if r is None else f"{r:.4f}"
        self.log(f"validation on K={result['k']} unseen sub-nets: MAPE {result['mape']:.2f}%  "
                 f"within 10%: {result['within_10pct']:.1f}%  Spearman table {fmt(result['spearman_table'])}  "
                 f"Spearman FLOPs {fmt(result['spearman_flops'])}")


    def refit(self) -> LatencyTable:
        """Re-derive the table at ``out`` from the timings it holds, measuring nothing.

        Pools padding-equivalent blocks (:func:`share_as_run`), fits the model's calibration
        again on its stored whole sub-nets and scores its stored validation sub-nets: what an
        upgrade of edgedyn's table model needs, without the device (a Jetson) at hand.
        """
        from ..dynamic import SubnetSpec

        path = Path(self.cfg.out)
        table = LatencyTable.load(path)
        net = self.net
        sig = net.arch_signature()
        cal = table.calibration.get(sig)
        if cal is None or len(cal.points) < 2:
            have = sorted(c.model for c in table.calibration.values()) or ["none"]
            raise ArtifactError(f"{path}: field 'calibration' holds no measured sub-nets of {net.name}@"
                                f"{net.input_shape[-1]} with these channel groups (it has: {', '.join(have)}); "
                                "nothing to refit: profile it")
        table.check_model(net)
        pooled = share_as_run(table.entries)
        self.log(f"{path}: {pooled} blocks pooled with blocks run on the same padded shapes")

        def points(rows: list, where: str) -> tuple[list, np.ndarray]:
            specs, ms = [], []
            for i, r in enumerate(rows):
                at = f"{where}[{i}]"
                m = r.get("measured_ms") if isinstance(r, dict) else None
                if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < float("inf"):
                    raise ArtifactError(f"{path}: field '{at}.measured_ms' is {m!r}, expected a latency in ms > 0")
                try:
                    sp = SubnetSpec.from_dict(r, at)
                    net.check_spec(sp)
                except EdgedynError as err:
                    raise ArtifactError(f"{path}: field '{at}': {err}") from None
                specs.append(sp)
                ms.append(float(m))
            return specs, np.array(ms)

        self._fit_calibration(table, *points(cal.points, "calibration.points"))
        val = table.validation.get(sig)
        if val and val.get("points"):
            self._score_validation(table, *points(val["points"], "validation.points"))
        table.backend["refit"] = _now()
        table.save(path)
        return table


def _check_layout(table: LatencyTable, fresh: LatencyTable, path: Path) -> None:
    if table.layout != fresh.layout:
        raise ArtifactError(f"{path}: field 'layout' is {table.layout.tag!r}, this backend runs {fresh.layout.tag!r}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def profile(cfg: ProfileConfig, log: Callable[[str], None] = print, progress: bool = True) -> LatencyTable:
    """Profile ``cfg.model`` and write the table to ``cfg.out`` (see :class:`ProfileConfig`)."""
    return Profiler(cfg, log, progress).run()


def _rank_corr(spearmanr, a, b) -> float | None:
    """Spearman's rho rounded, or None where it is undefined (constant values: NaN, which JSON
    must not hold)."""
    rho = float(spearmanr(a, b).statistic)
    return round(rho, 4) if np.isfinite(rho) else None
