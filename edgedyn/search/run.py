"""``run_search``: the whole pipeline, checkpointed and resumable.

Three methods share it:

- ``autoslim`` (the default): one-shot training of the network so that every sub-net is
  usable (sandwich rule over uniform widths, as US-Nets trains; ``supernet_students=
  "random"`` draws each group's width independently), greedy slimming on those weights
  steered by the cost model (:mod:`edgedyn.search.slim`) in one leg per budget, each
  leg above the previous budget's pick, then (``final_epochs``) joint training of the
  chosen sub-nets only;
- ``progressive``: the paper's pipeline (Yang et al.): noise ranking, the progressive
  search with selective fine-tuning (:mod:`edgedyn.search.progressive`), joint training
  of the chosen sub-nets;
- ``usnet``: Universally Slimmable Networks, the baseline (uniform widths).

Phases, in order (a method skips the ones it does not use):

1. ``pretrain``  train the full model when no weights are given;
2. ``rank``      trainable-noise (or L1) channel ranking, then the channel permutation (progressive);
3. ``supernet``  one-shot sandwich training, uniform or random per-group widths (autoslim);
4. ``search``    the search, one step at a time (progressive, autoslim);
5. ``train``     joint sandwich training of the chosen sub-nets (or US-Nets uniform widths);
6. ``final``     per-sub-net BN recalibration, holdout and test accuracy, outputs.

The cost model that steers the search and the one that prices budgets may differ (a
search steered by MACs, its picks chosen by a latency table): ``select_cost``.

A checkpoint is written atomically after every epoch and every search step. Every
random stream is re-seeded from (seed, phase, index) at the start of each unit, so a
resumed run gives the same result as an uninterrupted one. autoslim's one-shot and final
epochs draw the ``train`` phase's streams, epoch by epoch, as US-Nets does: the two
pipelines see the same batches (common random numbers), and with ``final_epochs=0`` autoslim
trains exactly US-Nets' network.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..artifacts import atomic_write_bytes, atomic_write_json, load_json
from ..cost import CostModel
from ..dynamic import DynamicNet, SubnetSpec
from ..errors import ArtifactError, EdgedynError
from . import train as T
from .dist import Dist, current
from .progressive import CRITERIA, PathPoint, Step, Threshold, next_removals, progressive_search
from .ranking import RANKINGS, NoiseInjection, apply_order, l1_orders
from .reselect import Budget, pareto, parse_budgets, pick, pick_nested

RESULT_SCHEMA = "edgedyn.search_result/1"
CHECKPOINT_SCHEMA = "edgedyn.search_checkpoint/3"
METHODS = ("autoslim", "progressive", "usnet")
PHASES = ("pretrain", "rank", "supernet", "search", "train", "final")
log = logging.getLogger("edgedyn.search")


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
    budget_margin: float = 0.02  # picks must fit (1 - margin) x a budget below the full model
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
    table: str | None = None  # latency table path (recorded only)
    table_measured: bool | None = None
    select_cost: str | None = None  # the cost model pricing budgets, when not the steering one (recorded)
    compare: tuple[str, ...] = ()  # sibling run dirs drawn in the plot

    def validate(self) -> None:
        if self.method not in METHODS:
            raise EdgedynError(f"method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.ranking not in RANKINGS:
            raise EdgedynError(f"ranking {self.ranking!r} is unknown; use one of {', '.join(RANKINGS)}")
        if self.criterion not in CRITERIA:
            raise EdgedynError(f"criterion {self.criterion!r} is unknown; use one of {', '.join(CRITERIA)}")
        if self.final_epochs is not None and not 0 <= self.final_epochs <= self.train_epochs:
            raise EdgedynError(f"final_epochs must be in 0..train_epochs ({self.train_epochs}), got {self.final_epochs}")
        if self.supernet_students not in ("random", "uniform"):
            raise EdgedynError(f"supernet_students must be 'random' or 'uniform', got {self.supernet_students!r}")
        if self.direction not in ("grow", "slim"):
            raise EdgedynError(f"direction must be 'grow' or 'slim', got {self.direction!r}")
        if not 0.0 < self.slim_step < 1.0:
            raise EdgedynError(f"slim_step must be a fraction in (0, 1), got {self.slim_step}")
        if not 0.0 <= self.budget_margin < 0.5:
            raise EdgedynError(f"budget_margin must be in [0, 0.5), got {self.budget_margin}")
        if self.score_samples is not None and self.score_samples < 1:
            raise EdgedynError(f"score_samples must be >= 1, got {self.score_samples}")
        if self.max_steps is not None and self.max_steps < 1:
            raise EdgedynError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.device not in ("cpu", "cuda"):
            raise EdgedynError(f"device {self.device!r} is unknown; use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EdgedynError("device cuda was asked for but torch sees no CUDA device")
        for name in ("pretrain_epochs", "rank_epochs", "train_epochs", "finetune_batches", "calib_batches"):
            if getattr(self, name) < 0:
                raise EdgedynError(f"{name} must be >= 0")
        if self.batch_size < 1 or self.finetune_check < 1:
            raise EdgedynError("batch_size and finetune_check must be >= 1")
        Threshold.parse(self.threshold)

    @property
    def final(self) -> int:
        """autoslim: the epochs that train the chosen sub-nets only (the rest is one-shot).
        By default a third of ``train_epochs``, at least one when there are two or more (the
        one-shot phase only has to make the search's scores meaningful; the picks it finds
        are trained on their own for the tail of the schedule, as the paper and AutoSlim do)."""
        if self.final_epochs is not None:
            return self.final_epochs
        return max(1, self.train_epochs // 3) if self.train_epochs >= 2 else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compare"] = list(self.compare)
        if self.method == "autoslim":
            d["final_epochs"] = self.final  # the default resolved
        return d

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the interrupted one."""
        d = self.to_dict()
        for k in ("resume", "out", "compare", "table_measured"):
            d.pop(k)
        return d


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

    def to_dict(self) -> dict[str, Any]:
        d = {"budget": self.budget.to_dict(), "widths": list(self.spec.widths), "cost": self.cost,
             "macs": self.macs, "params": self.params, "holdout_accuracy": self.holdout_accuracy,
             "test_accuracy": self.test_accuracy}
        if self.before_train is not None:
            d["before_train"] = self.before_train
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


