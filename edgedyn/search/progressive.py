"""The progressive sub-net search (Yang et al., arXiv 2009.05681), large to small.

This file holds the whole search; everything else (training loops, ranking, the cost
model) is passed in. Starting from the full model (channels already ranked so that a
prefix keeps the most important ones), each step:

1. tentatively removes the next channel group of every coupling group above its floor;
2. prices each candidate with the cost model (latency in ms, or MMAC) and scores it on
   the *holdout* split (never the test split);
3. keeps the removal with the least accuracy lost per unit of cost saved and records
   the new width vector, so every recorded sub-net is nested in the one before;
4. when holdout accuracy falls below the threshold, fine-tunes the current sub-net
   briefly (pruned channels masked) until it is back above, or a cap is hit.

:func:`progressive_search` is a generator of :class:`Step` records, so a caller can
checkpoint, log or stop after any step and resume from the last :class:`PathPoint`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..cost import CostModel
from ..dynamic import DynamicNet, SubnetSpec
from ..errors import EdgedynError
from .dist import Dist

#: Step criteria of the progressive search (see :meth:`Candidate.rank_key`).
CRITERIA = ("ratio", "drop")
#: Cost differences below this are "no saving" (a latency table can price two widths alike).
COST_EPS = 1e-9


@dataclass(frozen=True)
class Threshold:
    """When to fine-tune: holdout accuracy below ``value`` (``kind="abs"``, a fraction),
    below the full model's accuracy minus ``value`` (``kind="drop"``), or never."""

    kind: str = "none"
    value: float = 0.0

    @classmethod
    def parse(cls, text: str | float | None) -> Threshold:
        """``"50%"``, ``"0.5"``, ``"50"``: absolute top-1; ``"drop:5"`` / ``"drop:0.05"``:
        at most 5 points below the full model; ``"none"``: never fine-tune."""
        if text is None:
            return cls()
        raw = str(text).strip().lower()
        if raw in ("", "none", "off", "no"):
            return cls()
        kind = "abs"
        if raw.startswith("drop:"):
            kind, raw = "drop", raw[5:].strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(%?)", raw)
        if not m:
            raise EdgedynError(f"threshold {text!r} is not understood; use e.g. '50%', '0.5' or 'drop:5'")
        value = float(m.group(1))
        if m.group(2) or value > 1:
            value /= 100.0
        if not 0.0 <= value <= 1.0:
            raise EdgedynError(f"threshold {text!r} is outside 0-100%")
        return cls(kind, value)

    def target(self, full_accuracy: float) -> float:
        """The holdout accuracy below which fine-tuning starts."""
        if self.kind == "abs":
            return self.value
        if self.kind == "drop":
            return full_accuracy - self.value
        return -math.inf

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        pct = f"{100 * self.value:g}%"
        return pct if self.kind == "abs" else f"drop:{100 * self.value:g}"


@dataclass(frozen=True)
class PathPoint:
    """One recorded sub-net of the search path."""

    spec: SubnetSpec
    cost: float
    accuracy: float  # holdout top-1, after any fine-tuning at this step
    step: int = 0
    finetune_batches: int = 0
    loss: float | None = None  # scoring loss (the slimming search's baseline for the next step)

    def to_dict(self) -> dict[str, Any]:
        d = {"widths": list(self.spec.widths), "cost": self.cost, "holdout_accuracy": self.accuracy,
             "step": self.step, "finetune_batches": self.finetune_batches}
        if self.loss is not None:
            d["loss"] = self.loss
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PathPoint:
        loss = d.get("loss")
        return cls(SubnetSpec.of(d["widths"]), float(d["cost"]), float(d["holdout_accuracy"]),
                   int(d["step"]), int(d.get("finetune_batches", 0)), None if loss is None else float(loss))


@dataclass(frozen=True)
class Candidate:
    """One tentative removal: group ``group`` drops to its next smaller grid width."""

    group: int
    spec: SubnetSpec
    cost: float
    accuracy: float
    lost: float = 0.0  # holdout accuracy lost (slimming: loss gained) vs the current sub-net
    saved: float = 0.0  # cost saved vs the current sub-net
    loss: float | None = None  # scoring loss (slimming search)

    @property
    def score(self) -> float:
        """Accuracy lost per unit of cost saved (lower is better; inf when nothing is saved)."""
        return self.lost / self.saved if self.saved > COST_EPS else math.inf

    def rank_key(self, criterion: str = "ratio") -> tuple:
        """Sort key, lowest first. Removals that save cost always come first; among them
        ``ratio`` (edgedyn's first criterion) ranks by accuracy lost per unit of cost saved,
        ``drop`` (the paper's) by accuracy lost alone, blind to cost (re-selection handles
        cost). Ties: the larger saving, then the lower group index (deterministic)."""
        saves = self.saved > COST_EPS
        key = self.score if (saves and criterion == "ratio") else self.lost
        return (not saves, key, -self.saved, self.group)

    def to_dict(self) -> dict[str, Any]:
        d = {"group": self.group, "widths": list(self.spec.widths), "cost": self.cost,
             "holdout_accuracy": self.accuracy, "score": None if math.isinf(self.score) else self.score}
        if self.loss is not None:
            d["loss"] = self.loss
        return d


