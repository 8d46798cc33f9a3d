"""Whole sub-nets against the table: which ones calibrate and validate it, the calibration
fit written into the table, and the validation score.

The profiler measures the sub-nets (:meth:`~edgedyn.profile.profiler.Profiler._measure_specs`);
``edgedyn profile --refit`` reuses the timings a table holds (:mod:`~edgedyn.profile.refit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import FOLDS, Calibration, fit_calibration
from .table import LatencyTable

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec

CALIBRATION_SEED = 10_000
FLOOR_P = 0.5  # calibration's floor-heavy sub-nets: each group at its floor with this probability
VALIDATION_SEED = 20_000


def calibration_specs(net: DynamicNet, calibrate: int) -> list[SubnetSpec]:
    """The smallest, the full and three uniform sub-nets, then random ones; one random
    sub-net in three has each group at its floor with probability 1/2 (the search's
    picks are thin: without these, the table read sub-nets with 2-channel inner layers
    5-11 % slow, and predicted random ones no better)."""
    n = max(calibrate, 2)
    specs = list(dict.fromkeys([net.min_spec(), net.full_spec()] + [net.uniform_spec(r) for r in (0.25, 0.5, 0.75)]))
    i = 0
    while len(specs) < n:
        s = net.random_spec(CALIBRATION_SEED + i, floor_p=FLOOR_P if i % 3 == 2 else 0.0)
        i += 1
        if s not in specs:
            specs.append(s)
    return specs[:n]


def validation_specs(net: DynamicNet, validate: int, calibrate: int) -> list[SubnetSpec]:
    """``validate`` random sub-nets, none of the ``calibrate`` used for calibration."""
    cal = set(calibration_specs(net, calibrate))
    specs: list[SubnetSpec] = []
    i = 0
    while len(specs) < validate:
        s = net.random_spec(VALIDATION_SEED + i)
        i += 1
        if s not in cal and s not in specs:
            specs.append(s)
    return specs


def fit_table_calibration(table: LatencyTable, net: DynamicNet, specs: list[SubnetSpec], measured: np.ndarray,
                          log: Callable[[str], None]) -> None:
    """Fit ``net``'s calibration in ``table`` on whole sub-nets ``specs`` measured at ``measured`` ms."""
    spec_keys = [table.keys(net, s) for s in specs]
    feats = [table.features_of_keys(net, ks) for ks in spec_keys]
    keys = sorted({k for ks in spec_keys for k in ks})
    col = {k: j for j, k in enumerate(keys)}
    counts = np.zeros((len(specs), len(keys)))
    for i, ks in enumerate(spec_keys):
        for k in ks:
            counts[i, col[k]] += 1
    # the prior's width follows each block's timing as measured, the call's fixed cost
    # included (a block timed at about that cost has a near-zero entry, not a certain one)
    timed = np.array([table.entries[k].ms for k in keys])
    fit = fit_calibration(feats, measured, counts, timed)
    corrections = {} if fit.corrections is None else {
        k: float(d) for k, d in zip(keys, fit.corrections) if abs(d) > 1e-7}
    points = [{"widths": list(s.widths), **{k: round(float(v), 5) for k, v in f.items()},
               "measured_ms": round(float(m), 4)} for s, f, m in zip(specs, feats, measured)]
    table.calibration[net.arch_signature()] = Calibration(
        f"{net.name}@{net.input_shape[-1]}", fit.coef, fit.offset_ms, len(specs), points, fit.cv_mape,
        corrections, fit.prior_rel, net.model_ref.to_dict() if net.model_ref is not None else None)
    terms = " + ".join(f"{v:.4g} x {k}" for k, v in fit.coef.items())
    fixed = (f"; per-block corrections on {len(corrections)} blocks (prior width {fit.prior_rel:g})"
             if corrections else "; no per-block corrections (they did not cross-validate)")
    log(f"calibration on {len(specs)} sub-nets: measured = {terms} + {fit.offset_ms:.4f} ms{fixed} "
        f"({FOLDS}-fold MAPE {fit.cv_mape:.2f}%)")


def score_validation(table: LatencyTable, net: DynamicNet, specs: list[SubnetSpec], measured: np.ndarray,
                     log: Callable[[str], None]) -> None:
    """Record in ``table`` its accuracy on unseen sub-nets ``specs`` measured at ``measured`` ms."""
    from scipy.stats import spearmanr

    pred = np.array([table.predict(net, s) for s in specs])
    macs = np.array([net.macs(s) for s in specs], float)
    err = np.abs(pred - measured) / measured
    result: dict[str, Any] = {
        "model": f"{net.name}@{net.input_shape[-1]}",
        "k": len(specs),
        "mape": round(float(err.mean() * 100), 3),
        "within_10pct": round(float((err <= 0.10).mean() * 100), 2),
        "spearman_table": _rank_corr(spearmanr, pred, measured),
        "spearman_flops": _rank_corr(spearmanr, macs, measured),
        "points": [{"widths": list(s.widths), "predicted_ms": round(float(p), 4),
                    "measured_ms": round(float(m), 4), "mmacs": round(float(a) / 1e6, 3)}
                   for s, p, m, a in zip(specs, pred, measured, macs)],
    }
    table.validation[net.arch_signature()] = result
    log(f"validation on K={result['k']} unseen sub-nets: MAPE {result['mape']:.2f}%  "
        f"within 10%: {result['within_10pct']:.1f}%  Spearman table {_fmt(result['spearman_table'])}  "
        f"Spearman FLOPs {_fmt(result['spearman_flops'])}")


def _fmt(rho: float | None) -> str:
    return "n/a" if rho is None else f"{rho:.4f}"


def _rank_corr(spearmanr: Callable[..., Any], a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho rounded, or None where it is undefined (constant values: NaN, which JSON
    must not hold)."""
    rho = float(spearmanr(a, b).statistic)
    return round(rho, 4) if np.isfinite(rho) else None
