"""``autoslim`` (the default): one-shot training, cost-steered greedy slimming, the picks trained.

One-shot training of the network so that every sub-net is usable (sandwich rule over
uniform widths, as US-Nets trains; ``supernet_students="random"`` draws each group's width
independently), greedy slimming on those weights steered by the cost model
(:mod:`edgedyn.search.slim`) in one leg per budget, each leg above the previous budget's
pick, re-selection of the best nested chain, then (``final_epochs``) joint training of the
chosen sub-nets only. The one-shot and final epochs draw the ``train`` phase's streams,
epoch by epoch, as US-Nets does: the two pipelines see the same batches (common random
numbers), and with ``final_epochs=0`` and ``sandwich_mean=false`` autoslim trains exactly
US-Nets' network.

Issue 19's levers are options (docs/search.md, "Round 8's levers"):
``supernet_students="neighbour"`` (L1a), ``finalist_batches`` (L1b), ``use_budget_se``
(L1c), ``nested=False`` (L2), ``final_bn`` (L3b), ``block_grid`` (L4), ``sandwich_mean`` (L6) and
``fill_budget`` (L7); each is off by default except L6, the default since its rule passed on
2026-12-03 (each sandwich step's losses averaged; the benchmark's earlier rows pin it off).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from ...dynamic import SubnetSpec
from ...errors import EdgedynError
from .. import levers, train
from ..checkpoint import Leg
from ..context import RunContext
from ..progressive import PathPoint
from ..registry import MethodOptions, Variant, register_method
from ..reselect import Budget, pick, pick_nested, uniform_points
from ..slim import grow_search, slim_search, step_removals
from .base import Method, Picks

log = logging.getLogger("edgedyn.search")


@dataclass(frozen=True)
class AutoslimOptions(MethodOptions):
    slim_step: float = 0.05  # cost removed (added) per step, a fraction of the full model's
    direction: str = "slim"  # "slim" from the full model to each budget, or "grow" each pick up to it
    final_epochs: int | None = None  # the last epochs train the chosen sub-nets only (None: a third)
    # the one-shot widths: "uniform" (US-Nets'), "random" (per group) or "neighbour" (US-Nets'
    # widths, each group moved one grid step with probability neighbour_p: L1a)
    supernet_students: str = "uniform"
    uniform_candidates: bool = True  # re-selection also weighs the uniform widths (nested picks)
    before_train: bool = False  # also report the picks' accuracy on the one-shot weights (ablation)
    # issue 19's levers, set with --option KEY=VALUE; each off by default
    neighbour_p: float = 0.5  # L1a: the chance that a group of a one-shot student moves one grid step
    finalists: int = 3  # L1b / L3b: each budget's most accurate candidates that are re-scored
    finalist_batches: int = 0  # L1b: fine-tuning batches per finalist before re-scoring (0: off)
    finalist_lr: float = 0.01  # L1b: the fine-tuning's learning rate (plain SGD)
    final_bn: bool = False  # L3b: finalists re-scored after the final measurement's BN recalibration
    use_budget_se: float = 0.0  # L1c: prefer the costliest candidate within this many SEs of the best (0: off)
    nested: bool = True  # L2: False picks each budget's own best candidate (no nested chain)
    block_grid: bool = False  # L4: the grid also holds every multiple of the table's channel block
    # L6, the default since round 8's rule passed (docs/search-plan-round8.md, amendment 3): each
    # sandwich step's losses averaged over its sub-nets, not summed (False: US-Nets' sum)
    sandwich_mean: bool = True
    fill_budget: bool = False  # L7: each pick widened by MACs per cost while it fits its budget

    def validate(self, config: Any) -> None:
        if self.final_epochs is not None and not 0 <= self.final_epochs <= config.train_epochs:
            raise EdgedynError(f"final_epochs must be in 0..train_epochs ({config.train_epochs}), "
                               f"got {self.final_epochs}")
        if self.supernet_students not in ("neighbour", "random", "uniform"):
            raise EdgedynError(f"supernet_students must be 'neighbour', 'random' or 'uniform', "
                               f"got {self.supernet_students!r}")
        self._validate_levers()
        if self.direction not in ("grow", "slim"):
            raise EdgedynError(f"direction must be 'grow' or 'slim', got {self.direction!r}")
        if not 0.0 < self.slim_step < 1.0:
            raise EdgedynError(f"slim_step must be a fraction in (0, 1), got {self.slim_step}")

    def _validate_levers(self) -> None:
        def number(name: str, low: float, high: float, integer: bool = False, low_open: bool = False) -> None:
            v = getattr(self, name)
            ok = (isinstance(v, int) if integer else isinstance(v, (int, float))) and not isinstance(v, bool)
            if not ok or not math.isfinite(v) or not (low < v if low_open else low <= v) or v > high:
                kind = "an integer" if integer else "a number"
                raise EdgedynError(f"option {name} must be {kind} in {'(' if low_open else '['}{low:g}, {high:g}], "
                                   f"got {v!r}")

        number("neighbour_p", 0.0, 1.0, low_open=True)
        number("finalists", 1, 1000, integer=True)
        number("finalist_batches", 0, 100_000, integer=True)
        number("finalist_lr", 0.0, 10.0, low_open=True)
        number("use_budget_se", 0.0, 10.0)
        for name in ("final_bn", "nested", "block_grid", "sandwich_mean", "fill_budget"):
            if not isinstance(getattr(self, name), bool):
                raise EdgedynError(f"option {name} must be true or false, got {getattr(self, name)!r}")

    def net_options(self, cost_models: tuple[Any, ...]) -> dict[str, Any]:
        """``block_grid``: the run's network also takes every multiple of the table's channel
        block above each group's floor (``LatencyTable.layout.block``; nothing with no blocked layout)."""
        if not self.block_grid:
            return {}
        from .usnet_aligned import table_block

        block = table_block(*cost_models)
        return {"grid_block": block} if block > 1 else {}

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


