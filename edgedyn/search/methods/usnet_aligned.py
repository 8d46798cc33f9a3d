"""``usnet-aligned``: US-Nets' uniform widths rounded up to the backend's channel block.

What a user who knows the hardware does with US-Nets (issue 19): every coupling group of
a uniform width is rounded UP to the channel block the backend computes in (ONNX Runtime
on AVX-512 runs convolutions in NCHWc blocks of 16 channels), capped at the group's full
width, and each budget gets the largest such sub-net that fits by the table (with the
run's budget margin). The block is read from the latency table's layout
(``LatencyTable.layout.block``); a plain layout, a cost model without a table (MACs) or
``block=1`` round nothing, and then the method is US-Nets exactly.

No extra training: the network is US-Nets' (the ``usnet`` method's sandwich training over
uniform widths, inherited, so the same seed trains the same weights bit for bit); only the
sub-nets it serves differ. A budget that no aligned width fits (the smallest aligned width
costs more than the smallest uniform one) is served by US-Nets' own widest uniform width
that fits, and the log says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...cost import CostModel
from ...dynamic import DynamicNet, SubnetSpec
from ...errors import EdgedynError
from ..context import RunContext
from ..progressive import PathPoint
from ..registry import Variant, register_method
from ..reselect import pick, uniform_points
from .base import Picks
from .usnet import USNet, USNetOptions

log = logging.getLogger("edgedyn.search")


@dataclass(frozen=True)
class AlignedOptions(USNetOptions):
    block: int | None = None  # channel block to round up to (None: the latency table's layout; 1: none)

    def validate(self, config: object) -> None:
        super().validate(config)
        check_block(self.block)


def check_block(block: object) -> None:
    """A ``block`` option: an integer >= 1, or None (the table's layout decides)."""
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise EdgedynError(f"block must be an integer >= 1 (or null: the table's layout), got {block!r}")


def run_block(option: int | None, ctx: RunContext) -> int:
    """The channel block of a run: the ``block`` option, else the table's layout (budgets' cost first)."""
    return option if option is not None else table_block(ctx.select_cost, ctx.cost_model)


def table_block(*cost_models: object) -> int:
    """The channel block of the first cost model that has a latency table with a blocked
    (NCHWc) layout; 1 when none has (a plain layout, or MACs)."""
    for model in cost_models:
        layout = getattr(getattr(model, "table", None), "layout", None)
        if layout is not None:
            return int(layout.block) if getattr(layout, "kind", "plain") == "nchwc" and layout.block > 1 else 1
    return 1


def round_up(net: DynamicNet, spec: SubnetSpec, block: int) -> SubnetSpec:
    """``spec`` with every group's width rounded up to a multiple of ``block`` on the group's
    channel grid, capped at its full width.

    A group takes the smallest width of its grid (which respects its floor and, for grouped
    convolutions, its unit) that is at least its width in ``spec`` and a multiple of
    ``block``; when its grid has none, its full width. A frozen group stays at full width.
    """
    if block <= 1:
        return spec
    widths = []
    for g, w in zip(net.groups, spec.widths):
        widths.append(next((x for x in g.widths_from() if x >= w and x % block == 0), g.channels))
    return net.check_spec(SubnetSpec(tuple(widths)))


def aligned_points(net: DynamicNet, cost_model: CostModel, block: int) -> list[PathPoint]:
    """The distinct aligned uniform widths with their cost; accuracy is the width ratio they
    came from (so "most accurate" reads "widest", as for US-Nets' points)."""
    points: dict[SubnetSpec, PathPoint] = {}
    for u in uniform_points(net, cost_model):
        spec = round_up(net, u.spec, block)
        if spec not in points:
            points[spec] = PathPoint(spec, float(cost_model.cost(net, spec)), u.accuracy, 0)
    return list(points.values())


@register_method
class USNetAligned(USNet):
    """Uniform widths rounded up to the table's channel block, on US-Nets' network (no extra training)."""

    name = "usnet-aligned"
    Options = AlignedOptions
    phases = ("pretrain",)
    variants = {"usnet-aligned": Variant({}, "latency", "US-Nets' weights, uniform widths rounded up to the "
                                                        "table's channel block (16 on AVX-512 ONNX Runtime)")}
    options: AlignedOptions

    @property
    def block(self) -> int:
        """The channel block widths are rounded up to (the option, else the table's layout)."""
        return run_block(self.options.block, self.ctx)

    def check_budgets(self) -> None:
        """Every budget must fit an aligned width or one of US-Nets' uniform widths."""
        self.select()

    def select(self) -> Picks:
        """Per budget the widest aligned uniform width that fits; US-Nets' widest uniform
        width where no aligned one does."""
        ctx, block = self.ctx, self.block
        aligned = aligned_points(self.net, ctx.select_cost, block)
        plain = uniform_points(self.net, ctx.select_cost)
        picks: Picks = []
        for budget in ctx.budgets:
            limit = ctx.limit(budget)
            fits = [p for p in aligned if p.cost <= limit + 1e-9 * max(1.0, abs(limit))]
            points = aligned if fits else plain
            if not fits:
                log.info("budget %s: no uniform width rounded up to %d channels fits; US-Nets' own serves",
                         budget.text, block)
            picks += pick(points, [budget], ctx.select_full, ctx.select_cost.unit, prefer="cost",
                          margin=ctx.margin)
        return picks
