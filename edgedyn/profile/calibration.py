"""Whole-network calibration: from a table's blocks to a sub-net's measured latency.

A block timed alone is not the block inside a network: its neighbours leave different
data in cache, and one 10-50 us block moves 10-15% with the blocks timed around it. A few
dozen whole sub-nets, measured end to end as deploy runs them, correct for this in two
stages, both fitted here:

1. **A linear model over sub-net features** (:data:`FEATURES`): the block sum, and the
   weight and activation elements the sub-net's blocks touch. Leave-one-out error decides
   whether the memory terms are kept.
2. **Per-block corrections, fitted jointly** (:func:`fit_calibration` with ``counts``):
   each block's isolated timing is a Gaussian prior on its in-network cost (standard
   deviation ``prior_rel`` times the block's timing *as measured*, the call's fixed cost
   included: a cold call's error scales with what was timed, so a 3 us block timed in a
   35 us call is as uncertain as the call), each whole sub-net an observation of the sum
   of its blocks (standard deviation :data:`NOISE_REL` of its latency). The corrections
   are the posterior mean (ridge regression towards the table). ``prior_rel`` is chosen
   by k-fold cross-validation over the calibration sub-nets, ``0`` (no corrections)
   included, so the corrections are kept only where they predict unseen sub-nets better.

A prediction is ``sum(coef[f] * feature f) + offset_ms``, where the block sum adds each
block's correction (:meth:`Calibration.apply`, via ``LatencyTable.features``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..blocks.layout import as_run, pad_channels
from ..errors import EdgedynError

if TYPE_CHECKING:
    from ..blocks import BlockKey

FEATURES = ("block_sum", "weight_melems", "act_melems")
NOISE_REL = 0.02  # relative spread of one whole-sub-net measurement (per-call median of 15-200 calls)
PRIOR_RELS = (0.0, 0.05, 0.1, 0.2, 0.4)  # candidate prior widths of the per-block corrections
PRIOR_FLOOR_MS = 1e-3  # prior width floor (ms) for timings of ~0 ms
MIN_FOR_MEMORY_TERMS = 8
MIN_FOR_CORRECTIONS = 16
FOLDS = 5


def key_features(keys: Sequence[BlockKey]) -> tuple[float, float]:
    """(weight, output activation) elements, in millions, of conv and linear blocks, as laid out."""
    w = a = 0.0
    for k in keys:
        if k.op == "conv":  # the shapes ONNX Runtime computes (NCHWc: padded channels)
            c_out = pad_channels(k.c_out, k.nchwc_block)
            c_in = 1 if k.depthwise else k.group_width or as_run(k).c_in
            oh, ow = k.out_hw
            w += c_out * c_in * k.kernel_hw[0] * k.kernel_hw[1]
            a += k.batch * c_out * oh * ow
        elif k.op == "linear":
            w += k.c_in * k.c_out
            a += k.batch * k.c_out * k.in_h * k.in_w  # positions: 1 x 1 after a flatten
    return w / 1e6, a / 1e6


@dataclass
class Calibration:
    """The fitted correction of one model: ``measured = sum(coef[f] * f) + offset_ms``.

    ``coef`` always has ``block_sum``. ``corrections`` (ms per block key, possibly empty)
    are added to the block entries before the block sum; ``prior_rel`` is the prior width
    cross-validation chose for them (0: none). ``cv_mape`` (%) is the k-fold error of the
    whole procedure on the calibration sub-nets.
    """

    model: str
    coef: dict[str, float]
    offset_ms: float
    n: int
    points: list[dict[str, Any]] = field(default_factory=list)  # spec widths, features, measured
    cv_mape: float | None = None
    corrections: dict[BlockKey, float] = field(default_factory=dict)
    prior_rel: float = 0.0
    model_ref: dict[str, Any] | None = None  # ModelRef.to_dict() of the profiled model (None in older tables)

    @property
    def scale(self) -> float:
        return self.coef["block_sum"]

    def apply(self, features: dict[str, float]) -> float:
        return sum(c * features[f] for f, c in self.coef.items()) + self.offset_ms


@dataclass
class CalibrationFit:
    """What :func:`fit_calibration` returns; ``corrections`` is indexed like ``counts``' columns."""

    coef: dict[str, float]
    offset_ms: float
    cv_mape: float
    corrections: np.ndarray | None = None
    prior_rel: float = 0.0


