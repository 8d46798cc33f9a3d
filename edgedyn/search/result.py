"""A search run's result: the chosen sub-nets, the path, ``subnets.json`` and ``weights.pt``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import load_json
from ..dynamic import DynamicNet, SubnetSpec
from .config import SearchConfig
from .progressive import PathPoint
from .reselect import Budget

RESULT_SCHEMA = "edgedyn.search_result/1"
log = logging.getLogger("edgedyn.search")


@dataclass(frozen=True)
class ChosenSubnet:
    budget: Budget
    spec: SubnetSpec
    cost: float
    macs: int
    params: int
    holdout_accuracy: float
    test_accuracy: float
    before_train: dict[str, float] | None = None  # autoslim: accuracies on the one-shot weights
    weights: str | None = None  # the file of its own network (torch-pruning); None: weights.pt

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"budget": self.budget.to_dict(), "widths": list(self.spec.widths), "cost": self.cost,
                             "macs": self.macs, "params": self.params, "holdout_accuracy": self.holdout_accuracy,
                             "test_accuracy": self.test_accuracy}
        if self.before_train is not None:
            d["before_train"] = self.before_train
        if self.weights is not None:
            d["weights"] = self.weights
        return d


@dataclass
class SearchResult:
    config: SearchConfig
    net: DynamicNet
    cost_name: str
    cost_unit: str
    full_cost: float
    subnets: list[ChosenSubnet]
    path: list[PathPoint]
    steps: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    # wall and CPU seconds: ``PHASE_s`` / ``PHASE_cpu_s`` per phase run in this process
    # (pretrain, rank, supernet, train, search, final; a resumed run counts only what it ran
    # itself after the last checkpoint), and ``before_train_s`` of the optional diagnostic
    timings: dict[str, float] = field(default_factory=dict)
    legs: list[dict[str, Any]] = field(default_factory=list)  # autoslim: the search's legs (floor, path indices)

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "schema": RESULT_SCHEMA,
            "config": c.to_dict(),
            "net": self.net.config(),
            "signature": self.net.signature(),
            "cost": {"name": self.cost_name, "unit": self.cost_unit, "full": self.full_cost},
            "table": {"path": c.table, "measured": c.table_measured},
            "subnets": [s.to_dict() for s in self.subnets],
            "average_test_accuracy": (sum(s.test_accuracy for s in self.subnets) / len(self.subnets)
                                      if self.subnets else None),
            "path": [p.to_dict() for p in self.path],
            "steps": self.steps,
            "legs": self.legs,
            "timings": self.timings,
        }


def load_result(path: str | Path) -> dict[str, Any]:
    """Load a ``subnets.json`` (or a run directory holding one), checking its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "subnets.json"
    from ..validate import validate_search_result

    doc = load_json(path, RESULT_SCHEMA)
    validate_search_result(doc, str(path))  # every number finite and in its range
    return doc
