"""Thread-safe dispatch with statistics: run the sub-net a policy picks, count what happened.

``infer`` may be called from many threads. One lock guards the policy's decisions and the
statistics (held for a few microseconds, never during inference): after each call, under that
lock, the statistics are updated and the decision for the same budget is made in advance, so
a call whose budget repeats the previous one takes the lock once. Each sub-net has one
session; ONNX Runtime sessions run concurrent calls safely. Runners that share state (the
backend says so when it loads them: TensorRT's one activation buffer and stream) have their
executions serialised by a second lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter as _clock
from typing import Any

import numpy as np

from ..dynamic import SubnetSpec
from .policies import Policy

_NO_DECISION: tuple[float | None, int, str] = (None, 0, "")


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


class Dispatcher:
    """Runs checked inputs on the sub-net ``policy`` picks and keeps use counts, budget misses,
    switches and errors consistent under concurrent calls."""

    def __init__(self, calls: Sequence[Callable[[np.ndarray], np.ndarray]], specs: Sequence[SubnetSpec],
                 policy: Policy, exec_lock: threading.Lock | None = None) -> None:
        self._calls = list(calls)
        self._specs = list(specs)
        self.policy = policy
        self._name = policy.name
        self._learns = policy.learns
        self._lock = threading.Lock()
        self._exec_lock = exec_lock
        self.reset()

    # -- statistics -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget use counts, misses, switches, errors and what the policy learnt."""
        with self._lock:
            n = len(self._calls)
            self.counts = [0] * n
            self.misses = [0] * n
            self.switches = 0
            self.errors = 0
            self._last: int | None = None
            self.policy.reset()
            self._next = _NO_DECISION

    def stats(self) -> dict[str, Any]:
        """A snapshot of use counts, misses, switches and errors, taken under the lock."""
        with self._lock:
            return {"counts": list(self.counts), "misses": list(self.misses), "switches": self.switches,
                    "errors": self.errors, "slowdown": self.policy.slowdown,
                    "current": self.policy.start() if self._last is None else self._last}

    def _record(self, i: int, ms: float, budget: float | None) -> None:
        """Count call ``i`` and tell the policy (caller holds the lock)."""
        self.counts[i] += 1
        if budget is not None and ms > budget:
            self.misses[i] += 1
        if i != self._last:
            if self._last is not None:
                self.switches += 1
            self._last = i
        if self._learns:
            self.policy.observe(i, ms)

    def observe(self, subnet: int, latency_ms: float, budget_ms: float | None = None) -> None:
        """Record an observed latency of ``subnet`` as if a call had run (tests inject timings)."""
        with self._lock:
            self._record(subnet, latency_ms, budget_ms)
            self._next = _NO_DECISION

    # -- decisions --------------------------------------------------------------------------
    def select(self, budget: float | None) -> int:
        """The sub-net a call with ``budget`` would run now (no inference, no statistics)."""
        with self._lock:
            return self.policy.decide(budget)[0]

    def set_ranking(self, ranking: Any) -> None:
        """Decide by ``ranking`` from the next call on (a machine-state change): swapped under
        the lock, so a concurrent call sees the old ranking or the new one, and none waits."""
        with self._lock:
            self.policy.ranking = ranking
            self._next = _NO_DECISION

    def forget_decision(self) -> None:
        """Drop the decision made in advance (after a change of the policy's settings)."""
        with self._lock:
            self._next = _NO_DECISION

    # -- the per-request path -------------------------------------------------------------------
    def __call__(self, x: np.ndarray, budget: float | None) -> tuple[np.ndarray, InferInfo]:
        """Run a checked input ``x`` for a checked ``budget``: decide, execute, count."""
        lock = self._lock
        policy = self.policy
        nxt = self._next  # decided right after the previous call, for its budget (one lock per call)
        if nxt[0] == budget and nxt[0] is not None:
            i, reason = nxt[1], nxt[2]
        else:
            with lock:
                i, reason = policy.decide(budget)
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
            self._record(i, ms, budget)
            # decide the next call now; a policy that does not learn decides by the budget alone
            if budget is not None and (self._learns or nxt[0] != budget):
                j, why = policy.decide(budget)
                self._next = (budget, j, why)
        finally:
            lock.release()
        return out, InferInfo(i, self._specs[i], ms, budget, budget is None or ms <= budget, self._name, reason)
