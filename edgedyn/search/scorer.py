"""Scoring candidates on the holdout: one :class:`Scorer` per run, with its memo.

The search scores candidates on a fixed, seeded subset of the holdout (``score``) and
records the points it keeps on the whole holdout (``record``); each after a temporary BN
recalibration. A score depends only on the weights, the scoring images and the BN batches,
so each sub-net is scored once on the current weights (the memo, cleared whenever training
changes them). Tests and experiments inject a subclass (``run_search(..., scorer=...)``):
:meth:`Scorer.measure_score` and :meth:`Scorer.measure_record` are the evaluations the memo
saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dynamic import DynamicNet, SubnetSpec
from . import train
from .train import Batch


@dataclass
class EvalSplits:
    """The held-out batches a run evaluates on."""

    holdout: list[Batch]  # the whole holdout: recorded points, picks
    score_set: list[Batch]  # the scoring subset (the whole holdout when there is none)
    score_rest: list[Batch] | None  # the holdout less the scoring subset (None: no subset)
    test: list[Batch]  # reported only
    calib: list[Batch]  # BN recalibration batches per candidate (empty: shared statistics)


class Scorer:
    """``score`` / ``record`` of sub-nets on the current weights, each once (``memo=False``: every call evaluates)."""

    def __init__(self, net: DynamicNet, splits: EvalSplits, device: str = "cpu", *, memo: bool = True) -> None:
        self.net, self.splits, self.device, self.memo = net, splits, device, memo
        self._score_n = sum(int(y.numel()) for _, y in splits.score_set)
        self._rest_n = sum(int(y.numel()) for _, y in splits.score_rest or [])
        # the last step's scores: BN statistics and the scoring subset's sums, which ``record`` reuses
        self._scored: dict[SubnetSpec, tuple[Any, float, int, int]] = {}
        self._memo: dict[tuple[str, SubnetSpec], tuple[float, float]] = {}

    def clear(self) -> None:
        """Forget every score (the weights changed)."""
        self._memo.clear()

    def accuracy(self, spec: SubnetSpec) -> float:
        """Held-out accuracy on the scoring subset, after a temporary BN recalibration (not memoised)."""
        return train.calibrated_accuracy(self.net, spec, self.splits.score_set, self.splits.calib, self.device)

    def score(self, spec: SubnetSpec) -> tuple[float, float]:
        """(loss, accuracy) on the scoring subset, after a temporary BN recalibration (once per
        sub-net on the current weights)."""
        if not self.memo:
            return self.measure_score(spec)
        key = ("score", spec)
        if key not in self._memo:
            self._memo[key] = self.measure_score(spec)
        return self._memo[key]

    def record(self, spec: SubnetSpec) -> tuple[float, float]:
        """(loss, accuracy) on the whole holdout, after a temporary BN recalibration (once per
        sub-net on the current weights)."""
        if not self.memo:
            return self.measure_record(spec)
        key = ("record", spec)
        if key not in self._memo:
            self._memo[key] = self.measure_record(spec)
        return self._memo[key]

    def measure_score(self, spec: SubnetSpec) -> tuple[float, float]:
        """Evaluate ``spec`` on the scoring subset (what ``score`` memoises)."""
        s = self.splits
        if s.score_rest is None:
            return train.calibrated_loss_and_accuracy(self.net, spec, s.score_set, s.calib, self.device)
        with train.temporary_bn(self.net, spec, s.calib):
            loss, acc = train.loss_and_accuracy(self.net, spec, s.score_set, self.device)
            n = self._score_n
            self._scored[spec] = (self.net.bn_stats.get(spec), loss * n, round(acc * n), n)
        return loss, acc

    def measure_record(self, spec: SubnetSpec) -> tuple[float, float]:
        """Evaluate ``spec`` on the whole holdout (what ``record`` memoises).

        With a scoring subset, the holdout is its subset and the rest: a sub-net the last
        step scored keeps its BN statistics and subset sums, and only the rest is evaluated
        (every rank computes the same sums whether it scored the sub-net or not)."""
        s = self.splits
        if s.score_rest is None:
            return train.calibrated_loss_and_accuracy(self.net, spec, s.holdout, s.calib, self.device)
        if spec not in self._scored:
            self.measure_score(spec)
        stats, loss_sum, correct, n = self._scored[spec]
        self._scored.clear()
        with train.temporary_bn(self.net, spec, s.calib, stats=stats):
            loss, acc = train.loss_and_accuracy(self.net, spec, s.score_rest, self.device)
        m = self._rest_n
        return (loss_sum + loss * m) / (n + m), (correct + round(acc * m)) / (n + m)
