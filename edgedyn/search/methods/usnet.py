"""``usnet``: Universally Slimmable Networks (Yu & Huang), the baseline.

The full model pre-trained (or given), then sandwich training over uniform widths, and for
each budget the widest uniform width that fits (as US-Nets deploys). No search.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dynamic import SubnetSpec
from ...errors import EdgedynError
from .. import train
from ..registry import MethodOptions, Variant, register_method
from ..reselect import uniform_points
from .base import Method, Picks


@dataclass(frozen=True)
class USNetOptions(MethodOptions):
    # issue 19's L6 counterpart: each sandwich step's losses averaged over its sub-nets, not summed
    sandwich_mean: bool = False

    def validate(self, config: object) -> None:
        if not isinstance(self.sandwich_mean, bool):
            raise EdgedynError(f"option sandwich_mean must be true or false, got {self.sandwich_mean!r}")


@register_method
class USNet(Method):
    """Uniform widths only: no search, the widest uniform width that fits each budget."""

    name = "usnet"
    Options = USNetOptions
    phases = ("pretrain",)
    variants = {
        "usnet": Variant({}, "latency", "Universally Slimmable Networks (uniform widths, sandwich rule)"),
        "usnet-mean": Variant({"options": {"sandwich_mean": True}}, "latency",
                              "US-Nets, each sandwich step's losses averaged (L6's baseline)"),
    }
    options: USNetOptions

    def check_budgets(self) -> None:
        """Every budget must fit one of the uniform widths."""
        self.ctx.pick(uniform_points(self.net, self.ctx.select_cost))

    def select(self) -> Picks:
        # accuracy is the width ratio: "most accurate that fits" is the widest that fits
        return self.ctx.pick(uniform_points(self.net, self.ctx.select_cost), prefer="cost")

    def train(self, chosen: list[SubnetSpec]) -> None:
        """Sandwich training over uniform widths (the chosen sub-nets are uniform widths too)."""
        c = self.ctx.c
        make = lambda gen: train.sandwich_step(self.net, train.uniform_students(self.net, gen),
                                               mean=self.options.sandwich_mean)
        self.ctx.epochs("train", c.train_epochs, make, c.lr)
