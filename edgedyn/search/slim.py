"""Greedy slimming on a one-shot (slimmable) network, steered by a cost model.

This is AutoSlim's search (Yu & Huang, ICLR 2020) with NetAdapt's fixed cost step
(Yang et al., ECCV 2018), priced by edgedyn's cost interface (a latency table measured
on the target, or MACs). The network has been trained so that every prefix-sliced
sub-net is usable without fine-tuning (:func:`~edgedyn.search.train.random_students`),
so each candidate's held-out score means something as it stands.

Each step, starting from the full model:

1. for every coupling group, remove channel groups one at a time until the sub-net is
   at least ``step_cost`` cheaper than the current one (on a latency table a single
   removal can save nothing, or even cost more: ONNX Runtime pads channels to its
   block, so the step goes on to the width where the saving appears). A group that
   cannot save the full step at any width offers its cheapest saving width instead, and
   such short candidates compete only when no group can save the full step (NetAdapt:
   every proposal meets the step; otherwise a cheap, small removal would win on loss
   alone while saving next to nothing);
2. recalibrate BatchNorm for each candidate on a few training batches and score it by
   its cross-entropy on a held-out subset (a continuous score: top-1 on a small
   holdout is quantised and ranks by noise);
3. keep the candidate with the lowest loss. Every candidate saves about the same cost,
   so no accuracy-per-millisecond ratio is needed (that ratio favours the removals that
   save most, and drove the inner widths of the residual blocks to the floor).

A search (one *leg*) stops once ``stop`` holds, and never slims a group below
``floor``. Every recorded sub-net is a subset of the one before and contains the floor:
``run.py`` runs one leg per budget, each with the previous budget's pick as its floor,
so the picks nest. :func:`slim_search` is a generator of
:class:`~edgedyn.search.progressive.Step` records, as the progressive search is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from ..cost import CostModel
from ..dynamic import DynamicNet, SubnetSpec
from .dist import Dist
from .progressive import COST_EPS, Candidate, PathPoint, Step

#: ``score(spec) -> (loss, accuracy)`` on the scoring holdout.
Score = Callable[[SubnetSpec], tuple[float, float]]


def step_removals(net: DynamicNet, spec: SubnetSpec, cost_model: CostModel, current_cost: float,
                  step_cost: float, floor: SubnetSpec | None = None) -> list[tuple[int, SubnetSpec, float]]:
    """For each coupling group above its floor: ``(group, spec, cost)`` of the widest width
    below the current one that saves at least ``step_cost``; else the cheapest lower width,
    if it saves anything at all. ``floor`` (a sub-net ``spec`` contains) raises the floors:
    no width goes below it."""
    out = []
    for g in net.groups:
        widths = g.widths_from(None if floor is None else floor[g.index])
        i = widths.index(spec[g.index])
        if i == 0:
            continue
        chosen = None
        cheapest: tuple[SubnetSpec, float] | None = None
        for w in reversed(widths[:i]):
            cand = spec.replace(g.index, w)
            cost = float(cost_model.cost(net, cand))
            if cheapest is None or cost < cheapest[1] - COST_EPS:
                cheapest = (cand, cost)
            if current_cost - cost >= step_cost - COST_EPS:
                chosen = (cand, cost)
                break
        if chosen is None and cheapest is not None and current_cost - cheapest[1] > COST_EPS:
            chosen = cheapest
        if chosen is not None:
            out.append((g.index, chosen[0], chosen[1]))
    return out


def score_removals(removals: Sequence[tuple[int, SubnetSpec, float]], current: PathPoint, score: Score,
                   dist: Dist) -> list[Candidate]:
    """Score every removal on the holdout; each rank takes a share, results are gathered in order."""
    mine = [(i, g, s, c) for i, (g, s, c) in enumerate(removals)][dist.rank::dist.world]
    scored = [(i, g, s.widths, c, *score(s)) for i, g, s, c in mine]
    merged = sorted(x for part in dist.gather(scored) for x in part)
    base = current.loss if current.loss is not None else 0.0
    return [Candidate(g, SubnetSpec.of(w), cost, acc, loss - base, current.cost - cost, loss=loss)
            for _, g, w, cost, loss, acc in merged]


def slim_search(
    net: DynamicNet,
    cost_model: CostModel,
    score: Score,
    start: PathPoint,
    *,
    step_cost: float,
    stop: Callable[[PathPoint], bool],
    dist: Dist | None = None,
    max_steps: int | None = None,
    record: Score | None = None,
    floor: SubnetSpec | None = None,
) -> Iterator[Step]:
    """Greedy large-to-small slimming from ``start``; yields one :class:`Step` per step.

    Args:
        net: a one-shot trained dynamic network (every prefix slice usable).
        cost_model: prices a sub-net; the search never knows whether it is latency or MACs.
        score: ``(loss, accuracy)`` of a sub-net on the scoring holdout, BN recalibrated.
        start: the sub-net to continue from (the full model, or the last recorded point;
            its ``loss`` must be set).
        step_cost: the cost each step removes (in the cost model's unit).
        stop: stop once ``stop(point)`` is true for the last recorded sub-net.
        dist: split candidate scoring across ranks.
        max_steps: stop after this many steps.
        record: ``(loss, accuracy)`` of the chosen sub-net on the whole holdout; its accuracy
            is recorded on the path (default: the candidate's accuracy on the scoring subset).
        floor: a sub-net every point of the path must contain (default: the groups' floors).
    """
    return _greedy(lambda p: step_removals(net, p.spec, cost_model, p.cost, step_cost, floor), score, start,
                   step_cost=step_cost, stop=stop, dist=dist, max_steps=max_steps, record=record)


def _greedy(moves: Callable[[PathPoint], list[tuple[int, SubnetSpec, float]]], score: Score, start: PathPoint, *,
            step_cost: float, stop: Callable[[PathPoint], bool], dist: Dist | None, max_steps: int | None,
            record: Score | None) -> Iterator[Step]:
    """The loop :func:`slim_search` and :func:`grow_search` share: each step scores the
    ``moves`` that change the cost by the full ``step_cost`` (the shorter ones only when
    there are none) and keeps the lowest loss (ties: the larger saving, the lower group)."""
    dist = dist or Dist()
    current = start
    index = start.step
    while (max_steps is None or index < start.step + max_steps) and not stop(current):
        options = moves(current)
        if not options:
            return
        full = [m for m in options if abs(current.cost - m[2]) >= step_cost - COST_EPS]
        candidates = score_removals(full or options, current, score, dist)
        chosen = min(candidates, key=lambda c: (c.loss, -c.saved, c.group))
        index += 1
        acc = record(chosen.spec)[1] if record is not None else chosen.accuracy
        current = PathPoint(chosen.spec, chosen.cost, acc, index, 0, loss=chosen.loss)
        yield Step(index, tuple(candidates), chosen, current)


# -- growing: the same greedy search, from a small sub-net up to a budget ------------------
def step_additions(net: DynamicNet, spec: SubnetSpec, cost_model: CostModel, current_cost: float,
                   step_cost: float, fits: Callable[[SubnetSpec], bool]) -> list[tuple[int, SubnetSpec, float]]:
    """For each coupling group below its full width: ``(group, spec, cost)`` of the narrowest
    wider width that adds at least ``step_cost`` and still ``fits`` (the budget); else the
    widest wider width that fits, if it adds anything at all (:func:`step_removals` mirrored)."""
    out = []
    for g in net.groups:
        widths = g.widths_from()
        i = widths.index(spec[g.index])
        chosen = None
        widest: tuple[SubnetSpec, float] | None = None
        for w in widths[i + 1:]:
            cand = spec.replace(g.index, w)
            if not fits(cand):
                continue  # on a latency table a wider width can be cheaper (channel blocks)
            cost = float(cost_model.cost(net, cand))
            if cost - current_cost > COST_EPS:
                widest = (cand, cost)
            if cost - current_cost >= step_cost - COST_EPS:
                chosen = (cand, cost)
                break
        if chosen is None:
            chosen = widest
        if chosen is not None:
            out.append((g.index, chosen[0], chosen[1]))
    return out


def grow_search(
    net: DynamicNet,
    cost_model: CostModel,
    score: Score,
    start: PathPoint,
    *,
    step_cost: float,
    fits: Callable[[SubnetSpec], bool],
    dist: Dist | None = None,
    max_steps: int | None = None,
    record: Score | None = None,
) -> Iterator[Step]:
    """Greedy small-to-large growing from ``start`` while the sub-net ``fits``; one
    :class:`Step` per step.

    Each step widens one coupling group by (about) ``step_cost`` and keeps the candidate
    with the lowest held-out loss; a candidate that adds less than the step (the budget is
    near) competes only when none adds the full step. It stops when no wider sub-net fits.
    Every recorded sub-net contains the one before, and so ``start``. Arguments as
    :func:`slim_search`; a step's ``saved`` is negative (cost added).
    """
    return _greedy(lambda p: step_additions(net, p.spec, cost_model, p.cost, step_cost, fits), score, start,
                   step_cost=step_cost, stop=lambda p: False, dist=dist, max_steps=max_steps, record=record)
