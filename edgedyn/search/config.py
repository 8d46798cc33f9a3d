"""``SearchConfig``: everything a search run depends on, recorded in ``subnets.json``.

One flat dataclass, the user-facing settings of every method: the shared ones (model,
data, budgets, training, scoring) are checked here; a method's own (autoslim's
``slim_step``, progressive's ``criterion``, ...) are read, checked and used by that method
through its options dataclass (:meth:`SearchConfig.method_options`). A method whose options
have no field here takes them from ``options``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import EdgedynError
from .registry import MethodOptions, method_options

#: the budget margin where none is given and the latency table gives none (FLOPs, too few checked sub-nets)
DEFAULT_MARGIN = 0.02


@dataclass
class SearchConfig:
    """Everything a search run depends on (recorded in ``subnets.json``)."""

    model: str = "resnet20"
    data: str = "digits"
    input_size: int | None = None
    budgets: str = "0.25,0.5,0.75,1.0"
    method: str = "autoslim"
    ranking: str = "noise"
    criterion: str = "ratio"  # progressive: "ratio" (edgedyn's first) or "drop" (the paper's)
    channel_groups: int = 8
    group_size: int | None = None
    min_groups: int = 1
    threshold: str = "drop:5"
    pretrain_epochs: int = 5
    rank_epochs: int = 1
    train_epochs: int = 5  # joint (sandwich) epochs; autoslim: one-shot + chosen sub-nets together
    final_epochs: int | None = None  # autoslim: the last epochs train the chosen sub-nets only (None: a third)
    slim_step: float = 0.05  # autoslim: cost removed per step, a fraction of the full model's
    supernet_students: str = "uniform"  # autoslim's one-shot widths: "uniform" (US-Nets') or "random" (per group)
    uniform_candidates: bool = True  # autoslim: re-selection also weighs the uniform widths (nested picks)
    direction: str = "slim"  # autoslim: "slim" from the full model to each budget, or "grow" each pick up to it
    before_train: bool = False  # autoslim: also report the picks' accuracy on the one-shot weights (ablation)
    score_samples: int | None = 500  # holdout images that score search candidates (None: all)
    # picks must fit (1 - margin) x a budget below the full model; None: from the latency table's
    # error tail (LatencyTable.margin), else DEFAULT_MARGIN
    budget_margin: float | None = None
    budget_margin_from: str | None = None  # where a margin taken from the table came from (recorded)
    finetune_batches: int = 50  # cap per fine-tuning
    finetune_check: int = 10  # holdout check every this many batches
    lr: float = 0.05
    rank_lr: float = 0.01
    finetune_lr: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    batches_per_epoch: int | None = None  # cap (quick runs, tests)
    search_calib_batches: int = 4  # BN recalibration per candidate (0: shared statistics)
    calib_batches: int = 200  # final per-sub-net BN recalibration
    max_steps: int | None = None
    data_limit: int | None = None
    holdout_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    weights: str | None = None
    out: str = "runs/search"
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace an earlier run in ``out`` (never recorded)
    table: str | None = None  # latency table path (recorded only)
    table_measured: bool | None = None
    select_cost: str | None = None  # the cost model pricing budgets, when not the steering one (recorded)
    compare: tuple[str, ...] = ()  # sibling run dirs drawn in the plot
    # options of a method that has no field above (a method of one's own); recorded when not empty
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """One-line error for a bad shared setting; the method checks its own options
        (:meth:`MethodOptions.validate <edgedyn.search.registry.MethodOptions.validate>`)."""
        if self.budget_margin is not None and not 0.0 <= self.budget_margin < 0.5:
            raise EdgedynError(f"budget_margin must be in [0, 0.5), got {self.budget_margin}")
        if self.score_samples is not None and self.score_samples < 1:
            raise EdgedynError(f"score_samples must be >= 1, got {self.score_samples}")
        if self.max_steps is not None and self.max_steps < 1:
            raise EdgedynError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.device not in ("cpu", "cuda"):
            raise EdgedynError(f"device {self.device!r} is unknown; use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EdgedynError("device cuda was asked for but torch sees no CUDA device")
        for name in ("pretrain_epochs", "train_epochs", "calib_batches"):
            if getattr(self, name) < 0:
                raise EdgedynError(f"{name} must be >= 0")
        if self.batch_size < 1:
            raise EdgedynError("batch_size must be >= 1")
        if self.resume and self.overwrite:
            raise EdgedynError("give --resume or --overwrite, not both")
        self.method_options()

    def method_options(self) -> MethodOptions:
        """The method's options (its options dataclass), validated."""
        return method_options(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["overwrite"]  # how this run treats its folder, not what it is: subnets.json never records it
        d["compare"] = list(self.compare)
        if not d["options"]:
            del d["options"]
        if d["budget_margin_from"] is None:
            del d["budget_margin_from"]
        d.update(self.method_options().recorded(self))  # e.g. autoslim's default final_epochs resolved
        return d

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the interrupted one."""
        d = self.to_dict()
        for k in ("resume", "out", "compare", "table_measured"):
            d.pop(k)
        return d