Hook = Callable[[str, int], None]


# -- the run ---------------------------------------------------------------------------
class _Run:
    """One search run's state; each phase method skips what the checkpoint already holds."""

    def __init__(self, config: SearchConfig, cost_model: CostModel, dist: Dist, hook: Hook | None,
                 select_cost: CostModel | None = None) -> None:
        from ..data import load_data, make_loader
        from ..models import get_entry

        config.validate()
        self.c, self.cost_model, self.dist, self.hook = config, cost_model, dist, hook
        self.select_cost = select_cost or cost_model
        self.out = Path(config.out)
        self.device = config.device
        self.make_loader = make_loader
        self.budgets = parse_budgets(config.budgets, self.select_cost.unit)
        self.threshold = Threshold.parse(config.threshold)
        size = config.input_size or get_entry(config.model).default_input_size
        self.data = load_data(config.data, size, seed=config.seed, holdout_fraction=config.holdout_fraction,
                              limit=config.data_limit)
        torch.manual_seed(config.seed)  # the initial weights
        self.net = DynamicNet.from_name(config.model, num_classes=self.data.num_classes, input_size=size,
                                        channel_groups=config.channel_groups, group_size=config.group_size,
                                        min_groups=config.min_groups).to(self.device)
        for model in {id(cost_model): cost_model, id(self.select_cost): self.select_cost}.values():
            check = getattr(model, "check", None)
            if callable(check):
                check(self.net)
        self.holdout = list(make_loader(self.data.holdout, config.batch_size, shuffle=False))
        # candidates are scored on a fixed, seeded subset of the holdout (the whole of it
        # scores the recorded path points and the picks)
        hold = self.data.holdout
        self.score_rest: list | None = None  # the holdout less the scoring subset (see ``record``)
        if config.score_samples is not None and config.score_samples < len(hold):
            from torch.utils.data import Subset

            gen = torch.Generator().manual_seed(config.seed)
            perm = torch.randperm(len(hold), generator=gen)
            idx = perm[:config.score_samples].sort().values
            if hasattr(hold, "subset"):
                rest = perm[config.score_samples:].sort().values
                self.score_rest = list(make_loader(hold.subset(rest.numpy()), max(config.batch_size, 256),
                                                   shuffle=False))
                hold = hold.subset(idx.numpy())
            else:
                hold = Subset(hold, idx.tolist())
        self.score_set = list(make_loader(hold, max(config.batch_size, 256), shuffle=False))
        self._score_n = sum(int(y.numel()) for _, y in self.score_set)
        self._rest_n = sum(int(y.numel()) for _, y in self.score_rest or [])
        # the last step's scores: BN statistics and the scoring subset's sums, which ``record`` reuses
        self._scored: dict[SubnetSpec, tuple[dict, float, int, int]] = {}
        # ``score`` and ``record`` of every sub-net scored on the current weights: the legs of
        # autoslim's search revisit the same sub-nets (each leg slims from the full model), and
        # a score depends only on the weights, the scoring images and the BN batches (cleared
        # whenever training changes the weights)
        self._memo: dict[tuple[str, SubnetSpec], tuple[float, float]] = {}
        self.test = list(make_loader(self.data.test, config.batch_size, shuffle=False))
        calib = make_loader(self.data.train, config.batch_size, shuffle=False)
        self.search_calib = T.take_batches(calib, config.search_calib_batches) if config.search_calib_batches else []
        if not self.holdout:
            raise EdgedynError(f"data {config.data!r}: the holdout split is empty; raise holdout_fraction or the limit")
        self.state: dict[str, Any] = {"phase": PHASES[0], "index": 0, "optimizer": None, "alphas": None,
                                      "path": [], "steps": [], "selection": None, "timings": {}, "legs": []}
        if config.weights:  # read now: a bad file fails before the run directory is touched
            load_weights_into(self.net, config.weights)
        self.full_cost = float(cost_model.cost(self.net, self.net.full_spec()))
        self.select_full = float(self.select_cost.cost(self.net, self.net.full_spec()))
        self.check_budgets()

    def price(self, spec: SubnetSpec) -> float:
        """A sub-net's cost in the budgets' unit."""
        return float(self.select_cost.cost(self.net, spec))

    def min_limit(self) -> float:
        """The smallest budget's limit, less the margin: the search may stop below it."""
        return min(b.limit(self.select_full, self.c.budget_margin) for b in self.budgets)

    def pick(self, points: list[PathPoint], prefer: str = "accuracy") -> list[tuple[Budget, PathPoint]]:
        return pick(points, self.budgets, self.select_full, self.select_cost.unit, prefer=prefer,
                    margin=self.c.budget_margin)

    def check_budgets(self) -> None:
        """Fail before any training when a budget is below the cheapest sub-net the method can
        reach, or the cheapest that ``max_steps`` steps can reach (a cost-greedy estimate)."""
        if self.c.method == "usnet":
            points = uniform_points(self.net, self.select_cost)
            self.pick(points)
            return
        spec = self.net.min_spec()
        self.pick([PathPoint(spec, self.price(spec), 0.0)])
        if self.c.max_steps is None:
            return
        spec, cost = self.net.full_spec(), self.full_cost
        for _ in range(self.c.max_steps):
            if self.c.method == "autoslim":
                from .slim import step_removals

                options = [(s, c) for _, s, c in step_removals(self.net, spec, self.cost_model, cost,
                                                                self.c.slim_step * self.full_cost)]
            else:
                options = [(s, float(self.cost_model.cost(self.net, s))) for _, s in next_removals(self.net, spec)]
            if not options:
                break
            spec, cost = min(options, key=lambda t: t[1])
        reach = self.price(spec)
        if reach > self.min_limit() + 1e-12:
            raise EdgedynError(
                f"--max-steps {self.c.max_steps}: the search reaches at best {reach:.4g} {self.select_cost.unit} "
                f"({reach / self.select_full:.3g} of the full model), above the smallest budget "
                f"({self.min_limit():.4g} {self.select_cost.unit} with the {self.c.budget_margin:g} margin); "
                "raise --max-steps or the budget")

    # ---- checkpoints ----
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self, phase: str, index: int, optimizer: torch.optim.Optimizer | None = None,
             alphas: list[torch.Tensor] | None = None) -> None:
        self.state.update(phase=phase, index=index,
                          optimizer=optimizer.state_dict() if optimizer is not None else None,
                          alphas=[a.detach().cpu() for a in alphas] if alphas is not None else None)
        if self.dist.is_main:
            blob = {"schema": CHECKPOINT_SCHEMA, "config": self.c.identity(),
                    "state_dict": {k: v.detach().cpu() for k, v in self.net.model.state_dict().items()},
                    **{k: v for k, v in self.state.items()}}
            buf = io.BytesIO()
            torch.save(blob, buf)
            atomic_write_bytes(self.ckpt_path, buf.getvalue())
        self.dist.barrier()
        if self.hook is not None:
            self.hook(phase, index)

    def load(self) -> bool:
        if not self.ckpt_path.is_file():
            return False
        try:
            blob = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ArtifactError(f"{self.ckpt_path}: not a readable checkpoint ({str(err).splitlines()[0][:120]})") from None
        if not isinstance(blob, dict) or blob.get("schema") != CHECKPOINT_SCHEMA:
            raise ArtifactError(f"{self.ckpt_path}: field 'schema' is not {CHECKPOINT_SCHEMA!r}")
        if blob.get("config") != self.c.identity():
            theirs = blob.get("config") or {}
            diff = sorted(k for k in set(theirs) | set(self.c.identity()) if theirs.get(k) != self.c.identity().get(k))
            raise EdgedynError(f"{self.ckpt_path}: cannot resume, the run's settings differ ({', '.join(diff)})")
        self.net.model.load_state_dict(blob["state_dict"])
        for k in self.state:
            self.state[k] = blob.get(k, self.state[k])
        log.info("resumed at phase %s, unit %d", self.state["phase"], self.state["index"])
        return True

    def reached(self, phase: str) -> tuple[bool, int]:
        """(phase already finished, units of it already done)."""
        here = PHASES.index(self.state["phase"])
        target = PHASES.index(phase)
        if here > target:
            return True, 0
        return False, self.state["index"] if here == target else 0

    def seed(self, phase: str, index: int) -> int:
        s = (self.c.seed * 1_000_003 + PHASES.index(phase) * 10_007 + index) % (2**31 - 1)
        torch.manual_seed(s)
        random.seed(s)
        return s

    def train_loader(self, phase: str, index: int):
        seed = self.seed(phase, index)
        drop = len(self.data.train) >= self.c.batch_size
        return self.make_loader(self.data.train, self.c.batch_size, shuffle=True, seed=seed, drop_last=drop)

    # ---- phases ----
    def epochs(self, phase: str, epochs: int, step_fn: Callable[[torch.Generator], T.StepFn], lr: float,
               extra: list[torch.nn.Parameter] | None = None, schedule: tuple[int, int] | None = None,
               stream: tuple[str, int] | None = None) -> None:
        """``epochs`` epochs of ``step_fn``. ``stream=(phase, first)`` draws each epoch's batch
        order and sub-nets from that phase's seeds from epoch ``first`` on (autoslim's training
        draws US-Nets' streams, so both see the same batches, and ``final_epochs=0`` trains the
        very network US-Nets trains)."""
        done, start = self.reached(phase)
        if done or epochs == 0:
            return
        self._memo.clear()
        seeds, first = stream or (phase, 0)
        opt = T.make_sgd(self.net, lr, weight_decay=self.c.weight_decay, extra=extra or [])
        if start and self.state["optimizer"] is not None:
            opt.load_state_dict(self.state["optimizer"])
        for epoch in range(start, epochs):
            with self.timed(phase):
                loader = self.train_loader(seeds, first + epoch)
                gen = torch.Generator().manual_seed(self.seed(seeds, first + epoch))
                loss = T.run_epoch(self.net, loader, opt, step_fn(gen), base_lr=lr, epoch=epoch, epochs=epochs,
                                   dist=self.dist, device=self.device, max_batches=self.c.batches_per_epoch,
                                   desc=phase, extra_params=extra or [], schedule=schedule)
            log.info("%s epoch %d/%d: loss %.4f", phase, epoch + 1, epochs, loss)
            alphas = [p for p in extra] if extra else None
            self.save(phase, epoch + 1, opt, alphas)

    def pretrain(self) -> None:
        full = self.net.full_spec()
        self.epochs("pretrain", self.c.pretrain_epochs, lambda gen: T.ce_step(self.net, full), self.c.lr)
        self.advance("pretrain")

    def rank(self) -> None:
        done, start = self.reached("rank")
        if done:
            return
        if self.c.ranking == "l1":
            orders = l1_orders(self.net)
        else:
            with NoiseInjection(self.net) as noise:
                if self.state["alphas"] is not None and start:
                    with torch.no_grad():
                        for a, saved in zip(noise.alphas, self.state["alphas"]):
                            a.copy_(saved)
                full = self.net.full_spec()
                self.epochs("rank", self.c.rank_epochs, lambda gen: T.ce_step(self.net, full), self.c.rank_lr,
                            extra=list(noise.parameters()))
                orders = noise.orders()
        apply_order(self.net, orders)
        log.info("ranked channels by %s", self.c.ranking)
        self.advance("rank")

    def supernet(self) -> None:
        """autoslim: one-shot sandwich training, uniform or random per-group widths (the first
        ``train_epochs - final`` epochs of the joint schedule)."""
        epochs = self.c.train_epochs - self.c.final
        students = T.random_students if self.c.supernet_students == "random" else T.uniform_students
        self.epochs("supernet", epochs, lambda gen: T.sandwich_step(self.net, students(self.net, gen)),
                    self.c.lr, schedule=(0, self.c.train_epochs), stream=("train", 0))
        self.advance("supernet")

    def evaluate(self, spec: SubnetSpec) -> float:
        """Held-out accuracy on the scoring subset, after a temporary BN recalibration."""
        return T.calibrated_accuracy(self.net, spec, self.score_set, self.search_calib, self.device)

    def score(self, spec: SubnetSpec) -> tuple[float, float]:
        """(loss, accuracy) on the scoring subset, after a temporary BN recalibration (once per
        sub-net on the current weights)."""
        key = ("score", spec)
        if key not in self._memo:
            self._memo[key] = self._score(spec)
        return self._memo[key]

    def _score(self, spec: SubnetSpec) -> tuple[float, float]:
        if self.score_rest is None:
            return T.calibrated_loss_and_accuracy(self.net, spec, self.score_set, self.search_calib, self.device)
        with T.temporary_bn(self.net, spec, self.search_calib):
            loss, acc = T.loss_and_accuracy(self.net, spec, self.score_set, self.device)
            n = self._score_n
            self._scored[spec] = (self.net.bn_stats.get(spec), loss * n, round(acc * n), n)
        return loss, acc

    def record(self, spec: SubnetSpec) -> tuple[float, float]:
        """(loss, accuracy) on the whole holdout, after a temporary BN recalibration.

        With a scoring subset, the holdout is its subset and the rest: a sub-net the last
        step scored keeps its BN statistics and subset sums, and only the rest is evaluated
        (every rank computes the same sums whether it scored the sub-net or not). Once per
        sub-net on the current weights."""
        key = ("record", spec)
        if key not in self._memo:
            self._memo[key] = self._record(spec)
        return self._memo[key]

    def _record(self, spec: SubnetSpec) -> tuple[float, float]:
        if self.score_rest is None:
            return T.calibrated_loss_and_accuracy(self.net, spec, self.holdout, self.search_calib, self.device)
        if spec not in self._scored:
            self._score(spec)
        stats, loss_sum, correct, n = self._scored[spec]
        self._scored.clear()
        with T.temporary_bn(self.net, spec, self.search_calib, stats=stats):
            loss, acc = T.loss_and_accuracy(self.net, spec, self.score_rest, self.device)
        m = self._rest_n
        return (loss_sum + loss * m) / (n + m), (correct + round(acc * m)) / (n + m)

    def search(self) -> None:
        done, _ = self.reached("search")
        if done:
            return
        with self.timed("search"):
            path = [PathPoint.from_dict(d) for d in self.state["path"]]
            full = self.net.full_spec()
            if not path:
                loss, acc = self.score(full)
                if self.c.method == "autoslim":
                    acc = self.record(full)[1]
                path = [PathPoint(full, self.full_cost, acc, 0, loss=loss)]
                self.state["path"] = [path[0].to_dict()]
            if self.c.method == "autoslim" and self.c.direction == "grow":
                self._grow_legs(path)
            elif self.c.method == "autoslim":
                self._slim_legs(path)
            else:
                self._progressive(path)
        self.advance("search")

    def _stop(self, limit: float) -> Callable[[PathPoint], bool]:
        return lambda point: self.price(point.spec) <= limit + 1e-12

    def _run_steps(self, path: list[PathPoint], steps: Iterator[Step], desc: str, leg: dict | None = None) -> None:
        """Record every step of a search generator on the path, checkpointing after each."""
        from ..progress import Progress

        bar = Progress(desc=desc, initial=path[-1].step, leave=False, unit="step", disable=not self.dist.is_main)
        for step in steps:
            path.append(step.point)
            self.state["path"].append(step.point.to_dict())
            self.state["steps"].append(step.to_dict())
            if leg is not None:
                leg["points"].append(len(path) - 1)
            self._log_step(step)
            bar.update(1)
            self.save("search", step.index)
            self.seed("search", step.index)
        bar.close()

    def _ended_above(self, cost: float, limit: float) -> EdgedynError:
        return EdgedynError(f"the search ended at {cost:.4g} {self.select_cost.unit} "
                            f"({cost / self.select_full:.3g} of the full model), above the smallest budget "
                            f"({limit:.4g} {self.select_cost.unit} with the margin); lower the floor "
                            "(--min-groups) or raise the budget")

    def _progressive(self, path: list[PathPoint]) -> None:
        """The paper's progressive search: one path from the full model to the smallest budget."""
        limit = self.min_limit()
        stop = self._stop(limit)
        remaining = None if self.c.max_steps is None else max(0, self.c.max_steps - path[-1].step)
        self.seed("search", path[-1].step)
        target = self.threshold.target(path[0].accuracy)

        def finetune(spec: SubnetSpec, goal: float) -> tuple[float, int]:
            loader = self.train_loader("search", 100_000 + len(path))
            return T.finetune(self.net, spec, loader, self.evaluate, goal, lr=self.c.finetune_lr,
                              max_batches=self.c.finetune_batches, check_every=self.c.finetune_check,
                              dist=self.dist, device=self.device)

        steps = progressive_search(self.net, self.cost_model, self.evaluate, path[-1], target=target,
                                   finetune=finetune if self.threshold.kind != "none" else None,
                                   dist=self.dist, max_steps=remaining, criterion=self.c.criterion, stop=stop)
        self._run_steps(path, steps, f"search ({self.c.method})")
        if not stop(path[-1]):
            raise self._ended_above(self.price(path[-1].spec), limit)

    def _candidates(self, path: list[PathPoint]) -> list[PathPoint]:
        """Re-selection's candidates: every recorded point (all legs), priced in the budgets'
        unit, the groups' floors, and the uniform widths (the one-shot training trained
        those), each once."""
        out = {}
        for p in path:
            out.setdefault(p.spec, replace(p, cost=self.price(p.spec)))
        extra = [self.net.min_spec()]
        if self.c.uniform_candidates:
            extra += [u.spec for u in uniform_points(self.net, self.select_cost)]
        for spec in extra:
            if spec not in out:
                out[spec] = PathPoint(spec, self.price(spec), self.record(spec)[1], -1)
        return list(out.values())

    def _slim_legs(self, path: list[PathPoint]) -> None:
        """autoslim: greedy slimming in legs, budget by budget from the smallest up.

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
        room = self.c.slim_step * self.select_full
        floor = self.net.min_spec()
        for budget in self.budgets:
            limit = budget.limit(self.select_full, self.c.budget_margin)
            if limit >= self.select_full * (1 - 1e-9):
                break  # the full model meets it
            self._leg(path, floor, budget, limit)
            best = self._best(path, floor, limit)
            if best.spec != floor and limit - best.cost >= room - 1e-12:
                self._leg(path, best.spec, budget, limit)
                best = self._best(path, floor, limit)
            log.info("budget %s (floor %s): pick %s, cost %.4g %s, holdout %.4f", budget.text, list(floor.widths),
                     list(best.spec.widths), best.cost, self.select_cost.unit, best.accuracy)
            floor = best.spec

    def _grow_legs(self, path: list[PathPoint]) -> None:
        """autoslim, ``direction="grow"``: budget by budget from the smallest up, start from
        the most accurate candidate that fits and contains the previous pick (a uniform
        width, the groups' floors, or a point recorded before), and grow it greedily until
        nothing wider fits the budget (:func:`~edgedyn.search.slim.grow_search`). The pick is
        then the most accurate candidate that fits and contains the previous pick, and the
        next budget starts from it. Re-selection takes the best nested chain over every
        recorded point (:func:`pick_nested`).

        Growing spends each budget where the held-out loss falls most, on top of a sub-net
        that is already good at the budget below; it scores thin candidates, which cost far
        less than slimming from the full model does (``direction="slim"``).
        """
        floor = self.net.min_spec()
        for budget in self.budgets:
            limit = budget.limit(self.select_full, self.c.budget_margin)
            if limit >= self.select_full * (1 - 1e-9):
                break  # the full model meets it
            leg = next((g for g in self.state["legs"] if g["budget"] == budget.text), None)  # resumed
            start = SubnetSpec.of(leg["floor"]) if leg else self._best(path, floor, limit).spec
            self._leg(path, start, budget, limit, grow=True)
            best = self._best(path, floor, limit)
            log.info("budget %s (above %s): grown from %s, pick %s, cost %.4g %s, holdout %.4f", budget.text,
                     list(floor.widths), list(start.widths), list(best.spec.widths), best.cost,
                     self.select_cost.unit, best.accuracy)
            floor = best.spec

    def _best(self, path: list[PathPoint], floor: SubnetSpec, limit: float) -> PathPoint:
        """The most accurate candidate that fits ``limit`` and contains ``floor`` (ties: the cheaper)."""
        fits = [p for p in self._candidates(path) if p.cost <= limit + 1e-12 and p.spec.contains(floor)]
        return max(fits, key=lambda p: (p.accuracy, -p.cost))

    def _leg(self, path: list[PathPoint], floor: SubnetSpec, budget: Budget, limit: float, grow: bool = False) -> None:
        """Slim from the full model to ``limit`` above ``floor`` (``grow``: grow ``floor`` up to
        ``limit``), unless a leg from this floor already did; an interrupted leg continues
        where it stopped."""
        from .slim import grow_search, slim_search

        legs: list[dict] = self.state["legs"]
        same = [g for g in legs if g["floor"] == list(floor.widths)]
        if grow:
            leg = next((g for g in same if g["budget"] == budget.text), None)
        else:
            leg = next((g for g in same if not g["done"] or g["limit"] <= limit + 1e-12), None)
        if leg is None:
            leg = {"floor": list(floor.widths), "budget": budget.text, "limit": limit, "points": [], "done": False}
            if not grow:
                leg["points"] = [0]
            legs.append(leg)
        if leg["done"]:
            return
        step_cost = self.c.slim_step * self.full_cost
        if grow:
            if leg["points"]:
                start = path[leg["points"][-1]]
            else:  # a candidate that fits (a uniform width, the floors, a recorded point)
                acc = next(p.accuracy for p in self._candidates(path) if p.spec == floor)
                start = PathPoint(floor, float(self.cost_model.cost(self.net, floor)), acc,
                                  len(self.state["steps"]), loss=self.score(floor)[0])
        else:
            start = path[leg["points"][-1]] if len(leg["points"]) > 1 else replace(path[0], step=len(self.state["steps"]))
        remaining = None if self.c.max_steps is None else max(0, self.c.max_steps - start.step)
        self.seed("search", start.step)
        desc = f"search leg {len(legs)} (budget {leg['budget']})"
        if grow:
            lim = leg["limit"]
            steps = grow_search(self.net, self.cost_model, self.score, start, step_cost=step_cost,
                                fits=lambda spec: self.price(spec) <= lim + 1e-12, dist=self.dist,
                                max_steps=remaining, record=self.record)
            self._run_steps(path, steps, desc, leg)
        else:
            stop = self._stop(leg["limit"])
            steps = slim_search(self.net, self.cost_model, self.score, start, step_cost=step_cost, stop=stop,
                                dist=self.dist, max_steps=remaining, record=self.record, floor=floor)
            self._run_steps(path, steps, desc, leg)
            end = path[leg["points"][-1]]
            if not stop(end):
                raise self._ended_above(self.price(end.spec), leg["limit"])
        leg["done"] = True
        self.save("search", len(self.state["steps"]))

    def _log_step(self, step: Step) -> None:
        p, unit = step.point, self.cost_model.unit
        ft = f", fine-tuned {p.finetune_batches} batches" if p.finetune_batches else ""
        log.info("step %d: group %d -> %d ch, cost %.4g %s, holdout %.4f%s (%d candidates%s)", step.index,
                 step.chosen.group, p.spec[step.chosen.group], p.cost, unit, p.accuracy,
                 f", loss {p.loss:.4f}" if p.loss is not None else "", len(step.candidates), ft)

    def select(self) -> list[tuple[Budget, PathPoint]]:
        if self.c.method == "usnet":
            points = uniform_points(self.net, self.select_cost)
            return self.pick(points, prefer="cost")
        if self.state.get("selection"):  # resumed after the selection: the same picks
            return [(next(b for b in self.budgets if b.text == d["budget"]), PathPoint.from_dict(d["point"]))
                    for d in self.state["selection"]]
        path = [replace(p, cost=self.price(p.spec)) for p in (PathPoint.from_dict(d) for d in self.state["path"])]
        if self.c.method == "autoslim":
            # every point was scored on the same one-shot weights, so they compare as they are;
            # the picks are the most accurate nested chain that fits the budgets
            # The full model serves every budget it fits: it contains every other pick, and the
            # holdout's noise must not swap it for a slightly smaller sub-net (which, with
            # final epochs, would also take the full model out of the training).
            path = self._candidates(path)
            full = next(p for p in path if p.spec == self.net.full_spec())
            below = [b for b in self.budgets if b.limit(self.select_full, self.c.budget_margin) < full.cost]
            picks = pick_nested(path, below, self.select_full, self.select_cost.unit,
                                lambda a, b: a.spec.contains(b.spec), margin=self.c.budget_margin) if below else []
            picks += [(b, full) for b in self.budgets if b not in below]
            log.info("re-selection: %d candidates (search path and uniform widths), nested picks", len(path))
            self.state["selection"] = [{"budget": b.text, "point": p.to_dict()} for b, p in picks]
            return picks
        # Each point keeps the held-out accuracy it had when the search reached it (after that
        # step's fine-tuning), as in the paper. Re-scoring every point on the final search weights
        # was tried and is worse: those weights were last fine-tuned for the smallest sub-nets, so
        # the larger ones score low and the filter keeps almost only the smallest.
        front = pareto(path)
        log.info("re-selection: %d path points, %d on the Pareto front", len(path), len(front))
        picks = self.pick(front)
        self.state["selection"] = [{"budget": b.text, "point": p.to_dict()} for b, p in picks]
        return picks

    def joint(self, chosen: list[SubnetSpec]) -> None:
        if self.c.method == "usnet":
            make = lambda gen: T.sandwich_step(self.net, T.uniform_students(self.net, gen))
        else:
            make = lambda gen: T.sandwich_step(self.net, T.chosen_students(chosen, gen))
        if self.c.method == "autoslim":  # the last epochs of the schedule the one-shot phase began
            first = self.c.train_epochs - self.c.final
            self.epochs("train", self.c.final, make, self.c.lr, schedule=(first, self.c.train_epochs),
                        stream=("train", first))
        else:
            self.epochs("train", self.c.train_epochs, make, self.c.lr)
        self.advance("train")

    def before_train(self, picks: list[tuple[Budget, PathPoint]]) -> None:
        """autoslim: the picks' accuracies on the one-shot weights, before the chosen sub-nets
        are trained (what the final phase adds; kept in the selection, so resumes keep it)."""
        sel = self.state["selection"]
        if self.c.method != "autoslim" or not self.c.before_train or all("before_train" in d for d in sel):
            return
        # timed: what this diagnostic cost (a benchmark takes it out of the pipeline's time)
        with self.timed("before_train"):
            self.seed("final", 1)
            calib = T.take_batches(self.train_loader("final", 1), self.c.calib_batches)
            cache: dict[SubnetSpec, dict[str, float]] = {}
            for d, (_, point) in zip(sel, picks):
                if point.spec not in cache:
                    with T.temporary_bn(self.net, point.spec, calib):
                        cache[point.spec] = {
                            "holdout_accuracy": T.accuracy(self.net, point.spec, self.holdout, self.device),
                            "test_accuracy": T.accuracy(self.net, point.spec, self.test, self.device)}
                d["before_train"] = cache[point.spec]
        self.net.set_subnet(self.net.full_spec())

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall and CPU seconds to ``phase``'s timings (``PHASE_s``,
        ``PHASE_cpu_s``, kept in the checkpoint) when it completes."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        timings = self.state.setdefault("timings", {})
        for key, spent in ((f"{phase}_s", time.perf_counter() - wall), (f"{phase}_cpu_s", time.process_time() - cpu)):
            timings[key] = round(timings.get(key, 0.0) + spent, 3)

    def advance(self, phase: str) -> None:
        nxt = PHASES[PHASES.index(phase) + 1]
        if PHASES.index(self.state["phase"]) < PHASES.index(nxt):
            self.save(nxt, 0)

    def final(self, picks: list[tuple[Budget, PathPoint]]) -> SearchResult:
        with self.timed("final"):
            subnets = self._measure(picks)
        path = [PathPoint.from_dict(d) for d in self.state["path"]]
        return SearchResult(self.c, self.net, self.select_cost.name, self.select_cost.unit, self.select_full,
                            subnets, path, list(self.state["steps"]), self.out, dict(self.state.get("timings") or {}),
                            [{k: g[k] for k in ("budget", "floor", "points")} for g in self.state["legs"]])

    def _measure(self, picks: list[tuple[Budget, PathPoint]]) -> list[ChosenSubnet]:
        """Each pick's BN statistics recalibrated, its holdout and test accuracy."""
        self.seed("final", 0)
        calib = T.take_batches(self.train_loader("final", 0), self.c.calib_batches)
        measured: dict[SubnetSpec, tuple[float, float]] = {}
        subnets = []
        for budget, point in picks:
            spec = point.spec
            if spec not in measured:
                self.net.calibrate_bn(spec, calib, self.c.calib_batches)
                measured[spec] = (T.accuracy(self.net, spec, self.holdout, self.device),
                                  T.accuracy(self.net, spec, self.test, self.device))
            hold, test = measured[spec]
            before = next((d.get("before_train") for d in self.state.get("selection") or []
                           if d["budget"] == budget.text), None)
            subnets.append(ChosenSubnet(budget, spec, point.cost, self.net.macs(spec), self.net.params(spec),
                                        hold, test, before))
            log.info("budget %s: %s cost %.4g %s, holdout %.4f, test %.4f", budget.text, spec, point.cost,
                     self.select_cost.unit, hold, test)
        self.net.set_subnet(self.net.full_spec())
        return subnets

    def run(self) -> SearchResult:
        if self.c.resume:
            self.load()
        elif self.ckpt_path.exists() and self.dist.is_main:
            self.ckpt_path.unlink()
        self.dist.barrier()
        first = {"progressive": "rank", "autoslim": "supernet", "usnet": "train"}[self.c.method]
        if self.c.weights and self.state["phase"] == "pretrain" and self.state["index"] == 0:
            load_weights_into(self.net, self.c.weights)
            self.save(first, 0)
        if self.c.method == "progressive":
            self.pretrain()
            self.rank()
            self.search()
        elif self.c.method == "autoslim":
            self.pretrain()
            self.supernet()
            self.search()
        elif PHASES.index(self.state["phase"]) < PHASES.index("train"):
            self.pretrain_usnet()
        picks = self.select()
        if self.c.method != "usnet" and PHASES.index(self.state["phase"]) <= PHASES.index("train") \
                and self.state["index"] == 0:
            self.before_train(picks)
        chosen = sorted({p.spec for _, p in picks}, key=lambda s: sum(s.widths))
        self.joint(chosen)
        result = self.final(picks)
        if self.dist.is_main:
            write_outputs(result)
        self.dist.barrier()
        return result

    def pretrain_usnet(self) -> None:
        full = self.net.full_spec()
        self.epochs("pretrain", self.c.pretrain_epochs, lambda gen: T.ce_step(self.net, full), self.c.lr)
        if PHASES.index(self.state["phase"]) < PHASES.index("train"):
            self.save("train", 0)


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


def load_weights_into(net: DynamicNet, path: str | Path) -> None:
    """Load an edgedyn weights file, or a plain state dict of the same model (one-line errors)."""
    from ..dynamic.net import WEIGHTS_SCHEMA, load_weights_file, read_torch_file

    path = Path(path)
    blob = read_torch_file(path)
    if isinstance(blob, dict) and "schema" in blob:
        blob = load_weights_file(path)
        if blob["schema"] == WEIGHTS_SCHEMA and blob["config"].get("model") != net.name:
            raise ArtifactError(f"{path}: field 'config.model' is {blob['config'].get('model')!r}, "
                                f"expected {net.name!r}")
        net.load_weights(blob, path)
        net.bn_stats.clear()
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        net.load_weights({"state_dict": blob}, path)
    else:
        raise ArtifactError(f"{path}: neither an edgedyn weights file nor a state dict")
    net.set_subnet(net.full_spec())


def check_out_dir(out: Path) -> None:
    """One-line error, before anything is written, when ``out`` cannot be a run directory."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"has a file {p} in its path"
                raise EdgedynError(f"--out {out}: {what}, not a directory")
            break


def run_search(config: SearchConfig, cost_model: CostModel, *, dist: Dist | None = None,
               hook: Hook | None = None, select_cost: CostModel | None = None) -> SearchResult:
    """Run (or resume) a search and write its outputs to ``config.out``.

    Every input (settings, data, weights, table, budgets) is checked before anything in
    ``config.out`` is touched: a failed start leaves an earlier run's checkpoint and log as
    they were.

    Args:
        config: the run's settings.
        cost_model: steers the search (:class:`~edgedyn.cost.LatencyCost`, :class:`~edgedyn.cost.FlopsCost`).
        dist: the data-parallel job (default: the initialised process group, if any).
        hook: called as ``hook(phase, index)`` after every checkpoint (tests interrupt here).
        select_cost: prices the budgets and the picks (default: ``cost_model``), e.g. a latency
            table for a search steered by MACs.
    """
    dist = dist or current()
    out = Path(config.out)
    check_out_dir(out)
    if config.select_cost is None and select_cost is not None and select_cost is not cost_model:
        config.select_cost = select_cost.name
    run = _Run(config, cost_model, dist, hook, select_cost)
    handler = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "search.log", mode="a" if config.resume else "w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handler.setLevel(logging.DEBUG)
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
    try:
        if dist.is_main:
            log.debug("search: %s", config.to_dict())
        return run.run()
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def pretrain_only(config: SearchConfig, path: str | Path) -> Path:
    """Pre-train the full model as ``run_search`` would and save it (shared start for comparisons)."""
    from ..cost import FlopsCost

    cfg = SearchConfig(**{**config.to_dict(), "budgets": "1.0", "resume": False, "weights": None,
                          "compare": tuple(config.compare)})
    run = _Run(cfg, FlopsCost(), current(), None)
    run.pretrain()
    run.net.set_subnet(run.net.full_spec())
    return run.net.save(path)


# -- outputs ---------------------------------------------------------------------------
def write_outputs(result: SearchResult) -> None:
    """``subnets.json``, ``weights.pt`` and ``accuracy_latency.png`` in the run directory."""
    out = Path(result.out_dir or result.config.out)
    doc = result.to_dict()
    result.net.save(out / "weights.pt", extra={"search_result": RESULT_SCHEMA,
                                               "subnets": [s.to_dict()["widths"] for s in result.subnets]})
    atomic_write_json(out / "subnets.json", doc)
    try:
        plot(doc, out / "accuracy_latency.png", [Path(p) for p in result.config.compare])
    except ImportError:
        log.warning("matplotlib is not installed; no plot")


def load_result(path: str | Path) -> dict[str, Any]:
    """Load a ``subnets.json`` (or a run directory holding one), checking its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "subnets.json"
    from ..validate import validate_search_result

    doc = load_json(path, RESULT_SCHEMA)
    validate_search_result(doc, str(path))  # every number finite and in its range
    return doc


def plot(doc: dict[str, Any], path: Path, others: list[Path] = ()) -> Path:
    """Accuracy against cost: the search path (holdout) and the chosen sub-nets (test)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = doc["cost"]["unit"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if doc["path"]:
        ax.plot([p["cost"] for p in doc["path"]], [100 * p["holdout_accuracy"] for p in doc["path"]],
                ".", color="0.7", label="search path (holdout)")
    label = f"{doc['config']['method']}/{doc['cost']['name']}"
    for name, d in [(label, doc)] + [(_label(o), _maybe(o)) for o in others]:
        if d is None or d["cost"]["unit"] != unit:
            continue
        pts = sorted((s["cost"], 100 * s["test_accuracy"]) for s in d["subnets"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{name} (test)")
    ax.set_xlabel(f"cost ({unit})")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _maybe(path: Path) -> dict[str, Any] | None:
    try:
        return load_result(path)
    except ArtifactError as err:
        log.warning("plot: skipping %s", err)
        return None


def _label(path: Path) -> str:
    d = _maybe(path)
    return path.name if d is None else f"{path.name}: {d['config']['method']}/{d['cost']['name']}"