def _summed(v: Variant) -> Variant:
    """``v`` with US-Nets' summed sandwich loss (``sandwich_mean=false``) unless it sets it."""
    options = dict(v.overrides.get("options") or {})
    options.setdefault("sandwich_mean", False)
    return Variant({**v.overrides, "options": options}, v.cost, v.doc)


def _on_l6(variants: dict[str, Variant], levers: tuple[str, ...]) -> dict[str, Variant]:
    """``autoslim-mean-LEVER+latency`` for each lever: its row ``autoslim-LEVER+latency`` with
    L6's averaged sandwich loss (``sandwich_mean=true``), so each lever is measured on top of the
    default it would join."""
    rows = {}
    for lever in levers:
        v = variants[f"autoslim-{lever}+latency"]
        options = {**(v.overrides.get("options") or {}), "sandwich_mean": True}
        rows[f"autoslim-mean-{lever}+latency"] = Variant({**v.overrides, "options": options}, v.cost,
                                                         f"L6 and {v.doc.split(':')[0]}")
    return rows


_UNIFORM = dict(supernet_students="uniform", final_epochs=0)
_FINAL = dict(supernet_students="uniform", direction="slim")  # round 8's default, autoslim-final+latency


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
        # issue 19's ablation (docs/search-plan-round8.md): the default plus one lever each
        "autoslim-neighbour+latency": Variant(dict(_FINAL, supernet_students="neighbour"), "latency",
                                              "L1a: one-shot over uniform widths and their per-group neighbours"),
        "autoslim-ftfinal+latency": Variant(dict(_FINAL, options={"finalist_batches": 20}), "latency",
                                            "L1b: each budget's 3 finalists fine-tuned 20 batches, then compared"),
        "autoslim-usebudget+latency": Variant(dict(_FINAL, options={"use_budget_se": 1.0}), "latency",
                                              "L1c: the costliest candidate within one SE of the best"),
        "autoslim-flat+latency": Variant(dict(_FINAL, options={"nested": False}), "latency",
                                         "L2: each budget its own best candidate (no nested chain)"),
        "autoslim-score2000+latency": Variant(dict(_FINAL, score_samples=2000), "latency",
                                              "L3a: candidates scored on 2,000 held-out images"),
        "autoslim-bncal+latency": Variant(dict(_FINAL, options={"final_bn": True}), "latency",
                                          "L3b: finalists re-scored after the final BN recalibration"),
        "autoslim-grid16+latency": Variant(dict(_FINAL, options={"block_grid": True}), "latency",
                                           "L4: the grid also holds the table's block multiples"),
        "autoslim-final2+latency": Variant(dict(_FINAL, final_epochs=2), "latency",
                                           "L5: 2 final epochs of the same total"),
        "autoslim-mean+latency": Variant(dict(_FINAL, options={"sandwich_mean": True}), "latency",
                                         "L6: each sandwich step's losses averaged (its baseline: usnet-mean)"),
        "autoslim-fill+latency": Variant(dict(_FINAL, options={"fill_budget": True}), "latency",
                                         "L7: each pick widened by MACs per predicted ms to fill its budget"),
        "autoslim-meanfill+latency": Variant(dict(_FINAL, options={"sandwich_mean": True, "fill_budget": True}),
                                             "latency", "L6 and L7 together"),
    }
    # the same levers on top of L6, the default since 2026-12-03 (plan amendment 16)
    variants.update(_on_l6(variants, ("neighbour", "ftfinal", "usebudget", "flat", "score2000", "bncal")))
    # the rows defined before L6 became the default keep the summed loss they were run with
    variants = {k: _summed(v) for k, v in variants.items()}
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
        if o.supernet_students == "neighbour":
            students = lambda net, gen: train.neighbour_students(net, gen, p=o.neighbour_p)
        else:
            students = train.random_students if o.supernet_students == "random" else train.uniform_students
        ctx.epochs("supernet", epochs, lambda gen: train.sandwich_step(self.net, students(self.net, gen),
                                                                       mean=o.sandwich_mean),
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
        path = self._rescore(path, below)
        picks = self._pick(path, below) if below else []
        if self.options.fill_budget and picks:
            picks = self._fill(picks)
        picks += [(b, full) for b in ctx.budgets if b not in below]
        log.info("re-selection: %d candidates (search path and uniform widths), %s picks", len(path),
                 "nested" if self.options.nested else "non-nested")
        return self.keep_selection(picks)

    def _pick(self, points: list[PathPoint], below: list[Budget]) -> Picks:
        """The picks for the budgets below the full model: the best nested chain (default),
        each budget's best (``nested=False``), or, with ``use_budget_se``, the costliest
        candidates within noise of the best (:func:`~edgedyn.search.levers.pick_using_budget`)."""
        ctx, o = self.ctx, self.options
        unit, contains = ctx.select_cost.unit, (lambda a, b: a.spec.contains(b.spec))
        if o.use_budget_se > 0:
            n = sum(int(y.numel()) for _, y in ctx.splits.holdout)  # the images every candidate's accuracy is on
            got = levers.pick_using_budget(points, below, ctx.select_full, unit, n=n, z=o.use_budget_se,
                                           margin=ctx.margin, contains=contains if o.nested else None)
            if got is not None:
                return got
            log.info("use_budget_se: no nested chain of candidates within noise of the best; the plain nested pick")
        if not o.nested:
            return pick(points, below, ctx.select_full, unit, margin=ctx.margin)
        return pick_nested(points, below, ctx.select_full, unit, contains, margin=ctx.margin)

    def _fill(self, picks: Picks) -> Picks:
        """L7: each pick widened to fill its budget (:func:`~edgedyn.search.levers.fill_budget`),
        the largest budget first; nested picks stay nested (each is widened inside the widened
        pick above it). The widened sub-net replaces the pick whatever its holdout score (the
        one-shot weights score such shapes out of distribution; the final epochs train it); its
        score is recorded for the log and the selection."""
        ctx, nested = self.ctx, self.options.nested
        out = list(picks)
        cap: SubnetSpec | None = None
        with ctx.timed("search"):  # part of the search's cost
            for i in sorted(range(len(out)), key=lambda i: -ctx.limit(out[i][0])):
                budget, point = out[i]
                spec = levers.fill_budget(self.net, point.spec, ctx.price, functools.partial(self._fits, budget),
                                          cap=cap if nested else None)
                if spec != point.spec:
                    grown = PathPoint(spec, ctx.price(spec), self.scorer.record(spec)[1], -1)
                    log.info("fill budget %s: %s (cost %.4g, holdout %.4f) -> %s (cost %.4g, holdout %.4f)",
                             budget.text, list(point.spec.widths), point.cost, point.accuracy, list(spec.widths),
                             grown.cost, grown.accuracy)
                    out[i] = (budget, grown)
                cap = spec
        return out

    def _fits(self, budget: Budget, spec: SubnetSpec) -> bool:
        return self.ctx.price(spec) <= self.ctx.limit(budget) + 1e-12

    def _rescore(self, points: list[PathPoint], below: list[Budget]) -> list[PathPoint]:
        """L1b / L3b: each budget's ``finalists`` most accurate candidates, each fine-tuned
        ``finalist_batches`` batches (the same batches for all; the shared weights restored
        afterwards, bit for bit) and/or BN-recalibrated as the final measurement does
        (``final_bn``), re-recorded on the whole holdout; the other candidates keep their scores."""
        ctx, o = self.ctx, self.options
        if not below or not (o.finalist_batches or o.final_bn):
            return points
        specs = levers.finalists(points, [ctx.limit(b) for b in below], o.finalists)
        with ctx.timed("search"):  # part of the search's cost
            calib = ctx.splits.calib
            if o.final_bn:  # the final measurement's batches (pipeline.measure)
                calib = train.take_batches(ctx.train_loader("final", 0), ctx.c.calib_batches)
            tune = train.take_batches(ctx.train_loader("final", 2), o.finalist_batches) if o.finalist_batches else []
            scores: dict[SubnetSpec, float] = {}
            for spec in specs:
                with levers.restored(self.net):
                    if tune:
                        levers.finetune_on(self.net, spec, tune, o.finalist_lr, ctx.dist, ctx.device)
                    scores[spec] = train.calibrated_loss_and_accuracy(self.net, spec, ctx.splits.holdout, calib,
                                                                      ctx.device)[1]
        for p in points:
            if p.spec in scores:
                log.info("finalist %s: holdout %.4f -> %.4f", list(p.spec.widths), p.accuracy, scores[p.spec])
        return [replace(p, accuracy=scores[p.spec]) if p.spec in scores else p for p in points]

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
        make = lambda gen: train.sandwich_step(self.net, train.chosen_students(chosen, gen),
                                               mean=self.options.sandwich_mean)
        ctx.epochs("train", self.final, make, ctx.c.lr, schedule=(first, ctx.c.train_epochs),
                   stream=("train", first))
