"""``progressive``: the paper's pipeline (Yang et al., arXiv 2009.05681).

Trainable-noise (or L1) channel ranking and the channel permutation (``rank``), the
progressive search with selective fine-tuning from the full model down to the smallest
budget (:func:`edgedyn.search.progressive.progressive_search`), re-selection over the
Pareto front of the path, then joint training of the chosen sub-nets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ...dynamic import SubnetSpec
from ...errors import EdgedynError
from .. import train
from ..checkpoint import check_saved_list
from ..progressive import CRITERIA, PathPoint, Threshold, progressive_search
from ..ranking import RANKINGS, NoiseInjection, apply_order, l1_orders
from ..registry import MethodOptions, Variant, register_method
from ..reselect import pareto
from .base import Method, Picks

log = logging.getLogger("edgedyn.search")


@dataclass(frozen=True)
class ProgressiveOptions(MethodOptions):
    ranking: str = "noise"  # "noise" (trainable noise, the paper's) or "l1"
    rank_epochs: int = 1
    rank_lr: float = 0.01
    criterion: str = "ratio"  # "ratio" (accuracy lost per cost saved) or "drop" (the paper's)
    threshold: str = "drop:5"  # fine-tune below this holdout accuracy (Threshold.parse)
    finetune_batches: int = 50  # cap per fine-tuning
    finetune_check: int = 10  # holdout check every this many batches
    finetune_lr: float = 0.01

    def validate(self, config: object) -> None:
        if self.ranking not in RANKINGS:
            raise EdgedynError(f"ranking {self.ranking!r} is unknown; use one of {', '.join(RANKINGS)}")
        if self.criterion not in CRITERIA:
            raise EdgedynError(f"criterion {self.criterion!r} is unknown; use one of {', '.join(CRITERIA)}")
        for name in ("rank_epochs", "finetune_batches"):
            if getattr(self, name) < 0:
                raise EdgedynError(f"{name} must be >= 0")
        if self.finetune_check < 1:
            raise EdgedynError("finetune_check must be >= 1")
        Threshold.parse(self.threshold)


@register_method
class Progressive(Method):
    """Noise ranking, the progressive search with selective fine-tuning, Pareto re-selection."""

    name = "progressive"
    Options = ProgressiveOptions
    phases = ("pretrain", "rank", "search")
    variants = {
        "paper": Variant(dict(criterion="drop", channel_groups=4, min_groups=1, ranking="noise"),
                         doc="the paper's pipeline: least accuracy drop, channel groups of 1/4"),
        "progressive+ratio": Variant(dict(criterion="ratio", min_groups=1, ranking="noise"),
                                     doc="edgedyn's former default: accuracy lost per ms, 1/8 groups"),
    }
    options: ProgressiveOptions

    def rank(self) -> None:
        """Rank every coupling group's channels, then permute them (a prefix keeps the best)."""
        ctx, o = self.ctx, self.options
        done, start = ctx.reached("rank")
        if done:
            return
        if o.ranking == "l1":
            orders = l1_orders(self.net)
        else:
            with NoiseInjection(self.net) as noise:
                if ctx.state.alphas is not None and start:
                    check_saved_list(ctx.ckpt_path, "alphas", ctx.state.alphas, list(noise.alphas))
                    with torch.no_grad():
                        for a, saved in zip(noise.alphas, ctx.state.alphas):
                            a.copy_(saved)
                full = self.net.full_spec()
                ctx.epochs("rank", o.rank_epochs, lambda gen: train.ce_step(self.net, full), o.rank_lr,
                           extra=list(noise.parameters()))
                orders = noise.orders()
        apply_order(self.net, orders)
        log.info("ranked channels by %s", o.ranking)
        ctx.advance("rank")

    def search_path(self, path: list[PathPoint]) -> None:
        """One path from the full model to the smallest budget."""
        ctx, o = self.ctx, self.options
        threshold = Threshold.parse(o.threshold)
        limit = ctx.min_limit()
        stop = self.fits(limit)
        remaining = None if ctx.c.max_steps is None else max(0, ctx.c.max_steps - path[-1].step)
        ctx.seed("search", path[-1].step)
        target = threshold.target(path[0].accuracy)

        def finetune(spec: SubnetSpec, goal: float) -> tuple[float, int]:
            loader = ctx.train_loader("search", 100_000 + len(path))
            return train.finetune(self.net, spec, loader, self.scorer.accuracy, goal, lr=o.finetune_lr,
                              max_batches=o.finetune_batches, check_every=o.finetune_check,
                              dist=ctx.dist, device=ctx.device)

        steps = progressive_search(self.net, ctx.cost_model, self.scorer.accuracy, path[-1], target=target,
                                   finetune=finetune if threshold.kind != "none" else None,
                                   dist=ctx.dist, max_steps=remaining, criterion=o.criterion, stop=stop)
        self.run_steps(path, steps, f"search ({self.name})")
        if not stop(path[-1]):
            raise self.ended_above(ctx.price(path[-1].spec), limit)

    def select(self) -> Picks:
        kept = self.kept_selection()
        if kept is not None:
            return kept
        ctx = self.ctx
        path = [replace(p, cost=ctx.price(p.spec)) for p in ctx.state.path]
        # Each point keeps the held-out accuracy it had when the search reached it (after that
        # step's fine-tuning), as in the paper. Re-scoring every point on the final search weights
        # was tried and is worse: those weights were last fine-tuned for the smallest sub-nets, so
        # the larger ones score low and the filter keeps almost only the smallest.
        front = pareto(path)
        log.info("re-selection: %d path points, %d on the Pareto front", len(path), len(front))
        return self.keep_selection(ctx.pick(front))
