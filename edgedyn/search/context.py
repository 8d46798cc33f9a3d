"""A search run's context: the network, the data splits, the cost models and budgets, the
data-parallel job, seeding, timing, checkpoints and the training loop every method shares.

Every random stream is re-seeded from (seed, phase, index) at the start of each unit, so a
resumed run gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch

from ..cost import CostModel
from ..dynamic import DynamicNet, SubnetSpec
from ..errors import ArtifactError, EdgedynError
from . import train
from .checkpoint import PHASES, RunState, check_optimizer, check_tensors, load_checkpoint, save_checkpoint
from .config import DEFAULT_MARGIN, SearchConfig
from .dist import Dist
from .progressive import PathPoint
from .reselect import Budget, parse_budgets, pick
from .scorer import EvalSplits, Scorer

Hook = Callable[[str, int], None]
ScorerFactory = Callable[[DynamicNet, EvalSplits, str], Scorer]
log = logging.getLogger("edgedyn.search")


class RunContext:
    """What every phase of a run uses; ``phases`` is the method's phase order (checkpoints
    advance along it)."""

    def __init__(self, config: SearchConfig, cost_model: CostModel, dist: Dist, hook: Hook | None,
                 select_cost: CostModel | None = None, *, phases: tuple[str, ...] = PHASES,
                 scorer: ScorerFactory = Scorer) -> None:
        from ..data import load_data
        from ..models import get_entry

        config.validate()
        self.c, self.cost_model, self.dist, self.hook = config, cost_model, dist, hook
        self.select_cost = select_cost or cost_model
        self.phases = phases
        self.out = Path(config.out)
        self.device = config.device
        self.budgets = parse_budgets(config.budgets, self.select_cost.unit)
        size = config.input_size or get_entry(config.model).default_input_size
        self.data = load_data(config.data, size, seed=config.seed, holdout_fraction=config.holdout_fraction,
                              limit=config.data_limit)
        torch.manual_seed(config.seed)  # the initial weights
        self.net = DynamicNet.from_name(config.model, num_classes=self.data.num_classes, input_size=size,
                                        channel_groups=config.channel_groups, group_size=config.group_size,
                                        min_groups=config.min_groups,
                                        **config.method_options().net_options((self.select_cost, cost_model)),
                                        ).to(self.device)
        for model in {id(cost_model): cost_model, id(self.select_cost): self.select_cost}.values():
            check = getattr(model, "check", None)
            if callable(check):
                check(self.net)
        self.splits = self._splits()
        self.scorer = scorer(self.net, self.splits, self.device)
        self.state = RunState()
        self.resumed = False  # the state and weights come from the run directory's checkpoint
        if config.weights:  # read now: a bad file fails before the run directory is touched
            from .weights import load_weights_into

            load_weights_into(self.net, config.weights)
        self.full_cost = float(cost_model.cost(self.net, self.net.full_spec()))
        self.select_full = float(self.select_cost.cost(self.net, self.net.full_spec()))
        if config.budget_margin is None:
            self._resolve_margin(config)

    @property
    def margin(self) -> float:
        """The budget margin (resolved when the context is built)."""
        m = self.c.budget_margin
        return DEFAULT_MARGIN if m is None else m

    def _resolve_margin(self, config: SearchConfig) -> None:
        """The budget margin from the budgets' latency table's error tail, else the default."""
        table = getattr(self.select_cost, "table", None)
        tail = table.margin(self.net) if table is not None and hasattr(table, "margin") else None
        if tail is None:
            config.budget_margin = DEFAULT_MARGIN
            return
        config.budget_margin, config.budget_margin_from = round(tail[0], 4), tail[1]
        log.info("budget margin %.1f%% (%s)", 100 * config.budget_margin, tail[1])

    def _splits(self) -> EvalSplits:
        """The holdout, its seeded scoring subset and the rest, the test split, the BN batches."""
        from ..data import make_loader

        c = self.c
        holdout = list(make_loader(self.data.holdout, c.batch_size, shuffle=False))
        # candidates are scored on a fixed, seeded subset of the holdout (the whole of it
        # scores the recorded path points and the picks)
        hold = self.data.holdout
        rest: list | None = None
        if c.score_samples is not None and c.score_samples < len(cast(Sized, hold)):
            from torch.utils.data import Subset

            gen = torch.Generator().manual_seed(c.seed)
            perm = torch.randperm(len(cast(Sized, hold)), generator=gen)
            idx = perm[:c.score_samples].sort().values
            if hasattr(hold, "subset"):
                rest_idx = perm[c.score_samples:].sort().values
                rest = list(make_loader(hold.subset(rest_idx.numpy()), max(c.batch_size, 256), shuffle=False))
                hold = hold.subset(idx.numpy())
            else:
                hold = Subset(hold, idx.tolist())
        score_set = list(make_loader(hold, max(c.batch_size, 256), shuffle=False))
        test = list(make_loader(self.data.test, c.batch_size, shuffle=False))
        calib = make_loader(self.data.train, c.batch_size, shuffle=False)
        search_calib = train.take_batches(calib, c.search_calib_batches) if c.search_calib_batches else []
        if not holdout:
            raise EdgedynError(f"data {c.data!r}: the holdout split is empty; raise holdout_fraction or the limit")
        return EvalSplits(holdout, score_set, rest, test, search_calib)

    # ---- costs and budgets ----
    def price(self, spec: SubnetSpec) -> float:
        """A sub-net's cost in the budgets' unit."""
        return float(self.select_cost.cost(self.net, spec))

    def limit(self, budget: Budget) -> float:
        """``budget`` in the budgets' unit, less the margin below the full model."""
        return budget.limit(self.select_full, self.margin)

    def min_limit(self) -> float:
        """The smallest budget's limit, less the margin: the search may stop below it."""
        return min(self.limit(b) for b in self.budgets)

    def pick(self, points: list[PathPoint], prefer: str = "accuracy") -> list[tuple[Budget, PathPoint]]:
        return pick(points, self.budgets, self.select_full, self.select_cost.unit, prefer=prefer,
                    margin=self.margin)

    # ---- checkpoints ----
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self, phase: str, index: int, optimizer: torch.optim.Optimizer | None = None,
             alphas: Sequence[torch.Tensor] | None = None) -> None:
        s = self.state
        s.phase, s.index = phase, index
        s.optimizer = optimizer.state_dict() if optimizer is not None else None
        s.alphas = [a.detach().cpu() for a in alphas] if alphas is not None else None
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, self.c.identity(), self.net.model.state_dict(), s)
        self.dist.barrier()
        if self.hook is not None:
            self.hook(phase, index)

    def load(self) -> bool:
        """The checkpoint's weights and state, every tensor checked (one-line errors naming the
        file and the tensor); False when there is none."""
        got = load_checkpoint(self.ckpt_path, self.c.identity())
        if got is None:
            return False
        state_dict, state = got
        check_tensors(self.ckpt_path, "state_dict", state_dict, self.net.model.state_dict())
        self.net.model.load_state_dict(state_dict)
        self.state, self.resumed = state, True
        return True

    def before(self, phase: str) -> bool:
        """The run has not reached ``phase`` yet."""
        return PHASES.index(self.state.phase) < PHASES.index(phase)

    def reached(self, phase: str) -> tuple[bool, int]:
        """(phase already finished, units of it already done)."""
        here, target = PHASES.index(self.state.phase), PHASES.index(phase)
        if here > target:
            return True, 0
        return False, self.state.index if here == target else 0

    def advance(self, phase: str) -> None:
        """``phase`` is done: checkpoint the start of the method's next phase (once)."""
        nxt = self.phases[self.phases.index(phase) + 1]
        if self.before(nxt):
            self.save(nxt, 0)

    def _restore(self, opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        """The checkpoint's optimizer state into ``opt`` (one-line errors when it does not fit)."""
        try:
            opt.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ArtifactError(f"{self.ckpt_path}: field 'optimizer' does not fit this phase ({why})") from None
        check_optimizer(self.ckpt_path, opt)

    # ---- seeding, timing, training ----
    def seed(self, phase: str, index: int) -> int:
        s = (self.c.seed * 1_000_003 + PHASES.index(phase) * 10_007 + index) % (2**31 - 1)
        torch.manual_seed(s)
        random.seed(s)
        return s

    def train_loader(self, phase: str, index: int) -> Any:
        from ..data import make_loader

        seed = self.seed(phase, index)
        drop = len(cast(Sized, self.data.train)) >= self.c.batch_size
        return make_loader(self.data.train, self.c.batch_size, shuffle=True, seed=seed, drop_last=drop)

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall and CPU seconds to ``phase``'s timings (``PHASE_s``,
        ``PHASE_cpu_s``, kept in the checkpoint) when it completes."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        timings = self.state.timings
        for key, spent in ((f"{phase}_s", time.perf_counter() - wall), (f"{phase}_cpu_s", time.process_time() - cpu)):
            timings[key] = round(timings.get(key, 0.0) + spent, 3)

    def epochs(self, phase: str, epochs: int, step_fn: Callable[[torch.Generator], train.StepFn], lr: float,
               extra: list[torch.nn.Parameter] | None = None, schedule: tuple[int, int] | None = None,
               stream: tuple[str, int] | None = None) -> None:
        """``epochs`` epochs of ``step_fn``, checkpointed after each. ``stream=(phase, first)``
        draws each epoch's batch order and sub-nets from that phase's seeds from epoch
        ``first`` on (autoslim's training draws US-Nets' streams, so both see the same
        batches, and ``final_epochs=0`` trains the very network US-Nets trains)."""
        done, start = self.reached(phase)
        if done or epochs == 0:
            return
        self.scorer.clear()
        seeds, first = stream or (phase, 0)
        opt = train.make_sgd(self.net, lr, weight_decay=self.c.weight_decay, extra=extra or [])
        if start and self.state.optimizer is not None:
            self._restore(opt, self.state.optimizer)
        for epoch in range(start, epochs):
            with self.timed(phase):
                loader = self.train_loader(seeds, first + epoch)
                gen = torch.Generator().manual_seed(self.seed(seeds, first + epoch))
                loss = train.run_epoch(self.net, loader, opt, step_fn(gen), base_lr=lr, epoch=epoch, epochs=epochs,
                                   dist=self.dist, device=self.device, max_batches=self.c.batches_per_epoch,
                                   desc=phase, extra_params=extra or [], schedule=schedule)
            log.info("%s epoch %d/%d: loss %.4f", phase, epoch + 1, epochs, loss)
            alphas = [p for p in extra] if extra else None
            self.save(phase, epoch + 1, opt, alphas)
