"""What deploy evaluates sub-nets on: the run's test and holdout splits, the fp32 PyTorch
references, and the choice of the search picks worth deploying (:func:`dominated`).

Decisions (which picks to deploy, the selector's ranking) use the run's holdout, a part of the
training data; the test split only reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..dynamic import DynamicNet

log = logging.getLogger("edgedyn.deploy")


def split_arrays(splits: Any, limit: int | None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` samples (all: None) of ``splits.<split>``, as float32 inputs and labels."""
    from ..data import make_loader

    xs, ys, n = [], [], 0
    for x, y in make_loader(getattr(splits, split), 256, shuffle=False):
        xs.append(x.numpy())
        ys.append(y.numpy())
        n += len(y)
        if limit is not None and n >= limit:
            break
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


def predict_torch(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Top-1 class of every sample of ``x`` under a PyTorch model (batches of 512)."""
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[k:k + 512])).argmax(1).numpy()
                               for k in range(0, len(x), 512)])


class References:
    """Each sub-net's fp32 PyTorch model, its top-1 predictions on the test split and its
    accuracy on the holdout, computed once per spec."""

    def __init__(self, net_for: Callable[[Any], DynamicNet], x_test: np.ndarray, x_hold: np.ndarray,
                 y_hold: np.ndarray) -> None:
        # net_for(spec): the network whose weights serve the sub-net (RunInfo.net_for)
        self.net_for, self.x_test, self.x_hold, self.y_hold = net_for, x_test, x_hold, y_hold
        self._refs: dict[Any, tuple[torch.nn.Module, np.ndarray]] = {}
        self._holdout: dict[Any, float] = {}

    def reference(self, spec: Any) -> tuple[torch.nn.Module, np.ndarray]:
        """The sub-net's fp32 PyTorch model and its top-1 predictions on the test split."""
        if spec not in self._refs:
            model = self.net_for(spec).extract(spec).cpu().eval()
            self._refs[spec] = (model, predict_torch(model, self.x_test))
            y = self.y_hold
            self._holdout[spec] = float(np.mean(predict_torch(model, self.x_hold) == y)) if len(y) else float("nan")
        return self._refs[spec]

    def holdout_accuracy(self, spec: Any) -> float:
        """fp32 accuracy on the holdout (NaN without a holdout)."""
        self.reference(spec)
        return self._holdout[spec]


def dominated(subnets: Sequence[Any], accuracy: dict[int, float]) -> dict[int, int]:
    """Search picks no more accurate than a cheaper pick: index -> the cheaper pick serving it.

    ``accuracy`` is each pick's fp32 accuracy on deploy's evaluation (test) split, the
    accuracy the runtime selector ranks sub-nets by: the selector runs the most accurate
    sub-net that fits a budget, and a cheaper pick fits every budget a dominated one fits,
    so the dominated one would never run. Picks are ordered by MACs (they are nested).
    """
    out: dict[int, int] = {}
    best = None
    for s in sorted(subnets, key=lambda s: (s.macs, s.index)):
        if best is not None and accuracy[s.index] <= accuracy[best.index]:
            out[s.index] = best.index
        else:
            best = s
    return out


def leave_out_dominated(subnets: Sequence[Any], refs: References, notes: list[str]) -> dict[int, int]:
    """:func:`dominated` by fp32 holdout accuracy, with a note per pick left out (appended to ``notes``)."""
    by_index = {s.index: s for s in subnets}
    fp32_acc = {s.index: refs.holdout_accuracy(s.spec) for s in subnets}
    served_by = dominated(subnets, fp32_acc)
    for i, j in served_by.items():
        notes.append(f"search pick {i} {by_index[i].spec} left out: its fp32 holdout accuracy "
                     f"{100 * fp32_acc[i]:.2f}% is not above pick {j}'s {100 * fp32_acc[j]:.2f}%, which costs "
                     f"less; pick {j} serves its budget")
        log.info("%s", notes[-1])
    return served_by
