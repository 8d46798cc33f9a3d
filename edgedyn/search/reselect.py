"""Sub-net re-selection: the Pareto filter over the search path, then one pick per budget;
the uniform widths (US-Nets' sub-nets) as candidates."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..cost import CostModel
from ..dynamic import DynamicNet, SubnetSpec
from ..errors import EdgedynError
from .progressive import PathPoint


class Point(Protocol):
    @property
    def cost(self) -> float: ...

    @property
    def accuracy(self) -> float: ...


P = TypeVar("P", bound=Point)


@dataclass(frozen=True)
class Budget:
    """A cost budget: a fraction of the full model's cost, or an absolute cost in ``unit``."""

    value: float
    unit: str  # "fraction" or the cost unit ("ms", "MMAC")
    text: str

    def limit(self, full_cost: float, margin: float = 0.0) -> float:
        """The budget in cost units; with ``margin``, that far below it (a budget at or above
        the full model's cost is met by the full model and gets no margin)."""
        limit = self.value * full_cost if self.unit == "fraction" else self.value
        return limit * (1.0 - margin) if limit < full_cost * (1 - 1e-9) else limit

    def to_dict(self) -> dict:
        return {"text": self.text, "value": self.value, "unit": self.unit}


def parse_budgets(text: str, cost_unit: str) -> list[Budget]:
    """Parse ``"0.25,0.5,0.75,1.0"`` / ``"25%,50%"`` (fractions of the full model's cost) or
    ``"3ms,5ms"`` (absolute; needs a cost in ms) or ``"20MMAC"``. Sorted ascending."""
    budgets = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zA-Z%]*)", part)
        if not m:
            raise EdgedynError(f"budget {part!r} is not a number; use fractions (0.5), percents (50%) or '5ms'")
        value, unit = float(m.group(1)), m.group(2)
        if unit == "%":
            value, unit = value / 100.0, ""
        if unit == "":
            if not 0.0 < value <= 1.0:
                raise EdgedynError(f"budget {part!r}: a fraction of the full model must be in (0, 1]; "
                                   f"for an absolute budget add the unit, e.g. '{part}{cost_unit}'")
            budgets.append(Budget(value, "fraction", part))
        elif unit.lower() == cost_unit.lower():
            if value <= 0:
                raise EdgedynError(f"budget {part!r} must be positive")
            budgets.append(Budget(value, cost_unit, part))
        else:
            raise EdgedynError(f"budget {part!r} is in {unit!r} but the cost model measures {cost_unit!r}")
    if not budgets:
        raise EdgedynError("no budgets given; use e.g. '0.25,0.5,0.75,1.0' or '3ms,5ms'")
    units = {b.unit for b in budgets}
    if len(units) > 1:
        raise EdgedynError("budgets mix fractions and absolute costs; use one kind")
    return sorted(budgets, key=lambda b: b.value)


