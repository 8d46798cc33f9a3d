"""The runtime selector: one loaded sub-net per width, picked per request for a latency budget.

``Selector.load(bundle)`` verifies the bundle (sha256 of every file, device fingerprint,
backend), loads every sub-net once and serves ``infer(x, budget_ms)``.

Policies
--------
- ``fixed``: always the given sub-net (default: the most accurate).
- ``budget``: the most accurate sub-net whose expected latency fits the budget. A budget is
  a per-request deadline, so the expected latency is a *tail* of the latency measured on
  this device at deploy time (``quantile``: ``p99`` by default; ``p90`` or ``median``),
  or the table's prediction where nothing was measured.
- ``adaptive``: like ``budget``, but every expected latency is scaled by a *slowdown
  factor* tracked online: each call's observed latency divided by that sub-net's idle
  median (clipped at ``clip``, so one stall of a shared machine does not count as
  contention) feeds an EWMA mean and an EWMA mean deviation (Jacobson/Karels, as TCP's
  RTO); the factor is ``mean + k_dev * deviation``. Under contention the factor grows and the
  selector steps down at once; when there is slack it steps back up only after
  ``dwell`` calls on the current sub-net and only if the larger one fits with an extra
  ``up_margin`` (hysteresis, so it does not flap at the boundary).

Budget below every sub-net (documented policy)
----------------------------------------------
When no sub-net's expected latency fits, the *fastest* sub-net runs, the output is
returned, and ``info.met`` tells whether the observed latency met the budget
(``reason`` says ``"below-smallest"``). Requests are never dropped.

Concurrency
-----------
``infer`` may be called from many threads. One lock guards selection and statistics
(held for a few microseconds, never during inference): after each call, under that lock,
the statistics are updated and the decision for the same budget is made in advance, so a
call whose budget repeats the previous one takes the lock once. Each sub-net has one session;
ONNX Runtime sessions run concurrent calls safely. TensorRT runners share one activation
buffer and stream, so their executions are serialised by a second lock.

Inputs and budgets
------------------
``infer`` takes a numpy array, or a CPU ``torch.Tensor`` (converted without a copy; the
output is a numpy array either way), of the bundle's shape and dtype. A malformed input
raises ``ValueError`` (a CUDA tensor: :class:`InputError`, also a ``ValueError``) before
anything is selected or run; the selector stays usable. A budget is ``None`` or a finite
number > 0 (ms); anything else (NaN, infinity, ``<= 0``, a string) raises
:class:`~edgedyn.validate.NumberError`, also a ``ValueError``. The common case (a float
budget, an ndarray input) costs a type test and a comparison each.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter as _clock
from typing import Any

import numpy as np

from ..deploy.manifest import Manifest, verify_files
from ..dynamic import SubnetSpec
from ..errors import EdgedynError
from ..validate import NumberError, available_cpus, number_problem

POLICIES = ("budget", "fixed", "adaptive")
_INF = float("inf")


class InputError(EdgedynError, ValueError):
    """An input ``infer`` cannot take (a tensor on a GPU, ...)."""


def check_budget(value: object, name: str = "budget_ms") -> float | None:
    """``None``, or ``value`` as a float if it is a finite number > 0 (ms); else :class:`NumberError`
    naming ``name``."""
    if value is None:
        return None
    problem = number_problem(value, 0.0, lo_open=True)
    if problem is not None:
        raise NumberError(f"{name} {problem}")
    return float(value)  # type: ignore[arg-type]


def check_threads(value: object, name: str = "threads") -> int | None:
    """``None``, or a thread count >= 1; above the CPUs available it is capped, with a warning."""
    if value is None:
        return None
    problem = number_problem(value, 1, integer=True)
    if problem is not None:
        raise NumberError(f"{name} {problem}")
    n = available_cpus()
    if int(value) > n:  # type: ignore[arg-type]
        import warnings

        warnings.warn(f"{name}={value} is more than the {n} CPUs available; using {n}", stacklevel=3)
        return n
    return int(value)  # type: ignore[arg-type]


@dataclass(slots=True)
class InferInfo:
    """What one ``infer`` call did."""

    subnet: int  # index into the manifest's sub-nets
    spec: SubnetSpec
    latency_ms: float  # observed wall time of the sub-net's inference
    budget_ms: float | None
    met: bool  # latency_ms <= budget_ms (True without a budget)
    policy: str
    reason: str  # "fixed" | "no-budget" | "fits" | "below-smallest" | "hysteresis"


def _current_fingerprint(kind: str) -> str:
    from ..device import device_fingerprint, device_info

    return device_fingerprint(device_info(kind))


class Selector:
    """Serves a bundle's sub-nets under a latency budget. Build it with :meth:`load`."""

    def __init__(
        self,
        manifest: Manifest,
        runners: Sequence[Any],
        policy: str = "budget",
        *,
        budget_ms: float | None = None,
        subnet: int | None = None,
        alpha: float = 0.05,
        k_dev: float = 0.5,
        up_margin: float = 0.1,
        dwell: int = 128,
        clip: float = 4.0,
        quantile: str = "p99",
        exec_lock: threading.Lock | None = None,
        shared_memory: Any = None,
    ) -> None:
        if policy not in POLICIES:
            raise EdgedynError(f"policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}")
        if not 0 < alpha <= 1 or k_dev < 0 or up_margin < 0 or dwell < 0 or clip <= 1:
            raise EdgedynError("adaptive settings need 0 < alpha <= 1, k_dev >= 0, up_margin >= 0, dwell >= 0, "
                               "clip > 1")
        self.manifest = manifest
        self.policy = policy
        self.budget_ms = check_budget(budget_ms)
        self.shared_memory = shared_memory
        self._runners = list(runners)
        from ..backends.base import Runner

        # the hot path calls each runner bare: infer() checks the input once, for every sub-net
        self._calls = [r.raw_infer() if isinstance(r, Runner) else r.infer for r in self._runners]
        self._specs = [s.spec for s in manifest.subnets]
        n = len(self._runners)
        if n != len(manifest.subnets) or n == 0:
            raise EdgedynError(f"{manifest.path}: {len(manifest.subnets)} sub-nets in the manifest, {n} runners")
        base = [s.expected_ms for s in manifest.subnets]
        if policy != "fixed" and any(b is None for b in base):
            missing = next(i for i, b in enumerate(base) if b is None)
            raise EdgedynError(f"{manifest.path}: subnets[{missing}] has no measured or predicted latency; "
                               f"policy {policy!r} needs one (re-deploy on the device, or use policy fixed)")
        if quantile not in ("median", "p90", "p99"):
            raise EdgedynError(f"quantile {quantile!r} is unknown; choose median, p90 or p99")
        self.quantile = quantile
        self._median = [float(b) if b is not None else float(s.macs) for b, s in zip(base, manifest.subnets)]
        # what decisions compare with the budget: the chosen tail of the deploy-time measurement
        self._base = [float((s.measured or {}).get(quantile) or m) for s, m in zip(manifest.subnets, self._median)]
        # most accurate first: on the run's holdout (decisions never use the test split; older
        # bundles have only the test accuracy), then the search's; among equals the faster
        # first (it fits more budgets at no cost in accuracy), then the larger
        def rank_key(i: int) -> tuple:
            acc = manifest.subnets[i].accuracy
            first = acc.get("holdout_fp32")
            if first is None:
                first = acc.get("test")
            search = acc.get("search_holdout")
            return (-(first if first is not None else -1.0), -(search if search is not None else -1.0),
                    self._base[i], -manifest.subnets[i].macs)
        self._order = sorted(range(n), key=rank_key)
        self._rank = [0] * n
        for r, i in enumerate(self._order):
            self._rank[i] = r
        self._fastest = min(range(n), key=lambda i: self._base[i])
        if subnet is None:
            subnet = self._order[0]
        if not 0 <= subnet < n:
            raise EdgedynError(f"subnet {subnet} is out of range: the bundle has {n} sub-nets (0..{n - 1})")
        self.fixed_subnet = subnet
        self._alpha, self._k_dev, self._up, self._dwell = float(alpha), float(k_dev), float(up_margin), int(dwell)
        self._clip = float(clip)
        first = self._runners[0]
        self._shape = tuple(manifest.input_shape)
        self._dtype = np.dtype(manifest.input_dtype)
        if tuple(getattr(first, "input_shape", self._shape)) != self._shape:
            raise EdgedynError(f"{manifest.path}: runner input shape {first.input_shape} != manifest {self._shape}")
        for r in self._runners:  # a manifest's dtype the models do not take would fail every request
            have = getattr(r, "input_dtype", None)
            if have is not None and np.dtype(have) != self._dtype:
                raise EdgedynError(f"{manifest.path}: field 'input.dtype' is {manifest.input_dtype!r}, but the "
                                   f"sub-net models take {np.dtype(have)}")
        self._adaptive = policy == "adaptive"
        self._lock = threading.Lock()
        self._exec_lock = exec_lock
        self.reset_stats()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        bundle: str | Path,
        policy: str = "budget",
        *,
        budget_ms: float | None = None,
        subnet: int | None = None,
        backend: str | None = None,
        allow_other_device: bool = False,
        threads: int | None = None,
        trt_memory_device: str = "cuda",
        **adaptive: Any,
    ) -> Selector:
        """Verify ``bundle`` and load every sub-net once.

        Refuses (one-line :class:`EdgedynError` naming the file or field) a modified or
        missing file, a bundle made for another device fingerprint (unless
        ``allow_other_device``), or for another backend than ``backend`` when given.
        ``threads`` overrides the manifest's CPU thread count. ``adaptive`` passes
        ``alpha``, ``k_dev``, ``up_margin``, ``dwell``, ``clip`` to the adaptive policy, and
        ``quantile`` (median, p90, p99) to every policy.
        """
        from ..backends import BackendOptions, get_backend

        budget_ms = check_budget(budget_ms)
        threads = check_threads(threads)
        manifest = Manifest.load(bundle)
        where = str(manifest.path)
        if policy not in POLICIES:
            raise EdgedynError(f"policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}")
        name = manifest.backend.get("name")
        if backend is not None and name != backend:
            raise EdgedynError(f"{where}: field 'backend.name' is {name!r}, but backend {backend!r} was asked for")
        verify_files(manifest)
        kind = str(manifest.device.get("kind", "cpu"))
        if not allow_other_device:
            try:
                here = _current_fingerprint(kind)
            except EdgedynError as err:
                raise EdgedynError(f"{where}: field 'fingerprint' is {manifest.fingerprint!r}, but this machine "
                                   f"has no {kind} device ({err})") from None
            if here != manifest.fingerprint:
                raise EdgedynError(f"{where}: field 'fingerprint' is {manifest.fingerprint!r}, this device is "
                                   f"{here!r}; re-deploy here (or pass allow_other_device=True)")
        options = BackendOptions(device="cpu" if name == "onnxruntime" else "cuda",
                                 precision=manifest.precision, threads=threads or manifest.threads)
        be = get_backend(name, options)
        version = be.version()
        if name == "tensorrt" and version != manifest.backend.get("version") and not allow_other_device:
            raise EdgedynError(f"{where}: field 'backend.version' is {manifest.backend.get('version')!r}, "
                               f"TensorRT here is {version!r}; engines only load on the version that built them")
        root = manifest.root
        shape = manifest.input_shape
        runners: list[Any] = []
        shared = exec_lock = None
        if name == "tensorrt":
            import torch

            from ..backends.tensorrt import SharedActivationMemory

            shared = SharedActivationMemory(device=trt_memory_device)
            exec_lock = threading.Lock()
            for s in manifest.subnets:
                runners.append(be.load(root / s.model_file, shape, shared_memory=shared))
            if torch.cuda.is_available():
                for r in runners:
                    r.activate()
        else:
            for s in manifest.subnets:
                runners.append(be.load(root / s.model_file, shape).activate())
        return cls(manifest, runners, policy, budget_ms=budget_ms, subnet=subnet, exec_lock=exec_lock,
                   shared_memory=shared, **adaptive)

    # -- introspection ------------------------------------------------------------------
    @property
    def runners(self) -> list[Any]:
        return list(self._runners)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The one input shape every sub-net takes (batch included)."""
        return self._shape

    @property
    def input_dtype(self) -> np.dtype:
        return self._dtype

    @property
    def specs(self) -> list[SubnetSpec]:
        return list(self._specs)

    @property
    def expected_ms(self) -> list[float]:
        """Idle expected latency per sub-net, as decisions use it (the ``quantile`` of the
        deploy-time measurement, else the table's prediction)."""
        return list(self._base)

    @property
    def median_ms(self) -> list[float]:
        """Idle median latency per sub-net (the adaptive slowdown's reference)."""
        return list(self._median)

    @property
    def slowdown(self) -> float:
        """The adaptive policy's current slowdown factor (1.0 when idle)."""
        return self._mean + self._k_dev * self._dev

    @property
    def order(self) -> list[int]:
        """Sub-net indices, most accurate first."""
        return list(self._order)

    def warmup(self, calls: int = 50) -> None:
        """Run every sub-net ``calls`` times on zeros, outside the statistics: a session's
        first calls allocate its buffers and run cold, and a server warms up before it serves."""
        x = np.zeros(self._shape, self._dtype)
        for r in self._runners:
            for _ in range(calls):
                r.infer(x)

    def reset_stats(self) -> None:
        """Forget use counts, misses, switches and the adaptive state."""
        with self._lock:
            n = len(self._runners)
            self.counts = [0] * n
            self.misses = [0] * n
            self.switches = 0
            self.errors = 0
            self._last: int | None = None
            self._current = self.fixed_subnet if self.policy == "fixed" else self._order[0]
            self._since_switch = 0
            self._mean, self._dev = 1.0, 0.0
            self._next: tuple = (None, 0, "")

    def stats(self) -> dict[str, Any]:
        """A snapshot of use counts, misses, switches and errors."""
        with self._lock:
            return {"counts": list(self.counts), "misses": list(self.misses), "switches": self.switches,
                    "errors": self.errors, "slowdown": self._mean + self._k_dev * self._dev,
                    "current": self._current}

    # -- decision -----------------------------------------------------------------------
    def _fit(self, budget: float, scale: float) -> tuple[int, str]:
        base = self._base
        for i in self._order:
            if base[i] * scale <= budget:
                return i, "fits"
        return self._fastest, "below-smallest"

    def _decide(self, budget: float | None) -> tuple[int, str]:
        """Pick a sub-net (caller holds the lock)."""
        policy = self.policy
        if policy == "fixed":
            return self.fixed_subnet, "fixed"
        if budget is None:
            return self._order[0], "no-budget"
        if policy == "budget":
            return self._fit(budget, 1.0)
        return self._adapt(budget, self._mean + self._k_dev * self._dev)

    def _adapt(self, budget: float, scale: float) -> tuple[int, str]:
        """The adaptive policy's pick at slowdown ``scale`` (caller holds the lock)."""
        base = self._base
        cur = self._current
        for cand in self._order:  # _fit, inlined: it runs after every adaptive call (0.12 us less)
            if base[cand] * scale <= budget:
                reason = "fits"
                break
        else:
            cand, reason = self._fastest, "below-smallest"
        if cand == cur or self._rank[cand] > self._rank[cur]:
            return cand, reason  # same, or a step down: at once
        # a step up: only after the dwell and with headroom, unless the current one no longer fits
        if base[cur] * scale > budget:
            return cand, reason
        if self._since_switch >= self._dwell and base[cand] * scale * (1.0 + self._up) <= budget:
            return cand, reason
        return cur, "hysteresis"

    def select(self, budget_ms: float | None = None) -> int:
        """The sub-net ``infer`` would run now for ``budget_ms`` (no inference, no statistics)."""
        budget = self.budget_ms if budget_ms is None else check_budget(budget_ms)
        with self._lock:
            return self._decide(budget)[0]

    def observe(self, subnet: int, latency_ms: float, budget_ms: float | None = None) -> None:
        """Record an observed latency of ``subnet`` (``infer`` calls this; tests inject timings)."""
        with self._lock:
            self._observe(subnet, latency_ms, budget_ms)
            self._next = (None, 0, "")

    def _observe(self, i: int, ms: float, budget: float | None) -> float:
        """Record call ``i`` (caller holds the lock); returns the adaptive slowdown factor."""
        self.counts[i] += 1
        if budget is not None and ms > budget:
            self.misses[i] += 1
        if i != self._last:
            if self._last is not None:
                self.switches += 1
            self._last = i
        if i != self._current:
            self._current = i
            self._since_switch = 0
        self._since_switch += 1
        if not self._adaptive:  # the slowdown factor only steers the adaptive policy
            return 1.0
        ratio = ms / self._median[i]
        err = (ratio if ratio < self._clip else self._clip) - self._mean
        mean = self._mean = self._mean + self._alpha * err
        dev = self._dev = self._dev + self._alpha * ((err if err >= 0.0 else -err) - self._dev)
        return mean + self._k_dev * dev

    # -- serving ------------------------------------------------------------------------
    def _as_array(self, x: Any) -> np.ndarray:
        """``x`` if it is a well-formed input (a CPU tensor as an ndarray), else ValueError."""
        if type(x) is not np.ndarray and type(x).__module__.startswith("torch"):
            import torch

            if isinstance(x, torch.Tensor):
                if x.device.type != "cpu":
                    raise InputError(f"input is a torch.Tensor on {x.device}; the selector takes CPU inputs "
                                     f"(move it with .cpu() first)")
                x = x.detach().numpy()
        if (isinstance(x, np.ndarray) and x.shape == self._shape and x.dtype == self._dtype):
            return x
        raise ValueError(self._input_error(x))

    def _input_error(self, x: Any) -> str:
        if not isinstance(x, np.ndarray):
            return f"input must be a numpy array of shape {self._shape} and dtype {self._dtype}, got {type(x).__name__}"
        if tuple(x.shape) != self._shape:
            return f"input shape {tuple(x.shape)} does not match the bundle's {self._shape}"
        return f"input dtype {x.dtype} does not match the bundle's {self._dtype}"

    def infer(self, x: Any, budget_ms: float | None = None) -> tuple[np.ndarray, InferInfo]:
        """Run ``x`` (an ndarray or a CPU ``torch.Tensor``) on the sub-net chosen for
        ``budget_ms`` (default: the selector's budget).

        Raises ``ValueError`` for a malformed input, and :class:`NumberError` (a
        ``ValueError`` too) for a budget that is not a finite number > 0; nothing is run or
        counted then.
        """
        if type(x) is not np.ndarray or x.shape != self._shape or (x.dtype is not self._dtype
                                                                     and x.dtype != self._dtype):
            x = self._as_array(x)
        if budget_ms is None:
            budget = self.budget_ms
        elif type(budget_ms) is float and 0.0 < budget_ms < _INF:  # the common case: one test, one compare
            budget = budget_ms
        else:
            budget = check_budget(budget_ms)
        lock = self._lock
        nxt = self._next  # decided right after the previous call, for its budget (one lock per call)
        if nxt[0] == budget and nxt[0] is not None:
            i, reason = nxt[1], nxt[2]
        else:
            with lock:
                i, reason = self._decide(budget)
        call = self._calls[i]
        try:
            if self._exec_lock is None:
                t0 = _clock()
                out = call(x)
                ms = (_clock() - t0) * 1e3
            else:
                with self._exec_lock:
                    t0 = _clock()
                    out = call(x)
                    ms = (_clock() - t0) * 1e3
        except Exception:
            with lock:
                self.errors += 1
            raise
        lock.acquire()  # not ``with``: this path runs per request, and acquire/release cost half
        try:
            scale = self._observe(i, ms, budget)
            # decide the next call now; the budget policy's decision depends on the budget only
            if budget is not None:
                if self._adaptive:
                    j, why = self._adapt(budget, scale)
                    self._next = (budget, j, why)
                elif nxt[0] != budget:
                    j, why = self._decide(budget)
                    self._next = (budget, j, why)
        finally:
            lock.release()
        return out, InferInfo(i, self._specs[i], ms, budget, budget is None or ms <= budget, self.policy, reason)

    def close(self) -> None:
        """Release every runner."""
        for r in self._runners:
            r.deactivate()

    def __enter__(self) -> Selector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