def _feature_model(feats: list[dict[str, float]], measured: np.ndarray) -> tuple[str, ...]:
    """The feature set with the lower leave-one-out MAPE (and a positive block-sum scale)."""
    candidates: list[tuple[str, ...]] = [("block_sum",)]
    if len(measured) >= MIN_FOR_MEMORY_TERMS:
        candidates.append(FEATURES)
    best: tuple[float, tuple[str, ...]] | None = None
    for names in candidates:
        x = _design(feats, names)
        errs = []
        for i in range(len(measured)):
            keep = np.arange(len(measured)) != i
            c, *_ = np.linalg.lstsq(x[keep], measured[keep], rcond=None)
            errs.append(abs(x[i] @ c - measured[i]) / measured[i])
        c, *_ = np.linalg.lstsq(x, measured, rcond=None)
        cv = float(np.mean(errs))
        if c[0] > 0 and (best is None or cv < best[0]):
            best = (cv, names)
    if best is None:
        raise EdgedynError("calibration failed: the fitted block-sum scale is <= 0 (measurements too noisy?)")
    return best[1]


def _design(feats: list[dict[str, float]], names: tuple[str, ...]) -> np.ndarray:
    return np.array([[f[n] for n in names] + [1.0] for f in feats])


def _corrections(counts: np.ndarray, timed_ms: np.ndarray, residual: np.ndarray, measured: np.ndarray,
                 scale: float, prior_rel: float) -> np.ndarray:
    """Posterior mean of per-block corrections (ms) given whole-sub-net residuals."""
    a = counts * scale / (NOISE_REL * measured)[:, None]
    tau = prior_rel * np.maximum(timed_ms, PRIOR_FLOOR_MS)
    h = a.T @ a + np.diag(1.0 / tau ** 2)
    return np.linalg.solve(h, a.T @ (residual / (NOISE_REL * measured)))


def _fit(feats, measured, names, counts, timed_ms, prior_rel):
    x = _design(feats, names)
    c, *_ = np.linalg.lstsq(x, measured, rcond=None)
    d = None
    if prior_rel > 0:
        d = _corrections(counts, timed_ms, measured - x @ c, measured, c[0], prior_rel)
    return c, d


def fit_calibration(feats: list[dict[str, float]], measured: Sequence[float] | np.ndarray,
                    counts: np.ndarray | None = None, timed_ms: np.ndarray | None = None) -> CalibrationFit:
    """Fit the calibration of one model on whole sub-nets (see the module docstring).

    ``feats`` are the sub-nets' uncorrected features, ``measured`` their latencies (ms).
    With ``counts`` (sub-nets x block keys: how often each key occurs) and ``timed_ms`` (each
    key's timing as measured, the call's fixed cost included: it sets the prior's width),
    per-block corrections are fitted where cross-validation says they help; they need at
    least :data:`MIN_FOR_CORRECTIONS` sub-nets.
    """
    measured = np.asarray(measured, float)
    names = _feature_model(feats, measured)
    rels = PRIOR_RELS if counts is not None and timed_ms is not None and len(measured) >= MIN_FOR_CORRECTIONS \
        else (0.0,)
    n = len(measured)
    folds = min(FOLDS, n)
    fold = np.arange(n) % folds
    best: tuple[float, float] | None = None
    for rel in rels:
        errs = np.empty(n)
        for f in range(folds):
            tr, te = fold != f, fold == f
            c, d = _fit([feats[i] for i in np.flatnonzero(tr)], measured[tr], names,
                        None if counts is None else counts[tr], timed_ms, rel)
            pred = _design([feats[i] for i in np.flatnonzero(te)], names) @ c
            if d is not None and counts is not None:
                pred = pred + c[0] * (counts[te] @ d)
            errs[te] = np.abs(pred - measured[te]) / measured[te]
        cv = float(errs.mean() * 100)
        if best is None or cv < best[0] - 1e-9:
            best = (cv, rel)
    assert best is not None
    cv, rel = best
    c, d = _fit(feats, measured, names, counts, timed_ms, rel)
    if c[0] <= 0:
        raise EdgedynError("calibration failed: the fitted block-sum scale is <= 0 (measurements too noisy?)")
    return CalibrationFit(dict(zip(names, (float(v) for v in c[:-1]))), float(c[-1]), cv, d, rel)
