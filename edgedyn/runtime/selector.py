"""The runtime selector: one loaded sub-net per width, picked per request for a latency budget.

``Selector.load(bundle)`` verifies the bundle (sha256 of every file, device fingerprint,
backend; :mod:`~edgedyn.runtime.loading`), loads every sub-net once and serves
``infer(x, budget_ms)``. Its parts, each in its own module:

- :mod:`~edgedyn.runtime.policies`: which sub-net serves a request (``fixed``, ``budget``,
  ``adaptive``; a name -> class registry, :data:`~edgedyn.runtime.policies.POLICIES`);
- :mod:`~edgedyn.runtime.dispatch`: thread-safe dispatch with statistics (one lock, held
  for microseconds, never during inference);
- :mod:`~edgedyn.runtime.inputs`: the checks of budgets, thread counts and inputs.

Budget below every sub-net (documented policy)
----------------------------------------------
When no sub-net's expected latency fits, the *fastest* sub-net runs, the output is
returned, and ``info.met`` tells whether the observed latency met the budget
(``reason`` says ``"below-smallest"``). Requests are never dropped.

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

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Manifest
from ..dynamic import SubnetSpec
from ..errors import EdgedynError
from .dispatch import Dispatcher, InferInfo
from .inputs import InputError, as_array, check_budget, check_threads
from .loading import load_runners, open_manifest, read_models, verify_bundle
from .policies import POLICIES, PolicySettings, Ranking, policy_class

_INF = float("inf")

__all__ = ["POLICIES", "InferInfo", "InputError", "Selector", "SelectorClosed", "check_budget", "check_threads"]

log = logging.getLogger("edgedyn.runtime")


class SelectorClosed(EdgedynError):
    """``infer`` (or ``warmup``, ``serve``) on a :class:`Selector` that was closed."""


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
        cls = policy_class(policy)
        settings = PolicySettings(-1 if subnet is None else subnet, alpha, k_dev, up_margin, dwell, clip)
        settings.check_adaptive()
        self.manifest = manifest
        self.policy = policy
        self.budget_ms = check_budget(budget_ms)
        self.shared_memory = shared_memory
        self._runners = list(runners)
        n = len(self._runners)
        if n != len(manifest.subnets) or n == 0:
            raise EdgedynError(f"{manifest.path}: {len(manifest.subnets)} sub-nets in the manifest, {n} runners")
        if cls.needs_latency:
            missing = next((i for i, s in enumerate(manifest.subnets) if s.expected_ms is None), None)
            if missing is not None:
                raise EdgedynError(f"{manifest.path}: subnets[{missing}] has no measured or predicted latency; "
                                   f"policy {policy!r} needs one (re-deploy on the device, or use policy fixed)")
        self.quantile = quantile
        self._ranking = self._base_ranking = Ranking.of(manifest, quantile)
        if subnet is None:
            settings.subnet = self._ranking.order[0]
        settings.check_subnet(n)
        self._settings = settings
        self._closed = False
        self._shape = tuple(manifest.input_shape)
        self._dtype = np.dtype(manifest.input_dtype)
        self._check_runners()
        from ..backends.base import Runner

        # the hot path calls each runner bare: infer() checks the input once, for every sub-net
        calls = [r.raw_infer() if isinstance(r, Runner) else r.infer for r in self._runners]
        self._specs = [s.spec for s in manifest.subnets]
        self._dispatch = Dispatcher(calls, self._specs, cls(self._ranking, self._settings), exec_lock)

    def _check_runners(self) -> None:
        """The runners take the manifest's input shape and dtype."""
        manifest, first = self.manifest, self._runners[0]
        if tuple(getattr(first, "input_shape", self._shape)) != self._shape:
            raise EdgedynError(f"{manifest.path}: runner input shape {first.input_shape} != manifest {self._shape}")
        for r in self._runners:  # a manifest's dtype the models do not take would fail every request
            have = getattr(r, "input_dtype", None)
            if have is not None and np.dtype(have) != self._dtype:
                raise EdgedynError(f"{manifest.path}: field 'input.dtype' is {manifest.input_dtype!r}, but the "
                                   f"sub-net models take {np.dtype(have)}")

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
        verify_key: str | Path | bytes | None = None,
        **adaptive: Any,
    ) -> Selector:
        """Verify ``bundle`` and load every sub-net once, from the bytes verified.

        Refuses (one-line :class:`EdgedynError` naming the file or field) a modified or
        missing file, a bundle made for another device fingerprint (unless
        ``allow_other_device``), or for another backend than ``backend`` when given. With
        ``verify_key`` (a key file's path, or the key's bytes) it also refuses a bundle that
        is unsigned or whose ``manifest.sig`` does not sign its manifest under that key
        (:mod:`edgedyn.bundle.signature`).
        ``threads`` overrides the manifest's CPU thread count. ``adaptive`` passes
        ``alpha``, ``k_dev``, ``up_margin``, ``dwell``, ``clip`` to the adaptive policy, and
        ``quantile`` (median, p90, p99) to every policy.
        """
        budget_ms = check_budget(budget_ms)
        threads = check_threads(threads)
        manifest = open_manifest(bundle, verify_key)
        policy_class(policy)
        verify_bundle(manifest, backend, allow_other_device)
        models = read_models(manifest)  # read once, hashed; the sessions are built from these bytes
        loaded = load_runners(manifest, threads, allow_other_device, memory_device=trt_memory_device, models=models)
        return cls(manifest, loaded.runners, policy, budget_ms=budget_ms, subnet=subnet, exec_lock=loaded.exec_lock,
                   shared_memory=loaded.shared, **adaptive)

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

    # -- machine states -------------------------------------------------------------------
    @property
    def state(self) -> str | None:
        """The machine state whose latencies decisions follow (None: the state deployed in,
        or a bundle without states)."""
        return getattr(self, "_state", None)

    def set_state(self, state_id: str | None) -> bool:
        """Decide by the latencies of machine state ``state_id`` (``manifest.states``); a state
        the bundle does not know keeps the current latencies and warns once. True when the
        latencies changed."""
        from .states import ranking_in_state

        by_id = (self.manifest.states or {}).get("by_id", {})
        if state_id is None or state_id not in by_id:
            if by_id and not getattr(self, "_state_warned", False):
                self._state_warned = True
                log.warning("%s: this machine's state %s is none of the bundle's %d states; serving by the "
                            "latencies of state %s", self.manifest.path, state_id, len(by_id), self.state or "deployed")
            return False
        if state_id == self.state:
            return False
        self._ranking = ranking_in_state(self._base_ranking, list(by_id[state_id]["scale"]))
        self._dispatch.set_ranking(self._ranking)
        self._state = state_id  # after the swap: who reads the new state decides by its latencies
        log.info("machine state %s (%s): serving by its latencies", state_id, by_id[state_id].get("label"))
        return True

    def watch_state(self, reader: Any = None, interval_s: float | None = None) -> Any:
        """Start a :class:`~edgedyn.runtime.states.StateWatcher` that follows the machine's state
        (``reader``: a callable returning a state id; default, this machine's), after
        following the state it is in now. Stop it with its ``stop()``."""
        from .states import POLL_S, StateWatcher, machine_state_reader

        watcher = StateWatcher(reader or machine_state_reader(self.manifest), self.set_state,
                               POLL_S if interval_s is None else interval_s)
        self.set_state(watcher.current)
        return watcher.start()

    @property
    def expected_ms(self) -> list[float]:
        """Idle expected latency per sub-net, as decisions use it (the ``quantile`` of the
        deploy-time measurement, else the table's prediction)."""
        return list(self._ranking.expected)

    @property
    def median_ms(self) -> list[float]:
        """Idle median latency per sub-net (the adaptive slowdown's reference)."""
        return list(self._ranking.median)

    @property
    def order(self) -> list[int]:
        """Sub-net indices, most accurate first."""
        return list(self._ranking.order)

    @property
    def slowdown(self) -> float:
        """The adaptive policy's current slowdown factor (1.0 when idle, and for other policies)."""
        return self._dispatch.policy.slowdown

    @property
    def fixed_subnet(self) -> int:
        """The sub-net the ``fixed`` policy runs."""
        return self._settings.subnet

    @fixed_subnet.setter
    def fixed_subnet(self, subnet: int) -> None:
        PolicySettings(subnet).check_subnet(len(self._runners))
        self._settings.subnet = subnet
        self._dispatch.forget_decision()

    # -- statistics ---------------------------------------------------------------------
    @property
    def counts(self) -> list[int]:
        return self._dispatch.counts

    @property
    def misses(self) -> list[int]:
        return self._dispatch.misses

    @property
    def switches(self) -> int:
        return self._dispatch.switches

    @property
    def errors(self) -> int:
        return self._dispatch.errors

    def reset_stats(self) -> None:
        """Forget use counts, misses, switches and the adaptive state."""
        self._dispatch.reset()

    def stats(self) -> dict[str, Any]:
        """A snapshot of use counts, misses, switches and errors."""
        return self._dispatch.stats()

    # -- serving ------------------------------------------------------------------------
    def warmup(self, calls: int = 50) -> None:
        """Run every sub-net ``calls`` times on zeros, outside the statistics: a session's
        first calls allocate its buffers and run cold, and a server warms up before it serves."""
        self.check_open()
        x = np.zeros(self._shape, self._dtype)
        for r in self._runners:
            for _ in range(calls):
                r.infer(x)

    def select(self, budget_ms: float | None = None) -> int:
        """The sub-net ``infer`` would run now for ``budget_ms`` (no inference, no statistics)."""
        return self._dispatch.select(self.budget_ms if budget_ms is None else check_budget(budget_ms))

    def observe(self, subnet: int, latency_ms: float, budget_ms: float | None = None) -> None:
        """Record an observed latency of ``subnet`` (``infer`` calls this; tests inject timings)."""
        self._dispatch.observe(subnet, latency_ms, budget_ms)

    def infer(self, x: Any, budget_ms: float | None = None) -> tuple[np.ndarray, InferInfo]:
        """Run ``x`` (an ndarray or a CPU ``torch.Tensor``) on the sub-net chosen for
        ``budget_ms`` (default: the selector's budget).

        Raises ``ValueError`` for a malformed input, and :class:`NumberError` (a
        ``ValueError`` too) for a budget that is not a finite number > 0; nothing is run or
        counted then. A closed selector raises :class:`SelectorClosed`.
        """
        if self._closed:
            raise SelectorClosed(self._closed_message())
        if type(x) is not np.ndarray or x.shape != self._shape or (x.dtype is not self._dtype
                                                                     and x.dtype != self._dtype):
            x = as_array(x, self._shape, self._dtype)
        if budget_ms is None:
            budget = self.budget_ms
        elif type(budget_ms) is float and 0.0 < budget_ms < _INF:  # the common case: one test, one compare
            budget = budget_ms
        else:
            budget = check_budget(budget_ms)
        return self._dispatch(x, budget)

    @property
    def closed(self) -> bool:
        return self._closed

    def _closed_message(self) -> str:
        return f"{self.manifest.path}: this selector was closed; load the bundle again to serve"

    def check_open(self) -> None:
        """Raise :class:`SelectorClosed` (one line) if :meth:`close` was called."""
        if self._closed:
            raise SelectorClosed(self._closed_message())

    def close(self) -> None:
        """Release every runner; the selector then refuses to serve (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for r in self._runners:
            r.deactivate()

    def __enter__(self) -> Selector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
