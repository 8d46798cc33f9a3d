"""Selection policies: which sub-net serves a request, as small objects behind one protocol.

Every policy sees the bundle's :class:`Ranking` (sub-nets most accurate first, each one's
expected latency) and the :class:`PolicySettings`; it answers :meth:`Policy.decide` for a
budget and, if it ``learns``, hears every call's observed latency through :meth:`Policy.observe`.
The dispatcher (:mod:`edgedyn.runtime.dispatch`) calls both under its lock, so a policy needs
no lock of its own.

- ``fixed`` (:class:`FixedPolicy`): always the given sub-net (default: the most accurate).
- ``budget`` (:class:`BudgetPolicy`): the most accurate sub-net whose expected latency fits
  the budget. A budget is a per-request deadline, so the expected latency is a *tail* of the
  latency measured on this device at deploy time (``quantile``: ``p99`` by default; ``p90`` or
  ``median``), or the table's prediction where nothing was measured.
- ``adaptive`` (:class:`AdaptivePolicy`): like ``budget``, but every expected latency is scaled
  by a *slowdown factor* tracked online: each call's observed latency divided by that sub-net's
  idle median (clipped at ``clip``, so one stall of a shared machine does not count as
  contention) feeds an EWMA mean and an EWMA mean deviation (Jacobson/Karels, as TCP's RTO);
  the factor is ``mean + k_dev * deviation``. Under contention the factor grows and the
  selector steps down at once; when there is slack it steps back up only after ``dwell`` calls
  on the current sub-net and only if the larger one fits with an extra ``up_margin``
  (hysteresis, so it does not flap at the boundary).

When no sub-net's expected latency fits, the *fastest* sub-net runs (``reason``
``"below-smallest"``); requests are never dropped.

:data:`POLICIES` maps each name to its class (the CLI's ``--policy`` choices come from it);
:func:`register_policy` adds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from ..bundle import Manifest
from ..errors import EdgedynError

QUANTILES = ("median", "p90", "p99")


@dataclass(frozen=True)
class Ranking:
    """What every policy decides from: the sub-nets' expected latencies and their order."""

    expected: list[float]  # per sub-net: the ``quantile`` of the deploy-time latency, else the prediction
    median: list[float]  # per sub-net: the idle median (the adaptive slowdown's reference)
    order: list[int]  # sub-net indices, most accurate first
    rank: list[int]  # sub-net index -> its position in ``order``
    fastest: int

    @classmethod
    def of(cls, manifest: Manifest, quantile: str = "p99") -> Ranking:
        """Most accurate first: on the run's holdout (decisions never use the test split; older
        bundles have only the test accuracy), then the search's; among equals the faster first
        (it fits more budgets at no cost in accuracy), then the larger."""
        if quantile not in QUANTILES:
            raise EdgedynError(f"quantile {quantile!r} is unknown; choose median, p90 or p99")
        subnets = manifest.subnets
        base = [s.expected_ms for s in subnets]
        median = [float(b) if b is not None else float(s.macs) for b, s in zip(base, subnets)]
        expected = [float((s.measured or {}).get(quantile) or m) for s, m in zip(subnets, median)]

        def rank_key(i: int) -> tuple:
            acc = subnets[i].accuracy
            first = acc.get("holdout_fp32")
            if first is None:
                first = acc.get("test")
            search = acc.get("search_holdout")
            return (-(first if first is not None else -1.0), -(search if search is not None else -1.0),
                    expected[i], -subnets[i].macs)

        order = sorted(range(len(subnets)), key=rank_key)
        rank = [0] * len(order)
        for r, i in enumerate(order):
            rank[i] = r
        return cls(expected, median, order, rank, min(range(len(subnets)), key=lambda i: expected[i]))

    def fit(self, budget: float, scale: float = 1.0) -> tuple[int, str]:
        """The most accurate sub-net whose expected latency times ``scale`` fits ``budget``, else the fastest."""
        expected = self.expected
        for i in self.order:
            if expected[i] * scale <= budget:
                return i, "fits"
        return self.fastest, "below-smallest"


@dataclass
class PolicySettings:
    """Every policy's settings (each policy reads its own); checked whatever the policy."""

    subnet: int  # fixed: the sub-net to run
    alpha: float = 0.05  # adaptive: EWMA weight of the newest observation
    k_dev: float = 0.5  # adaptive: slowdown = mean + k_dev * mean deviation
    up_margin: float = 0.1  # adaptive: headroom a step up needs
    dwell: int = 128  # adaptive: calls on the current sub-net before a step up
    clip: float = 4.0  # adaptive: an observed slowdown counts at most this much

    def check_adaptive(self) -> None:
        if not 0 < self.alpha <= 1 or self.k_dev < 0 or self.up_margin < 0 or self.dwell < 0 or self.clip <= 1:
            raise EdgedynError("adaptive settings need 0 < alpha <= 1, k_dev >= 0, up_margin >= 0, dwell >= 0, "
                               "clip > 1")

    def check_subnet(self, n: int) -> None:
        if not 0 <= self.subnet < n:
            raise EdgedynError(f"subnet {self.subnet} is out of range: the bundle has {n} sub-nets (0..{n - 1})")


