"""Issue 19's re-selection levers for ``autoslim`` (each off by default; docs/search.md).

- **Finalists** (:func:`finalists`): each budget's ``k`` most accurate candidates that fit
  it; L1b fine-tunes each a few batches, the shared weights restored afterwards
  (:func:`restored`, :func:`finetune_on`), L3b re-scores them after the final measurement's
  BN recalibration, before re-selection compares them.
- **Using the budget** (:func:`pick_using_budget`, L1c): per budget, the candidates whose
  holdout accuracy is within ``z`` binomial standard errors of the best one's are tied, and
  the costliest of them is picked (nested: the chain of tied candidates with the largest total
  cost).

- **Filling the budget** (:func:`fill_budget`, L7): each pick is widened, one coupling group
  at a time, by the widening that adds the most MACs per unit of predicted cost, while it
  still fits its budget. The widened sub-net is not compared on the holdout (the one-shot
  weights score such shapes out of distribution); the final epochs train it.

Non-nested picks (L2) are :func:`~edgedyn.search.reselect.pick` itself.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence

import torch

from ..dynamic import DynamicNet, SubnetSpec
from .dist import Dist
from .progressive import PathPoint
from .reselect import Budget, pick
from .train import Batch, ce_step


def finalists(points: Sequence[PathPoint], limits: Sequence[float], k: int) -> list[SubnetSpec]:
    """For each limit, the ``k`` most accurate points that fit it (ties: the cheaper), each
    sub-net once, in the order they are first met (smallest budget first)."""
    out: dict[SubnetSpec, None] = {}
    for limit in limits:
        fits = [p for p in points if p.cost <= limit + 1e-9 * max(1.0, abs(limit))]
        for p in sorted(fits, key=lambda p: (-p.accuracy, p.cost))[:k]:
            out.setdefault(p.spec)
    return list(out)


@contextlib.contextmanager
def restored(net: DynamicNet) -> Iterator[None]:
    """Inside the block the network may be trained; afterwards its weights, BatchNorm buffers,
    per-sub-net statistics and active sub-net are what they were, bit for bit."""
    state = {k: v.detach().clone() for k, v in net.model.state_dict().items()}
    stats = copy.deepcopy(net.bn_stats)
    active, training = net.active_spec, net.training
    try:
        yield
    finally:
        with torch.no_grad():
            net.model.load_state_dict(state)
        net.bn_stats = stats
        net.set_subnet(active)
        net.train(training)


def finetune_on(net: DynamicNet, spec: SubnetSpec, batches: Sequence[Batch], lr: float, dist: Dist,
                device: str = "cpu") -> None:
    """Selective fine-tuning of ``spec`` on ``batches`` (one step each): cross-entropy, plain SGD
    (no momentum or weight decay, as :func:`~edgedyn.search.train.finetune`), the active slices only."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    step = ce_step(net, spec)
    params = list(net.parameters())
    net.train()
    for x, y in batches:
        x, y = dist.shard((x.to(device), y.to(device)))
        optimizer.zero_grad(set_to_none=True)
        step(x, y)
        dist.sync_grads(params)
        optimizer.step()
    net.eval()


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on ``n`` images."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / max(n, 1))


def pick_using_budget(points: Sequence[PathPoint], budgets: Sequence[Budget], full_cost: float, unit: str, *,
                      n: int, z: float, margin: float = 0.0,
                      contains: Callable[[PathPoint, PathPoint], bool] | None = None,
                      ) -> list[tuple[Budget, PathPoint]] | None:
    """L1c: per budget, the candidates that fit with accuracy at least ``best - z * SE(best)``
    (``SE``: :func:`binomial_se` of the best fitting accuracy on ``n`` images) are tied; the
    pick is the costliest tied one (ties: the more accurate). With ``contains`` the picks are a
    nested chain of tied candidates with the largest total cost (then accuracy); None when no
    such chain exists (the caller falls back to the plain nested pick)."""
    pick(points, budgets, full_cost, unit, margin=margin)  # the one-line error when a budget is unreachable
    pts = list(points)
    tied: list[list[int]] = []
    for b in budgets:
        limit = b.limit(full_cost, margin)
        fits = [i for i, p in enumerate(pts) if p.cost <= limit + 1e-9 * max(1.0, abs(limit))]
        best = max(pts[i].accuracy for i in fits)
        tied.append([i for i in fits if pts[i].accuracy >= best - z * binomial_se(best, n) - 1e-12])
    if contains is None:
        return [(b, pts[max(ids, key=lambda i: (pts[i].cost, pts[i].accuracy))]) for b, ids in zip(budgets, tied)]
    # chains[i]: (total cost, total accuracy, chain) of tied picks up to this budget ending at point i
    chains: dict[int, tuple[float, float, tuple[int, ...]]] = {i: (pts[i].cost, pts[i].accuracy, (i,))
                                                              for i in tied[0]}
    for ids in tied[1:]:
        nxt: dict[int, tuple[float, float, tuple[int, ...]]] = {}
        for i in ids:
            for j, (cost, acc, chain) in chains.items():
                if i == j or contains(pts[i], pts[j]):
                    cand = (cost + pts[i].cost, acc + pts[i].accuracy, chain + (i,))
                    if i not in nxt or cand[:2] > nxt[i][:2]:
                        nxt[i] = cand
        chains = nxt
    if not chains:
        return None
    best_chain = max(chains.values(), key=lambda c: c[:2])[2]
    return [(b, pts[i]) for b, i in zip(budgets, best_chain)]


def fill_budget(net: DynamicNet, spec: SubnetSpec, price: Callable[[SubnetSpec], float],
                fits: Callable[[SubnetSpec], bool], cap: SubnetSpec | None = None,
                gain: Callable[[SubnetSpec], float] | None = None) -> SubnetSpec:
    """L7: widen ``spec`` greedily while it ``fits``: each step takes, over every coupling
    group and every wider grid width up to ``cap`` (a sub-net that contains ``spec``; default
    the full model), the widening with the most ``gain`` (default MACs) added per unit of
    cost added. A widening that adds no cost (channels inside a block the backend pads
    anyway) ranks above any that does, by the gain it adds. Stops when no widening fits;
    the result contains ``spec`` and is contained in ``cap``."""
    gain = gain or (lambda s: float(net.macs(s)))
    if cap is not None and not cap.contains(spec):
        raise ValueError(f"cap {list(cap.widths)} does not contain {list(spec.widths)}")
    cost, value = price(spec), gain(spec)
    while True:
        best: tuple[tuple[int, float], SubnetSpec, float, float] | None = None
        for g in net.groups:
            top = g.grid[-1] if cap is None else cap[g.index]
            for w in g.grid:
                if w <= spec[g.index] or w > top:
                    continue
                cand = spec.replace(g.index, w)
                if not fits(cand):
                    continue
                c, v = price(cand), gain(cand)
                added, paid = v - value, c - cost
                if added <= 0:
                    continue
                rank = (1, added) if paid <= 1e-9 * max(1.0, abs(cost)) else (0, added / paid)
                if best is None or rank > best[0]:
                    best = (rank, cand, c, v)
        if best is None:
            return spec
        _, spec, cost, value = best


__all__ = ["binomial_se", "fill_budget", "finalists", "finetune_on", "pick_using_budget", "restored"]
