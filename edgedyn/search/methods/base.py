"""The interface every search method implements (:class:`Method`), and the search-path
helpers the searching methods share.

A method is registered by name (:func:`~edgedyn.search.registry.register_method`) and has:

- ``Options``: its options dataclass (a :class:`~edgedyn.search.registry.MethodOptions`),
  read from the :class:`~edgedyn.search.config.SearchConfig` and validated there;
- ``phases``: the phases it runs before the joint training, in order, each a method of
  the class of the same name (``"pretrain"`` first; the names and their order come from
  :data:`~edgedyn.search.checkpoint.PHASES`, which seeds their random streams);
- :meth:`Method.check_budgets`: fail before any training when a budget cannot be met;
- :meth:`Method.select`: the picks, one per budget;
- :meth:`Method.train`: the joint training of the chosen sub-nets;
- ``variants``: named settings for the benchmark (``tools/bench_search.py``).

The pipeline (:mod:`edgedyn.search.pipeline`) resumes, runs the phases, selects, trains,
measures and writes the outputs; a phase skips what the checkpoint already holds.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator
from typing import ClassVar

from ...dynamic import DynamicNet, SubnetSpec
from ...errors import EdgedynError
from .. import train
from ..checkpoint import Leg, Selected
from ..context import RunContext
from ..progressive import PathPoint, Step, next_removals
from ..registry import MethodOptions, Variant
from ..reselect import Budget

log = logging.getLogger("edgedyn.search")
Picks = list[tuple[Budget, PathPoint]]


class Method(abc.ABC):
    """One search method's phases on a :class:`RunContext` (see the module's docstring)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    phases: ClassVar[tuple[str, ...]] = ("pretrain",)
    variants: ClassVar[dict[str, Variant]] = {}

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        self.ctx, self.options = ctx, options
        self.net, self.scorer = ctx.net, ctx.scorer

    # ---- the interface ----
    def check_budgets(self) -> None:
        """Fail before any training when a budget is below the cheapest sub-net the method can
        reach, or the cheapest that ``max_steps`` steps can reach (a cost-greedy estimate
        over :meth:`step_options`)."""
        ctx = self.ctx
        spec = self.net.min_spec()
        ctx.pick([PathPoint(spec, ctx.price(spec), 0.0)])
        if ctx.c.max_steps is None:
            return
        spec, cost = self.net.full_spec(), ctx.full_cost
        for _ in range(ctx.c.max_steps):
            options = self.step_options(spec, cost)
            if not options:
                break
            spec, cost = min(options, key=lambda t: t[1])
        reach = ctx.price(spec)
        unit = ctx.select_cost.unit
        if reach > ctx.min_limit() + 1e-12:
            raise EdgedynError(
                f"--max-steps {ctx.c.max_steps}: the search reaches at best {reach:.4g} {unit} "
                f"({reach / ctx.select_full:.3g} of the full model), above the smallest budget "
                f"({ctx.min_limit():.4g} {unit} with the {ctx.margin:g} margin); "
                "raise --max-steps or the budget")

    def step_options(self, spec: SubnetSpec, cost: float) -> list[tuple[SubnetSpec, float]]:
        """The sub-nets one search step can reach from ``spec`` (costing ``cost``), with
        their steering cost: by default, one channel group fewer in any coupling group."""
        return [(s, float(self.ctx.cost_model.cost(self.net, s))) for _, s in next_removals(self.net, spec)]

    @abc.abstractmethod
    def select(self) -> Picks:
        """The pick for every budget (a resumed run returns the picks it kept)."""

    def before_train(self, picks: Picks) -> None:
        """Called between the selection and the joint training (a diagnostic's hook)."""
        return None  # no diagnostic by default

    def train(self, chosen: list[SubnetSpec]) -> None:
        """Joint (sandwich) training of the chosen sub-nets, ``train_epochs`` epochs."""
        c = self.ctx.c
        make = lambda gen: train.sandwich_step(self.net, train.chosen_students(chosen, gen))
        self.ctx.epochs("train", c.train_epochs, make, c.lr)

    # ---- the networks that serve the picks ----
    def net_for(self, spec: SubnetSpec) -> DynamicNet:
        """The network whose weights serve the pick ``spec``: the run's one network for every
        method that shares weights (``torch-pruning``'s pruned models are networks of their own)."""
        return self.net

    def weights_file(self, spec: SubnetSpec) -> str | None:
        """The file in the run directory that holds the pick ``spec``'s own network (recorded
        as the sub-net's ``weights`` in ``subnets.json``); None: ``weights.pt`` serves it."""
        return None

    # ---- phases ----
    def pretrain(self) -> None:
        """Train the full model (when no weights are given)."""
        c, full = self.ctx.c, self.net.full_spec()
        self.ctx.epochs("pretrain", c.pretrain_epochs, lambda gen: train.ce_step(self.net, full), c.lr)
        self.ctx.advance("pretrain")

    def search(self) -> None:
        """The search phase: the path starts at the full model, :meth:`search_path` extends it."""
        ctx = self.ctx
        done, _ = ctx.reached("search")
        if done:
            return
        with ctx.timed("search"):
            path = ctx.state.path
            if not path:
                full = self.net.full_spec()
                loss, acc = self.scorer.score(full)
                ctx.state.add_point(PathPoint(full, ctx.full_cost, self.start_accuracy(full, acc), 0, loss=loss))
            self.search_path(path)
        ctx.advance("search")

    def start_accuracy(self, full: SubnetSpec, scored: float) -> float:
        """The path's first point's accuracy (by default its score on the scoring subset)."""
        return scored

    def search_path(self, path: list[PathPoint]) -> None:
        """Extend ``path`` (the run's, checkpointed) step by step; a method that lists the
        ``search`` phase defines it."""
        raise EdgedynError(f"method {self.name!r} lists the 'search' phase but defines no search_path")

    # ---- helpers ----
    def fits(self, limit: float) -> Callable[[PathPoint], bool]:
        return lambda point: self.ctx.price(point.spec) <= limit + 1e-12

    def run_steps(self, path: list[PathPoint], steps: Iterator[Step], desc: str, leg: Leg | None = None) -> None:
        """Record every step of a search generator on the path, checkpointing after each."""
        from ...progress import Progress

        ctx = self.ctx
        bar = Progress(desc=desc, initial=path[-1].step, leave=False, unit="step", disable=not ctx.dist.is_main)
        for step in steps:
            ctx.state.add_point(step.point)
            ctx.state.steps.append(step.to_dict())
            if leg is not None:
                leg.points.append(len(path) - 1)
            self.log_step(step)
            bar.update(1)
            ctx.save("search", step.index)
            ctx.seed("search", step.index)
        bar.close()

    def ended_above(self, cost: float, limit: float) -> EdgedynError:
        unit = self.ctx.select_cost.unit
        return EdgedynError(f"the search ended at {cost:.4g} {unit} "
                            f"({cost / self.ctx.select_full:.3g} of the full model), above the smallest budget "
                            f"({limit:.4g} {unit} with the margin); lower the floor "
                            "(--min-groups) or raise the budget")

    def log_step(self, step: Step) -> None:
        p, unit = step.point, self.ctx.cost_model.unit
        ft = f", fine-tuned {p.finetune_batches} batches" if p.finetune_batches else ""
        log.info("step %d: group %d -> %d ch, cost %.4g %s, holdout %.4f%s (%d candidates%s)", step.index,
                 step.chosen.group, p.spec[step.chosen.group], p.cost, unit, p.accuracy,
                 f", loss {p.loss:.4f}" if p.loss is not None else "", len(step.candidates), ft)

    def kept_selection(self) -> Picks | None:
        """The picks a resumed run made before (None when it has made none)."""
        ctx = self.ctx
        if not ctx.state.selection:
            return None
        return [(next(b for b in ctx.budgets if b.text == s.budget), s.point) for s in ctx.state.selection]

    def keep_selection(self, picks: Picks) -> Picks:
        self.ctx.state.selection = [Selected(b.text, p) for b, p in picks]
        return picks