@dataclass(frozen=True)
class Step:
    """What one search step saw and did."""

    index: int
    candidates: tuple[Candidate, ...]
    chosen: Candidate
    point: PathPoint  # the recorded sub-net (accuracy after fine-tuning, if any)
    target: float = field(default=-math.inf)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.index, "chosen_group": self.chosen.group, "point": self.point.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates]}


def next_removals(net: DynamicNet, spec: SubnetSpec) -> list[tuple[int, SubnetSpec]]:
    """For every coupling group above its floor, the spec with its next channel group removed."""
    out = []
    for g in net.groups:
        widths = g.widths_from()
        i = widths.index(spec[g.index])
        if i > 0:
            out.append((g.index, spec.replace(g.index, widths[i - 1])))
    return out


def score_candidates(net: DynamicNet, current: PathPoint, removals: Sequence[tuple[int, SubnetSpec]],
                     cost_model: CostModel, evaluate: Callable[[SubnetSpec], float], dist: Dist) -> list[Candidate]:
    """Price and score ``removals``; each rank takes a share, results are gathered in order."""
    mine = [(i, g, s) for i, (g, s) in enumerate(removals)][dist.rank::dist.world]
    scored = [(i, g, s.widths, float(cost_model.cost(net, s)), float(evaluate(s))) for i, g, s in mine]
    merged = sorted(x for part in dist.gather(scored) for x in part)
    return [Candidate(g, SubnetSpec.of(w), cost, acc, current.accuracy - acc, current.cost - cost)
            for _, g, w, cost, acc in merged]


def progressive_search(
    net: DynamicNet,
    cost_model: CostModel,
    evaluate: Callable[[SubnetSpec], float],
    start: PathPoint,
    *,
    target: float = -math.inf,
    finetune: Callable[[SubnetSpec, float], tuple[float, int]] | None = None,
    dist: Dist | None = None,
    max_steps: int | None = None,
    criterion: str = "ratio",
    stop: Callable[[PathPoint], bool] | None = None,
) -> Iterator[Step]:
    """Greedy large-to-small search from ``start``; yields one :class:`Step` per removal.

    Args:
        net: the ranked dynamic network (prefix slices keep the most important channels).
        cost_model: prices a sub-net (``cost(net, spec)``); the search never knows which.
        evaluate: holdout top-1 accuracy of a sub-net.
        start: the sub-net to continue from (the full model, or the last recorded point).
        target: fine-tune when the chosen sub-net's holdout accuracy falls below it.
        finetune: ``finetune(spec, target) -> (accuracy, batches)``; None disables it.
        dist: split candidate scoring across ranks.
        max_steps: stop after this many steps (all groups at their floor ends it anyway).
        criterion: ``"ratio"`` (accuracy lost per cost saved) or ``"drop"`` (the paper's
            least accuracy lost); see :meth:`Candidate.rank_key`.
        stop: stop once ``stop(point)`` is true for the last recorded sub-net (e.g. it fits
            the smallest budget); None runs until every group is at its floor.
    """
    if criterion not in CRITERIA:
        raise EdgedynError(f"criterion {criterion!r} is unknown; use one of {', '.join(CRITERIA)}")
    dist = dist or Dist()
    current = start
    index = start.step
    while max_steps is None or index < start.step + max_steps:
        if stop is not None and stop(current):
            return
        removals = next_removals(net, current.spec)
        if not removals:
            return
        candidates = score_candidates(net, current, removals, cost_model, evaluate, dist)
        chosen = min(candidates, key=lambda c: c.rank_key(criterion))
        index += 1
        accuracy, batches = chosen.accuracy, 0
        if finetune is not None and accuracy < target:
            accuracy, batches = finetune(chosen.spec, target)
        current = PathPoint(chosen.spec, chosen.cost, accuracy, index, batches)
        yield Step(index, tuple(candidates), chosen, current, target)