class Policy(Protocol):
    """Picks a sub-net per request. The dispatcher holds its lock around every method."""

    name: ClassVar[str]
    needs_latency: ClassVar[bool]  # every sub-net must have a measured or predicted latency
    learns: ClassVar[bool]  # decisions depend on observed latencies (then observe() is called)

    ranking: Ranking

    def __init__(self, ranking: Ranking, settings: PolicySettings) -> None: ...

    def start(self) -> int:
        """The sub-net counted as current before any call."""
        ...

    def decide(self, budget: float | None) -> tuple[int, str]:
        """The sub-net to run for ``budget`` (ms, or None) and why."""
        ...

    def observe(self, subnet: int, ms: float) -> None:
        """``subnet`` just ran in ``ms`` (called only when ``learns``)."""
        ...

    def reset(self) -> None:
        """Forget what was observed."""
        ...

    @property
    def slowdown(self) -> float:
        """The factor expected latencies are scaled by now (1.0 unless the policy learns one)."""
        ...


class FixedPolicy:
    """Always ``settings.subnet``."""

    name: ClassVar[str] = "fixed"
    needs_latency: ClassVar[bool] = False
    learns: ClassVar[bool] = False

    def __init__(self, ranking: Ranking, settings: PolicySettings) -> None:
        self.ranking, self.settings = ranking, settings

    def start(self) -> int:
        return self.settings.subnet

    def decide(self, budget: float | None) -> tuple[int, str]:
        return self.settings.subnet, "fixed"

    def observe(self, subnet: int, ms: float) -> None:
        pass

    def reset(self) -> None:
        pass

    @property
    def slowdown(self) -> float:
        return 1.0


class BudgetPolicy(FixedPolicy):
    """The most accurate sub-net whose expected latency fits the budget."""

    name: ClassVar[str] = "budget"
    needs_latency: ClassVar[bool] = True

    def start(self) -> int:
        return self.ranking.order[0]

    def decide(self, budget: float | None) -> tuple[int, str]:
        if budget is None:
            return self.ranking.order[0], "no-budget"
        return self.ranking.fit(budget)


class AdaptivePolicy(BudgetPolicy):
    """``budget`` with expected latencies scaled by a slowdown factor learnt online, and hysteresis."""

    name: ClassVar[str] = "adaptive"
    learns: ClassVar[bool] = True

    def __init__(self, ranking: Ranking, settings: PolicySettings) -> None:
        super().__init__(ranking, settings)
        self._alpha, self._k_dev = float(settings.alpha), float(settings.k_dev)
        self._up, self._dwell, self._clip = float(settings.up_margin), int(settings.dwell), float(settings.clip)
        self.reset()

    def reset(self) -> None:
        self._current = self.start()
        self._since_switch = 0
        self._mean, self._dev = 1.0, 0.0

    @property
    def slowdown(self) -> float:
        return self._mean + self._k_dev * self._dev

    def observe(self, subnet: int, ms: float) -> None:
        if subnet != self._current:
            self._current = subnet
            self._since_switch = 0
        self._since_switch += 1
        ratio = ms / self.ranking.median[subnet]
        err = (ratio if ratio < self._clip else self._clip) - self._mean
        self._mean += self._alpha * err
        self._dev += self._alpha * ((err if err >= 0.0 else -err) - self._dev)

    def decide(self, budget: float | None) -> tuple[int, str]:
        if budget is None:
            return self.ranking.order[0], "no-budget"
        scale = self._mean + self._k_dev * self._dev
        ranking = self.ranking
        expected = ranking.expected
        cur = self._current
        for cand in ranking.order:  # Ranking.fit, inlined: it runs after every adaptive call
            if expected[cand] * scale <= budget:
                reason = "fits"
                break
        else:
            cand, reason = ranking.fastest, "below-smallest"
        if cand == cur or ranking.rank[cand] > ranking.rank[cur]:
            return cand, reason  # same, or a step down: at once
        # a step up: only after the dwell and with headroom, unless the current one no longer fits
        if expected[cur] * scale > budget:
            return cand, reason
        if self._since_switch >= self._dwell and expected[cand] * scale * (1.0 + self._up) <= budget:
            return cand, reason
        return cur, "hysteresis"


#: Policy name -> class, in the order the CLI lists them.
POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Add ``cls`` to :data:`POLICIES` under ``cls.name`` (usable as a class decorator)."""
    POLICIES[cls.name] = cls
    return cls


for _cls in (BudgetPolicy, FixedPolicy, AdaptivePolicy):
    register_policy(_cls)


def policy_class(name: str) -> type[Policy]:
    """The class registered as ``name``; a one-line :class:`EdgedynError` naming the choices if none."""
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise EdgedynError(f"policy {name!r} is unknown; choose one of {', '.join(POLICIES)}") from None