def pareto(points: Sequence[P]) -> list[P]:
    """The points no other point beats on both cost and accuracy, by ascending cost.

    A point is dropped when another costs no more and is at least as accurate, and is
    strictly better in one of the two. Of exact duplicates the first is kept.
    """
    ordered = sorted(enumerate(points), key=lambda t: (t[1].cost, -t[1].accuracy, t[0]))
    front: list[P] = []
    best = float("-inf")
    for _, p in ordered:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def pick(points: Sequence[P], budgets: Sequence[Budget], full_cost: float, unit: str,
         prefer: str = "accuracy", margin: float = 0.0) -> list[tuple[Budget, P]]:
    """For each budget, the most accurate point (``prefer="cost"``: the most costly one)
    whose cost fits. An unreachable budget raises one line naming the smallest feasible cost.

    ``margin`` keeps predicted costs that far below a budget (0.02: 2 %), for the cost
    model's error; a budget at or above the full model's cost is met by the full model
    and gets no margin.
    """
    if not points:
        raise EdgedynError("no candidate sub-nets to choose from")
    cheapest = min(points, key=lambda p: p.cost)
    out = []
    for b in budgets:
        limit = b.limit(full_cost, margin)
        fits = [p for p in points if p.cost <= limit + 1e-9 * max(1.0, abs(limit))]
        if not fits:
            frac = cheapest.cost / full_cost if full_cost > 0 else float("nan")
            after = f" after the {100 * margin:.3g}% margin" if margin > 0 else ""
            hint = ("; a smaller --budget-margin or a larger budget reaches it"
                    if margin > 0 and cheapest.cost <= b.limit(full_cost, 0.0) else "")
            raise EdgedynError(
                f"budget {b.text} ({limit:.4g} {unit}{after}) is unreachable: the smallest feasible cost is "
                f"{cheapest.cost:.4g} {unit} ({frac:.3g} of the full model){hint}")
        if prefer == "cost":
            best = max(fits, key=lambda p: (p.cost, p.accuracy))
        else:
            best = max(fits, key=lambda p: (p.accuracy, -p.cost))
        out.append((b, best))
    return out


def pick_nested(points: Sequence[P], budgets: Sequence[Budget], full_cost: float, unit: str,
                contains, margin: float = 0.0) -> list[tuple[Budget, P]]:
    """One point per budget, nested (each pick contains the previous one), fitting its budget,
    with the largest total accuracy; ties go to the cheaper chain.

    A small dynamic program over the points sorted by cost: ``contains(a, b)`` says whether
    point ``a``'s sub-net contains point ``b``'s. Candidates from different sources (a search
    path and the uniform widths, say) mix only where they nest. Unreachable budgets raise as
    :func:`pick` does.
    """
    pick(points, budgets, full_cost, unit, margin=margin)  # the same one-line error when unreachable
    limits = [lim + 1e-9 * max(1.0, abs(lim)) for lim in (b.limit(full_cost, margin) for b in budgets)]
    pts = sorted(points, key=lambda p: (p.cost, -p.accuracy))
    n = len(pts)
    # best[k][i]: (total accuracy, -total cost, chain) of picks for budgets 0..k ending at point i
    best: list[list[tuple[float, float, tuple[int, ...]] | None]] = []
    for k, limit in enumerate(limits):
        row: list[tuple[float, float, tuple[int, ...]] | None] = [None] * n
        for i, p in enumerate(pts):
            if p.cost > limit:
                continue
            if k == 0:
                row[i] = (p.accuracy, -p.cost, (i,))
                continue
            for j, prev in enumerate(best[k - 1]):
                if prev is None or not (j == i or contains(p, pts[j])):
                    continue
                cand = (prev[0] + p.accuracy, prev[1] - p.cost, prev[2] + (i,))
                held = row[i]
                if held is None or cand[:2] > held[:2]:
                    row[i] = cand
        best.append(row)
    finals = [r for r in best[-1] if r is not None]
    if not finals:
        raise EdgedynError("no nested choice of sub-nets fits every budget")
    chain = max(finals, key=lambda r: r[:2])[2]
    return [(b, pts[i]) for b, i in zip(budgets, chain)]


def uniform_points(net: DynamicNet, cost_model: CostModel, low: float = 0.25) -> list[PathPoint]:
    """The distinct US-Nets sub-nets (uniform width ratios in [low, 1]) with their cost.

    Accuracy is the width ratio, so re-selection's "most accurate that fits" becomes the
    largest uniform width that fits, as US-Nets deploys.
    """
    ratios = sorted({w / g.channels for g in net.groups for w in g.widths_from() if w / g.channels >= low} | {low, 1.0})
    points: dict[SubnetSpec, PathPoint] = {}
    for r in ratios:
        spec = net.uniform_spec(r)
        if spec not in points:
            points[spec] = PathPoint(spec, float(cost_model.cost(net, spec)), r, 0)
    return list(points.values())
