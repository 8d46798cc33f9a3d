"""``edgedyn profile``: measure a model's blocks on this device and build a LatencyTable.

Phases: (1) block grid, measured interleaved in chunks (a subset when ``subsample > 1``,
the rest interpolated), each block in the layout the backend runs it in inside a network
(:mod:`~edgedyn.blocks.layout`), plus the fixed cost of one backend call
(:mod:`~edgedyn.profile.block_timing`), or priced by an analytic backend (roofline); (2)
whole-network calibration on ``calibrate`` sub-nets measured end to end
(:mod:`~edgedyn.profile.calibration`: a linear model over the block sum and memory
terms, then per-block corrections fitted jointly where cross-validation says they help);
(3) optional validation on K other random sub-nets (MAPE, share within 10%, Spearman of
the table and of FLOPs; :mod:`~edgedyn.profile.fitting`).

The profiler knows backends only through their hooks (:class:`~edgedyn.backends.base.Backend`):
``measures`` / ``estimate_ms``, ``default_threads``, ``layout``, ``block_runner``,
``overhead_runner``, ``prepare_subnets`` (whole sub-nets; ONNX backends derive their graphs
from one export, :mod:`~edgedyn.dynamic.onnx_derive`), ``device_info`` and ``sources``.

Progress is checkpointed to ``<out>.partial.json``; ``resume=True`` continues from it, once
its recorded settings are found to be this run's (:mod:`~edgedyn.profile.partial`). A fresh
profile refuses to start over an existing partial, or to write its table over a file that is
not a latency table, unless ``overwrite=True``. A run holds an exclusive lock on ``out``
(:func:`~edgedyn.locks.exclusive_lock`) from start to end.

Build folders live in the temporary directory as ``edgedyn-<kind>-<pid>-XXXX``; each run
first removes those that a killed run (its pid no longer alive) left behind
(:mod:`~edgedyn.profile.tempdirs`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts import atomic_write_json, load_json
from ..backends import Backend, BackendOptions
from ..blocks import all_keys
from ..errors import ArtifactError, EdgedynError
from ..locks import exclusive_lock
from ..progress import Progress
from .block_timing import BlockTiming
from .config import DEVICE_BACKEND_DEFAULTS, ProfileConfig
from .fitting import (
    CALIBRATION_SEED,
    FLOOR_P,
    VALIDATION_SEED,
    calibration_specs,
    fit_table_calibration,
    score_validation,
    validation_specs,
)
from .grid import interpolate, share_as_run, subsample_keys
from .measure import CALIBRATION, CALIBRATION_THOROUGH, measure_calls
from .partial import PARTIAL_SCHEMA, check_resume_settings
from .refit import refit_table
from .states import add_state_table, probe_specs, record_probes
from .table import Entry, LatencyTable, timestamp
from .tempdirs import TEMP_KINDS, owned_tempdir, pid_alive, remove_stale_tempdirs
from .threads import thread_candidates, time_thread_counts

if TYPE_CHECKING:
    from ..dynamic import SubnetSpec

# the names this module has always offered (the CLI, deploy, the demo and the tests import them from here)
__all__ = ["CALIBRATION_SEED", "DEVICE_BACKEND_DEFAULTS", "FLOOR_P", "PARTIAL_SCHEMA", "TEMP_KINDS",
           "VALIDATION_SEED", "ProfileConfig", "ProfileInterrupted", "Profiler", "interpolate", "owned_tempdir",
           "pid_alive", "profile", "remove_stale_tempdirs", "share_as_run", "subsample_keys"]

class ProfileInterrupted(EdgedynError):
    """A profile stopped by Ctrl-C; its progress is kept in the partial file (the CLI exits 130)."""


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
        extra = {} if c.roofline_device is None else {"roofline_device": str(c.roofline_device)}
        self.options = BackendOptions(device=c.device, precision=c.precision_name, threads=c.threads, extra=extra)
        self.block_passes: dict[str, list[float]] = {}  # key -> median of each pass so far (resume)
        self.thread_choice: dict | None = None  # timings behind an automatic thread count
        self.merge_into: LatencyTable | None = None  # --merge at another thread count: the table to add a state to

    # -- setup ------------------------------------------------------------------------
    def _backend(self, **options: Any) -> Backend:
        """The profiled backend; ``options`` change its :class:`BackendOptions` (e.g. ``threads``)."""
        from ..backends import get_backend

        return get_backend(self.cfg.backend_name, dataclasses.replace(self.options, **options))

    def _new_table(self) -> LatencyTable:
        c = self.cfg
        backend = self._backend()
        if not backend.measures:  # an analytic backend: its device file, no timing context
            return LatencyTable(device=backend.device_info(), backend={"name": c.backend, "version": backend.version()},
                                precision=c.precision_name, batch=c.batch, measured=False,
                                sources=backend.sources(), created=timestamp())
        from ..device import busy_before_timing, device_fingerprint

        info = backend.device_info()
        info["fingerprint"] = device_fingerprint(info)
        if hasattr(os, "getloadavg"):
            info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
        busy = busy_before_timing(self.log)
        if busy is not None:
            info["cpu_busy_at_start"] = busy
        meta: dict[str, Any] = {"name": c.backend, "version": backend.version(), "threads": self.options.threads}
        if self.thread_choice is not None:
            meta["thread_choice"] = self.thread_choice
        return LatencyTable(device=info, backend=meta, precision=c.precision_name, batch=c.batch, measured=True,
                            created=timestamp(), layout=backend.layout())

    def _start(self) -> tuple[LatencyTable, dict[str, dict]]:
        c = self.cfg
        c.check_paths()  # before anything existing is touched
        for stale in remove_stale_tempdirs():
            self.log(f"removed {stale} (left behind by a killed run)")
        existing: LatencyTable | None = None
        partial = where = None
        if c.resume and self.partial_path.is_file():
            partial = load_json(self.partial_path, PARTIAL_SCHEMA)
            check_resume_settings(partial, c, self.partial_path)  # before any of its timings is reused
            existing, where = LatencyTable.load_partial(partial["table"], self.partial_path), self.partial_path
        elif c.merge and c.out.is_file():
            existing, where = LatencyTable.load(c.out), c.out
        if c.merge and c.out.is_file() and c.threads is not None:
            target = existing if partial is None and existing is not None else LatencyTable.load(c.out)
            if target.backend.get("threads") not in (None, c.threads):  # another state: profiled in full, added
                self.merge_into = target
                self.log(f"{c.out}: profiled at {target.backend.get('threads')} threads; this profile at "
                         f"{c.threads} threads is added to it as a machine state of its own")
                if partial is None:
                    existing = where = None
        if existing is not None and existing.backend.get("name") != c.backend:
            raise ArtifactError(f"{where}: field 'backend.name' is {existing.backend.get('name')!r}, "
                                f"asked for {c.backend!r}")
        self._set_threads(existing, where)
        fresh = self._new_table()
        if self.merge_into is not None:
            self.merge_into.check_matches(device=c.device, precision=c.precision, batch=c.batch,
                                          fingerprint=fresh.device.get("fingerprint"))
        if existing is None:
            if c.resume:
                self.log(f"nothing to resume at {self.partial_path}; starting afresh")
            elif c.overwrite and self.partial_path.exists():  # every input checked: now discard it
                self.partial_path.unlink()
                self.log(f"discarded {self.partial_path} (--overwrite)")
            return fresh, {}
        existing.check_matches(device=c.device, precision=c.precision, batch=c.batch,
                               fingerprint=fresh.device.get("fingerprint"))
        if existing.layout != fresh.layout:
            raise ArtifactError(f"{where}: field 'layout' is {existing.layout.tag!r}, "
                                f"this backend runs {fresh.layout.tag!r}")
        if partial is None:  # merge
            return existing, {}
        whole = partial.get("whole", {})
        self.block_passes = {k: list(v) for k, v in partial.get("block_passes", {}).items()}
        self.log(f"resuming: {len(existing.entries)} blocks and {len(whole)} sub-nets already measured")
        return existing, whole

    def _set_threads(self, existing: LatencyTable | None, where: Path | None) -> None:
        """The CPU thread count of a backend that has one (:meth:`~edgedyn.backends.base.Backend.default_threads`):
        asked for, the existing table's, or chosen by timing."""
        c = self.cfg
        available = self._backend().default_threads()
        if available is None:
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
            candidates = thread_candidates(available)
            if len(candidates) == 1:
                threads = candidates[0]
            else:
                threads, self.thread_choice = time_thread_counts(
                    {t: self._backend(threads=t) for t in candidates}, self.net, self._example(), self.log)
        self.options = dataclasses.replace(self.options, threads=threads)

    def _checkpoint(self, table: LatencyTable, whole: dict[str, dict]) -> None:
        atomic_write_json(self.partial_path, {"schema": PARTIAL_SCHEMA, "config": {k: str(v) for k, v in
                                                                                asdict(self.cfg).items()},
                                              "table": table.to_dict(), "whole": whole,
                                              "block_passes": self.block_passes})

    # -- phases -----------------------------------------------------------------------
    def run(self) -> LatencyTable:
        """Profile, holding the table's exclusive lock throughout (a second writer of ``out``,
        ``--resume`` and ``--merge`` included, is refused at once)."""
        with exclusive_lock(self.cfg.out, "latency table"):
            return self._run()

    def _run(self) -> LatencyTable:
        c = self.cfg
        t_start = time.perf_counter()
        table, whole = self._start()
        try:
            t_blocks = time.perf_counter()
            self._blocks(table, whole)
            self.log(f"blocks timed in {time.perf_counter() - t_blocks:.1f} s")
            if table.measured:
                if c.calibrate >= 2:
                    # one interleaved batch: calibration, validation and probes see the same drift
                    batch = self._calibration_specs() + (self._validation_specs() if c.validate else [])
                    self._measure_specs(batch + self._probe_specs(), whole, table,
                                        "calibration" + (" + validation" if c.validate else "")
                                        + (" + probes" if c.probes else ""))
                self._calibrate(table, whole)
                if c.validate:
                    self._validate(table, whole)
                if c.probes:
                    self._probes(table, whole)
        except KeyboardInterrupt:
            self._checkpoint(table, whole)
            raise ProfileInterrupted(f"interrupted; progress kept in {self.partial_path}; "
                                     "continue with --resume") from None
        except BaseException:
            self._checkpoint(table, whole)
            raise
        table.backend["profile_seconds"] = round(time.perf_counter() - t_start, 1)
        table.backend["profile_protocol"] = "thorough" if c.thorough else "default"
        if self.merge_into is not None:
            add_state_table(self.merge_into, table)
            table = self.merge_into
        table.save(c.out)
        self.partial_path.unlink(missing_ok=True)
        return table

    def _blocks(self, table: LatencyTable, whole: dict) -> None:
        c = self.cfg
        keys = all_keys(self.net, c.batch, c.precision_name, table.layout)
        backend = self._backend()
        if not backend.measures:
            for k in keys:
                table.entries.setdefault(k, Entry(backend.estimate_ms(k), backend.name))
            self.log(f"{c.backend}: {len(keys)} block entries from {table.device.get('name')}")
            return
        if table.layout.kind != "plain":
            self.log(f"layout {table.layout.tag}: blocks timed in the layout they run in inside the network"
                     + ("" if table.layout.applies(self.net) else
                        f" (not modelled for {self.net.name}: its blocks stay plain)"))
        timing = BlockTiming(backend, c, self.block_passes, lambda: self._checkpoint(table, whole), self.log,
                             self.progress)
        timing.run(table, keys, self.net.name)

    def _measure_specs(self, specs: Sequence[SubnetSpec], whole: dict, table: LatencyTable, label: str) -> list[float]:
        """End-to-end latency (ms) of whole sub-nets, measured interleaved, as deploy runs them."""
        todo = [s for s in dict.fromkeys(specs) if s.to_json() not in whole]  # probes repeat calibration ends
        if todo:
            backend = self._backend()
            example = self._example()
            with owned_tempdir("subnets") as tmp:
                workdirs = [Path(tmp) / str(j) for j in range(len(todo))]
                for wd in workdirs:
                    wd.mkdir()
                t0 = time.perf_counter()
                with Progress(total=len(todo), desc=f"{label} build", disable=not self.progress,
                              log=self.log) as bar:
                    runners = backend.prepare_subnets(self.net, todo, example, workdirs,
                                                      progress=lambda: bar.update(1), log=self.log)
                t1 = time.perf_counter()
                self.log(f"{label}: built {len(runners)} sub-nets in {t1 - t0:.1f} s; "
                         "timing them end to end (interleaved)")
                with Progress(desc=f"{label}: timing {len(runners)} sub-nets", bar=False, disable=not self.progress,
                              log=self.log):  # off a terminal: a line every 30 s while it runs
                    stats = measure_calls(runners, CALIBRATION_THOROUGH if self.cfg.thorough else CALIBRATION,
                                          seed=len(whole))
                self.log(f"{label}: timed {len(runners)} sub-nets in {time.perf_counter() - t1:.1f} s")
                for s, st in zip(todo, stats):
                    whole[s.to_json()] = st.to_dict()
                del runners
            self._checkpoint(table, whole)
        return [whole[s.to_json()]["ms"] for s in specs]

    def _example(self) -> Any:
        import torch

        return torch.zeros(self.cfg.batch, *self.net.input_shape[1:])

    def _calibration_specs(self) -> list[SubnetSpec]:
        return calibration_specs(self.net, self.cfg.calibrate)

    def _validation_specs(self) -> list[SubnetSpec]:
        return validation_specs(self.net, self.cfg.validate, self.cfg.calibrate)

    def _probe_specs(self) -> list[SubnetSpec]:
        return probe_specs(self.net, self.cfg.probes) if self.cfg.probes else []

    def _probes(self, table: LatencyTable, whole: dict) -> None:
        """Store the probes, timed with the calibration, in the table's own machine state."""
        specs = self._probe_specs()
        measured = self._measure_specs(specs, whole, table, "probes")
        state = record_probes(table, self.net, specs, measured, source="profile")
        table.base_state = table.active_state = state.id
        self.log(f"probes: {len(specs)} reference sub-nets stored for state {state.label()} "
                 f"(edgedyn recheck re-times them)")

    def _calibrate(self, table: LatencyTable, whole: dict) -> None:
        if self.cfg.calibrate < 2:
            self.log("calibration skipped (needs >= 2 sub-nets); predictions are plain block sums")
            return
        specs = self._calibration_specs()
        measured = np.array(self._measure_specs(specs, whole, table, "calibration"))
        fit_table_calibration(table, self.net, specs, measured, self.log)

    def _validate(self, table: LatencyTable, whole: dict) -> None:
        specs = self._validation_specs()
        measured = np.array(self._measure_specs(specs, whole, table, "validation"))
        score_validation(table, self.net, specs, measured, self.log)

    def refit(self) -> LatencyTable:
        """Re-derive the table at ``out`` from the timings it holds, measuring nothing
        (:func:`~edgedyn.profile.refit.refit_table`)."""
        with exclusive_lock(self.cfg.out, "latency table"):
            return refit_table(self.net, Path(self.cfg.out), self.log)


def profile(cfg: ProfileConfig, log: Callable[[str], None] = print, progress: bool = True) -> LatencyTable:
    """Profile ``cfg.model`` and write the table to ``cfg.out`` (see :class:`ProfileConfig`)."""
    return Profiler(cfg, log, progress).run()
