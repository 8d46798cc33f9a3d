"""``autoslim`` (the default): one-shot training, cost-steered greedy slimming, the picks trained.

One-shot training of the network so that every sub-net is usable (sandwich rule over
uniform widths, as US-Nets trains; ``supernet_students="random"`` draws each group's width
independently), greedy slimming on those weights steered by the cost model
(:mod:`edgedyn.search.slim`) in one leg per budget, each leg above the previous budget's
pick, re-selection of the best nested chain, then (``final_epochs``) joint training of the
chosen sub-nets only. The one-shot and final epochs draw the ``train`` phase's streams,
epoch by epoch, as US-Nets does: the two pipelines see the same batches (common random
numbers), and with ``final_epochs=0`` autoslim trains exactly US-Nets' network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from ...dynamic import SubnetSpec
from ...errors import EdgedynError
from .. import train
from ..checkpoint import Leg
from ..context import RunContext
from ..progressive import PathPoint
from ..registry import MethodOptions, Variant, register_method
from ..reselect import Budget, pick_nested, uniform_points
from ..slim import grow_search, slim_search, step_removals
from .base import Method, Picks

log = logging.getLogger("edgedyn.search")


@dataclass(frozen=True)
class AutoslimOptions(MethodOptions):
    slim_step: float = 0.05  # cost removed (added) per step, a fraction of the full model's
    direction: str = "slim"  # "slim" from the full model to each budget, or "grow" each pick up to it
    final_epochs: int | None = None  # the last epochs train the chosen sub-nets only (None: a third)
    supernet_students: str = "uniform"  # the one-shot widths: "uniform" (US-Nets') or "random" (per group)
    uniform_candidates: bool = True  # re-selection also weighs the uniform widths (nested picks)
    before_train: bool = False  # also report the picks' accuracy on the one-shot weights (ablation)

    def validate(self, config: Any) -> None:
        if self.final_epochs is not None and not 0 <= self.final_epochs <= config.train_epochs:
            raise EdgedynError(f"final_epochs must be in 0..train_epochs ({config.train_epochs}), "
                               f"got {self.final_epochs}")
        if self.supernet_students not in ("random", "uniform"):
            raise EdgedynError(f"supernet_students must be 'random' or 'uniform', got {self.supernet_students!r}")
        if self.direction not in ("grow", "slim"):
            raise EdgedynError(f"direction must be 'grow' or 'slim', got {self.direction!r}")
        if not 0.0 < self.slim_step < 1.0:
            raise EdgedynError(f"slim_step must be a fraction in (0, 1), got {self.slim_step}")

    def final(self, train_epochs: int) -> int:
        """Of the joint schedule's ``train_epochs``, the epochs that train the chosen sub-nets
        only (the rest is one-shot). By default a third, at least one when there are two or more (the one-shot
        phase only has to make the search's scores meaningful; the picks it finds are
        trained on their own for the tail of the schedule, as the paper and AutoSlim do)."""
        if self.final_epochs is not None:
            return self.final_epochs
        return max(1, train_epochs // 3) if train_epochs >= 2 else 0

    def recorded(self, config: Any) -> dict[str, Any]:
        return {"final_epochs": self.final(config.train_epochs)}  # the default resolved


_UNIFORM = dict(supernet_students="uniform", final_epochs=0)


@register_method
class Autoslim(Method):
    """One-shot training, greedy slimming in legs, nested re-selection, the picks trained."""

    name = "autoslim"
    Options = AutoslimOptions
    phases = ("pretrain", "supernet", "search")
    variants = {
        "autoslim+latency": Variant({**_UNIFORM, "direction": "slim"}, "latency", "edgedyn's default, no final epochs"),
        "autoslim+flops": Variant({**_UNIFORM, "direction": "slim"}, "flops", "the search steered by MACs"),
        "autoslim-grow+latency": Variant({**_UNIFORM, "direction": "grow"}, "latency", "each pick grown to its budget"),
        "autoslim-grow+flops": Variant({**_UNIFORM, "direction": "grow"}, "flops", "grown, steered by MACs"),
        # the same legs on the first joint epochs (uniform one-shot, as US-Nets trains), then
        # the picks trained jointly for the last epochs (--final-epochs) of the same schedule
        "autoslim-final+latency": Variant(dict(supernet_students="uniform", direction="slim"), "latency"),
        "autoslim-final+flops": Variant(dict(supernet_students="uniform", direction="slim"), "flops"),
        "autoslim-random+latency": Variant(dict(supernet_students="random", final_epochs=1, uniform_candidates=False),
                                           "latency", "one-shot over random per-group widths"),
    }
    options: AutoslimOptions

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        self.final = self.options.final(ctx.c.train_epochs)

    # ---- phases ----
    def supernet(self) -> None:
        """One-shot sandwich training, uniform or random per-group widths (the first
        ``train_epochs - final`` epochs of the joint schedule)."""
        ctx, o = self.ctx, self.options
        epochs = ctx.c.train_epochs - self.final
        students = train.random_students if o.supernet_students == "random" else train.uniform_students
        ctx.epochs("supernet", epochs, lambda gen: train.sandwich_step(self.net, students(self.net, gen)),
                   ctx.c.lr, schedule=(0, ctx.c.train_epochs), stream=("train", 0))
        ctx.advance("supernet")

    def start_accuracy(self, full: SubnetSpec, scored: float) -> float:
        return self.scorer.record(full)[1]  # every point is recorded on the whole holdout

    def step_options(self, spec: SubnetSpec, cost: float) -> list[tuple[SubnetSpec, float]]:
        ctx = self.ctx
        return [(s, c) for _, s, c in step_removals(self.net, spec, ctx.cost_model, cost,
                                                     self.options.slim_step * ctx.full_cost)]

    def search_path(self, path: list[PathPoint]) -> None:
        if self.options.direction == "grow":
            self._grow_legs(path)
        else:
            self._slim_legs(path)

    def _slim_legs(self, path: list[PathPoint]) -> None:
        """Greedy slimming in legs, budget by budget from the smallest up.

        A leg slims from the full model down to a budget, never below its floor (a sub-net
        every point it records contains). For budget k:

        1. a leg with floor F (the pick for budget k-1; at first the groups' floors);
        2. the pick: the most accurate recorded point or uniform width that fits and
           contains F;
        3. when that pick leaves at least one slimming step of the budget unused (a uniform
           width, or a point of a deeper leg), a second leg with the pick as its floor
           fills the budget with channels on top of it, and the pick is made again.

        The pick becomes budget k+1's floor. A leg whose floor an earlier leg already had,
        down to this budget or below, is not run again (the greedy path from the full model
        would be the same). Re-selection then takes the best nested chain over everything
        recorded (:func:`pick_nested`). One path to the smallest budget (AutoSlim's) leaves
        the larger budgets only sub-nets that do not contain the best small ones; the legs
        make the chain good at every budget.
        """
        ctx = self.ctx
        room = self.options.slim_step * ctx.select_full
        floor = self.net.min_spec()
        for budget in ctx.budgets:
            limit = ctx.limit(budget)
            if limit >= ctx.select_full * (1 - 1e-9):
                break  # the full model meets it
            self._leg(path, floor, budget, limit)
            best = self._best(path, floor, limit)
            if best.spec != floor and limit - best.cost >= room - 1e-12:
                self._leg(path, best.spec, budget, limit)
                best = self._best(path, floor, limit)
            log.info("budget %s (floor %s): pick %s, cost %.4g %s, holdout %.4f", budget.text, list(floor.widths),
                     list(best.spec.widths), best.cost, ctx.select_cost.unit, best.accuracy)
            floor = best.spec

    def _grow_legs(self, path: list[PathPoint]) -> None:
        """``direction="grow"``: budget by budget from the smallest up, start from the most
        accurate candidate that fits and contains the previous pick (a uniform width, the
        groups' floors, or a point recorded before), and grow it greedily until nothing
        wider fits the budget (:func:`~edgedyn.search.slim.grow_search`). The pick is then
        the most accurate candidate that fits and contains the previous pick, and the next
        budget starts from it. Re-selection takes the best nested chain over every recorded
        point (:func:`pick_nested`).

        Growing spends each budget where the held-out loss falls most, on top of a sub-net
        that is already good at the budget below; it scores thin candidates, which cost far
        less than slimming from the full model does (``direction="slim"``).
        """
        ctx = self.ctx
        floor = self.net.min_spec()
        for budget in ctx.budgets:
            limit = ctx.limit(budget)
            if limit >= ctx.select_full * (1 - 1e-9):
                break  # the full model meets it
            leg = next((g for g in ctx.state.legs if g.budget == budget.text), None)  # resumed
            start = SubnetSpec.of(leg.floor) if leg else self._best(path, floor, limit).spec
            self._leg(path, start, budget, limit, grow=True)
            best = self._best(path, floor, limit)
            log.info("budget %s (above %s): grown from %s, pick %s, cost %.4g %s, holdout %.4f", budget.text,
                     list(floor.widths), list(start.widths), list(best.spec.widths), best.cost,
                     ctx.select_cost.unit, best.accuracy)
            floor = best.spec

    def _candidates(self, path: list[PathPoint]) -> list[PathPoint]:
        """Re-selection's candidates: every recorded point (all legs), priced in the budgets'
        unit, the groups' floors, and the uniform widths (the one-shot training trained
        those), each once."""
        ctx = self.ctx
        out: dict[SubnetSpec, PathPoint] = {}
        for p in path:
            out.setdefault(p.spec, replace(p, cost=ctx.price(p.spec)))
        extra = [self.net.min_spec()]
        if self.options.uniform_candidates:
            extra += [u.spec for u in uniform_points(self.net, ctx.select_cost)]
        for spec in extra:
            if spec not in out:
                out[spec] = PathPoint(spec, ctx.price(spec), self.scorer.record(spec)[1], -1)
        return list(out.values())

    def _best(self, path: list[PathPoint], floor: SubnetSpec, limit: float) -> PathPoint:
        """The most accurate candidate that fits ``limit`` and contains ``floor`` (ties: the cheaper)."""
        fits = [p for p in self._candidates(path) if p.cost <= limit + 1e-12 and p.spec.contains(floor)]
        return max(fits, key=lambda p: (p.accuracy, -p.cost))

    def _find_leg(self, floor: SubnetSpec, budget: Budget, limit: float, grow: bool) -> Leg:
        """The leg from ``floor`` for ``budget`` (an earlier one that serves, or a new one)."""
        legs = self.ctx.state.legs
        same = [g for g in legs if g.floor == list(floor.widths)]
        if grow:
            leg = next((g for g in same if g.budget == budget.text), None)
        else:
            leg = next((g for g in same if not g.done or g.limit <= limit + 1e-12), None)
        if leg is None:
            leg = Leg(list(floor.widths), budget.text, limit, [] if grow else [0])
            legs.append(leg)
        return leg

    def _leg(self, path: list[PathPoint], floor: SubnetSpec, budget: Budget, limit: float, grow: bool = False) -> None:
        """Slim from the full model to ``limit`` above ``floor`` (``grow``: grow ``floor`` up to
        ``limit``), unless a leg from this floor already did; an interrupted leg continues
        where it stopped."""
        ctx = self.ctx
        leg = self._find_leg(floor, budget, limit, grow)
        if leg.done:
            return
        step_cost = self.options.slim_step * ctx.full_cost
        n_steps = len(ctx.state.steps)
        if grow:
            if leg.points:
                start = path[leg.points[-1]]
            else:  # a candidate that fits (a uniform width, the floors, a recorded point)
                acc = next(p.accuracy for p in self._candidates(path) if p.spec == floor)
                start = PathPoint(floor, float(ctx.cost_model.cost(self.net, floor)), acc, n_steps,
                                  loss=self.scorer.score(floor)[0])
        else:
            start = path[leg.points[-1]] if len(leg.points) > 1 else replace(path[0], step=n_steps)
        remaining = None if ctx.c.max_steps is None else max(0, ctx.c.max_steps - start.step)
        ctx.seed("search", start.step)
        desc = f"search leg {len(ctx.state.legs)} (budget {leg.budget})"
        if grow:
            lim = leg.limit
            steps = grow_search(self.net, ctx.cost_model, self.scorer.score, start, step_cost=step_cost,
                                fits=lambda spec: ctx.price(spec) <= lim + 1e-12, dist=ctx.dist,
                                max_steps=remaining, record=self.scorer.record)
            self.run_steps(path, steps, desc, leg)
        else:
            stop = self.fits(leg.limit)
            steps = slim_search(self.net, ctx.cost_model, self.scorer.score, start, step_cost=step_cost, stop=stop,
                                dist=ctx.dist, max_steps=remaining, record=self.scorer.record, floor=floor)
            self.run_steps(path, steps, desc, leg)
            end = path[leg.points[-1]]
            if not stop(end):
                raise self.ended_above(ctx.price(end.spec), leg.limit)
        leg.done = True
        ctx.save("search", len(ctx.state.steps))

    # ---- selection and training ----
    def select(self) -> Picks:
        """Every point was scored on the same one-shot weights, so they compare as they are;
        the picks are the most accurate nested chain that fits the budgets. The full model
        serves every budget it fits: it contains every other pick, and the holdout's noise
        must not swap it for a slightly smaller sub-net (which, with final epochs, would
        also take the full model out of the training)."""
        kept = self.kept_selection()
        if kept is not None:
            return kept
        ctx = self.ctx
        path = self._candidates([replace(p, cost=ctx.price(p.spec)) for p in ctx.state.path])
        full = next(p for p in path if p.spec == self.net.full_spec())
        below = [b for b in ctx.budgets if ctx.limit(b) < full.cost]
        picks = pick_nested(path, below, ctx.select_full, ctx.select_cost.unit,
                            lambda a, b: a.spec.contains(b.spec), margin=ctx.margin) if below else []
        picks += [(b, full) for b in ctx.budgets if b not in below]
        log.info("re-selection: %d candidates (search path and uniform widths), nested picks", len(path))
        return self.keep_selection(picks)

    def before_train(self, picks: Picks) -> None:
        """``before_train``: the picks' accuracies on the one-shot weights, before the chosen
        sub-nets are trained (what the final phase adds; kept in the selection, so resumes keep it)."""
        ctx = self.ctx
        sel = ctx.state.selection or []
        not_trained = ctx.before("final") and ctx.state.index == 0  # the joint training has not begun
        if not self.options.before_train or not not_trained or all(s.before_train is not None for s in sel):
            return
        # timed: what this diagnostic cost (a benchmark takes it out of the pipeline's time)
        with ctx.timed("before_train"):
            ctx.seed("final", 1)
            calib = train.take_batches(ctx.train_loader("final", 1), ctx.c.calib_batches)
            cache: dict[SubnetSpec, dict[str, float]] = {}
            for s, (_, point) in zip(sel, picks):
                if point.spec not in cache:
                    with train.temporary_bn(self.net, point.spec, calib):
                        cache[point.spec] = {
                            "holdout_accuracy": train.accuracy(self.net, point.spec, ctx.splits.holdout, ctx.device),
                            "test_accuracy": train.accuracy(self.net, point.spec, ctx.splits.test, ctx.device)}
                s.before_train = cache[point.spec]
        self.net.set_subnet(self.net.full_spec())

    def train(self, chosen: list[SubnetSpec]) -> None:
        """The last ``final`` epochs of the schedule the one-shot phase began, on the picks."""
        ctx = self.ctx
        first = ctx.c.train_epochs - self.final
        make = lambda gen: train.sandwich_step(self.net, train.chosen_students(chosen, gen))
        ctx.epochs("train", self.final, make, ctx.c.lr, schedule=(first, ctx.c.train_epochs),
                   stream=("train", first))
