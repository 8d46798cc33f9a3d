"""``torch-pruning``: the Torch-Pruning baseline (what a user of that library does instead).

1. **Pre-training**: the full model, the pipeline's ``pretrain`` phase (or ``--weights``:
   the benchmark's shared pre-trained start).
2. **Pruning, per budget** (the ``search`` CPU seconds): Torch-Pruning's DepGraph pruner
   (``tp.pruner.MetaPruner``, ``tp.importance.GroupMagnitudeImportance(p=2)``, global
   pruning, the classifier in ``ignored_layers``) on a plain copy of the pre-trained model,
   ``round_to`` = the latency table's channel block (``LatencyTable.layout.block``, 16 on
   AVX-512 ONNX Runtime; 1 for a plain layout or MACs; 1 also for a budget below what every
   group at one block costs: resnet20's 16-channel floor is 0.49 of the full model by
   ``profiles/cpu-resnet20.json``, so the benchmark's budget 0.3 is pruned onto the channel
   grid alone). The global ``pruning_ratio`` is
   bisected (``ratio_steps`` halvings) to the smallest ratio whose pruned model fits the
   budget by the same cost model as every other method, with the run's budget margin.
3. **Fine-tuning, per budget** (the ``train`` CPU seconds): each pruned model trained on its
   own with cross-entropy (SGD as the pipeline's, a cosine schedule over its batches, the
   run's ``lr`` unless ``prune_lr``).

**Epochs.** The same total as edgedyn's pipeline: ``pretrain_epochs`` of full-model training
(shared: the same pre-trained start), then the ``train_epochs`` every method spends after it,
divided equally among the distinct pruned models (the full model too, where a budget is
met by it): each gets ``train_epochs x batches per epoch / models`` batches (the first
``total mod models``, smallest first, one batch more). The benchmark's 3 joint epochs and 4
budgets give each model 0.75 of an epoch.

**The picks are sub-nets of the DynamicNet, with weights of their own.** Torch-Pruning's
groups are edgedyn's coupling groups (both come from the same DependencyGraph), so a pruned
model keeps, in every coupling group, a set of channels (not a prefix). Permuting each
group's channels so that the kept ones come first (in their order) makes the pruned model
the prefix sub-net of those widths, exactly (``tests/test_search_pruning.py`` checks the
outputs): its latency is the table's price of that ``SubnetSpec`` (the architecture alone
decides it), and it is fine-tuned, calibrated, measured and saved as that sub-net of its
own permuted copy of the network. ``round_to`` is applied as Torch-Pruning does (the
remaining channels rounded down to a multiple), onto the group's channel grid and never
below its floor, so every count is a width of the grid.

**No shared weights.** Each pick is a network of its own: ``weights.pick<k>.pt`` (k: the
pick's rank by size), named in ``subnets.json`` as the sub-net's ``weights``; ``weights.pt``
holds the largest budget's pick. ``edgedyn deploy`` builds each pick from the file its record
names (``edgedyn.deploy.source``: a plain file name in the run directory, the run's
architecture, checked as ``weights.pt`` is). ``tools/bench_search.py`` times the picks by
their widths and reads their accuracies from ``subnets.json``.

**Resume.** The pruning is recomputed from the pre-trained weights (deterministic); each
fine-tuned model is saved as soon as it is done (tagged with the run's settings), and a
resumed run loads those and fine-tunes the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...dynamic import DynamicNet, SubnetSpec
from ...errors import EdgedynError
from .. import train
from ..context import RunContext
from ..progressive import PathPoint
from ..registry import MethodOptions, Variant, register_method
from .base import Method, Picks
from .usnet_aligned import check_block, run_block

log = logging.getLogger("edgedyn.search")
IMPORTANCE_P = {"l1": 1, "l2": 2}


@dataclass(frozen=True)
class TorchPruningOptions(MethodOptions):
    importance: str = "l2"  # GroupMagnitudeImportance with p=2 ("l1": p=1)
    global_pruning: bool = True  # one global ratio over all groups (False: the same ratio per group)
    block: int | None = None  # round_to (None: the latency table's channel block; 1: the grid only)
    ratio_steps: int = 12  # halvings of the bisection of the pruning ratio
    prune_lr: float | None = None  # the fine-tunes' learning rate (None: the run's lr)

    def validate(self, config: Any) -> None:
        if self.importance not in IMPORTANCE_P:
            raise EdgedynError(f"importance {self.importance!r} is unknown; use one of {', '.join(IMPORTANCE_P)}")
        check_block(self.block)
        if not isinstance(self.ratio_steps, int) or not 1 <= self.ratio_steps <= 30:
            raise EdgedynError(f"ratio_steps must be an integer in 1..30, got {self.ratio_steps!r}")
        if self.prune_lr is not None and not self.prune_lr > 0:
            raise EdgedynError(f"prune_lr must be > 0, got {self.prune_lr}")


@dataclass(frozen=True)
class Pruned:
    """One pruning of the network: the ratio, the widths it leaves, the channels each
    coupling group keeps (ascending)."""

    ratio: float
    spec: SubnetSpec
    kept: tuple[tuple[int, ...], ...]


def allowed_widths(net: DynamicNet, block: int) -> dict[int, tuple[int, ...]]:
    """Channel count -> the widths a group of that many channels may be pruned to: its grid
    from the floor up, multiples of ``block`` (or the full width). One-line error for a
    model this baseline cannot map back (grouped convolutions, or two groups of one size
    with different grids)."""
    out: dict[int, tuple[int, ...]] = {}
    for g in net.groups:
        if g.frozen:
            continue
        if g.unit > 1:
            raise EdgedynError(f"torch-pruning: group {g.index} ({g.name}) is a grouped convolution's; this "
                               "baseline maps only channel counts back to the network's widths")
        widths = tuple(w for w in g.widths_from() if w % block == 0 or w == g.channels)
        if out.setdefault(g.channels, widths) != widths:
            raise EdgedynError(f"torch-pruning: two coupling groups of {g.channels} channels have different grids")
    return out


def floor_spec(net: DynamicNet, block: int) -> SubnetSpec:
    """The smallest sub-net the pruning can leave: every group at its smallest allowed width."""
    allowed = allowed_widths(net, block)
    return SubnetSpec(tuple(g.channels if g.frozen else allowed[g.channels][0] for g in net.groups))


def split_batches(total: int, models: int) -> list[int]:
    """``total`` training batches shared equally by ``models`` fine-tunes (the first
    ``total mod models`` get one more)."""
    return [total // models + (1 if k < total % models else 0) for k in range(models)]


def _pruner_class() -> type:
    """``tp.pruner.MetaPruner`` whose ``round_to`` rounds onto the network's channel grid."""
    import torch_pruning as tp

    class GridPruner(tp.pruner.MetaPruner):
        allowed: dict[int, tuple[int, ...]] = {}

        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            widths = self.allowed.get(current_channels)
            if widths is None:
                return int(super()._round_to(n_pruned, current_channels, round_to))
            keep = current_channels - n_pruned  # as Torch-Pruning: round the remaining channels down
            return current_channels - max((w for w in widths if w <= keep), default=widths[0])

    return GridPruner


def prune(net: DynamicNet, ratio: float, block: int, *, p: int = 2, global_pruning: bool = True,
          model: nn.Module | None = None, apply: bool = False) -> Pruned:
    """Torch-Pruning's pruning of ``net``'s full model (``model``: a plain copy of it, e.g.
    ``net.extract(net.full_spec())``) at ``ratio``, as a :class:`Pruned`. The model is pruned
    in place only with ``apply`` (the decisions are the same either way)."""
    import warnings

    import torch_pruning as tp

    model = net.extract(net.full_spec()) if model is None else model
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    owner = {m.layer: g.index for g in net.groups if not g.frozen for m in g.members if m.side == "out"}
    frozen = [modules[m.layer] for g in net.groups if g.frozen for m in g.members
              if m.side == "out" and isinstance(modules.get(m.layer), (nn.Conv2d, nn.Linear))]
    example = torch.zeros(net.input_shape, device=next(model.parameters()).device)
    cls = _pruner_class()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = cls(model, example, importance=tp.importance.GroupMagnitudeImportance(p=p),
                     global_pruning=global_pruning, pruning_ratio=ratio, round_to=block,
                     ignored_layers=[modules[net.classifier], *frozen])
        pruner.allowed = allowed_widths(net, block)
        removed: dict[int, list[int]] = {}
        for group in pruner.step(interactive=True):
            dep, idxs = group[0]
            root = names.get(dep.target.module)
            if root not in owner or owner[root] in removed:
                raise EdgedynError(f"torch-pruning: a pruning group rooted at {root!r} is not one of "
                                   f"{net.name}'s coupling groups")
            removed[owner[root]] = sorted(int(i) for i in idxs)
            if apply:
                group.prune()
    gone = {g: set(idxs) for g, idxs in removed.items()}
    kept = tuple(tuple(c for c in range(g.channels) if c not in gone.get(g.index, ())) for g in net.groups)
    return Pruned(ratio, net.check_spec(SubnetSpec(tuple(len(k) for k in kept))), kept)


def permuted(net: DynamicNet, pruned: Pruned) -> DynamicNet:
    """A copy of ``net`` whose every group keeps ``pruned``'s channels first: its sub-net
    ``pruned.spec`` is the pruned model."""
    out = copy.deepcopy(net)
    for g, kept in zip(net.groups, pruned.kept):
        if len(kept) < g.channels:
            keep = set(kept)
            rest = [c for c in range(g.channels) if c not in keep]
            out.permute_channels(g.index, [*kept, *rest])
    out.set_subnet(out.full_spec())
    return out


@register_method
class TorchPruning(Method):
    """The pre-trained model pruned by Torch-Pruning to each budget (a bisected global ratio), each fine-tuned."""

    name = "torch-pruning"
    Options = TorchPruningOptions
    phases = ("pretrain",)
    variants = {"torch-pruning": Variant({}, "latency", "Torch-Pruning (DepGraph, L2 magnitude, global ratio "
                                                        "bisected to each budget, round_to the table's block), "
                                                        "each pruned model fine-tuned")}
    options: TorchPruningOptions

    def __init__(self, ctx: RunContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        self.pruned: dict[SubnetSpec, Pruned] = {}
        self.nets: dict[SubnetSpec, DynamicNet] = {}
        self.files: dict[SubnetSpec, str] = {}

    @property
    def block(self) -> int:
        """``round_to``: the option, else the table's channel block."""
        return run_block(self.options.block, self.ctx)

    def check_budgets(self) -> None:
        """The smallest budget must fit the smallest sub-net the pruning can leave (rounded to
        the grid only, as :meth:`round_to` falls back to)."""
        ctx = self.ctx
        spec = floor_spec(self.net, 1)
        ctx.pick([PathPoint(spec, ctx.price(spec), 0.0)])

    def round_to(self, limit: float) -> int:
        """``round_to`` for a budget: the channel block, unless every group at its smallest
        multiple of the block costs more than the budget (the block's floor does not fit);
        then 1, the channel grid alone (what a user whose budget the block cannot meet does)."""
        block = self.block
        if block > 1 and self.ctx.price(floor_spec(self.net, block)) > limit + 1e-12:
            return 1
        return block

    # ---- pruning ----
    def _prune(self, ratio: float, model: nn.Module, block: int) -> Pruned:
        return prune(self.net, ratio, block, p=IMPORTANCE_P[self.options.importance],
                     global_pruning=self.options.global_pruning, model=model)

    def _fit(self, limit: float, model: nn.Module) -> Pruned:
        """The smallest pruning ratio (bisected) whose pruned model costs at most ``limit``."""
        ctx = self.ctx
        full = self.net.full_spec()
        if ctx.price(full) <= limit + 1e-12:
            return Pruned(0.0, full, tuple(tuple(range(g.channels)) for g in self.net.groups))
        block = self.round_to(limit)
        if block != self.block:
            log.info("round_to %d: every group at its smallest multiple of %d costs more than %.4g %s; "
                     "rounded to the channel grid only", block, self.block, limit, ctx.select_cost.unit)
        best = self._prune(1.0, model, block)
        if ctx.price(best.spec) > limit + 1e-12:
            raise EdgedynError(f"torch-pruning: pruning every group to its floor costs {ctx.price(best.spec):.4g} "
                               f"{ctx.select_cost.unit}, above the budget's {limit:.4g}")
        lo, hi = 0.0, 1.0
        for _ in range(self.options.ratio_steps):
            mid = (lo + hi) / 2
            got = self._prune(mid, model, block)
            if ctx.price(got.spec) <= limit + 1e-12:
                hi, best = mid, got
            else:
                lo = mid
        return best

    def select(self) -> Picks:
        """Per budget, the pruned model of the smallest global ratio that fits (timed as the search)."""
        ctx = self.ctx
        with ctx.timed("search"):
            model = self.net.extract(self.net.full_spec())
            picks: Picks = []
            for budget in ctx.budgets:
                got = self._fit(ctx.limit(budget), model)
                self.pruned.setdefault(got.spec, got)
                picks.append((budget, PathPoint(got.spec, ctx.price(got.spec), 1.0 - got.ratio, 0)))
                log.info("budget %s: pruning ratio %.4f leaves %s, cost %.4g %s", budget.text, got.ratio,
                         list(got.spec.widths), ctx.price(got.spec), ctx.select_cost.unit)
        self.net.set_subnet(self.net.full_spec())
        return picks

    # ---- fine-tuning ----
    def train(self, chosen: list[SubnetSpec]) -> None:
        """Each pruned model fine-tuned on its own, the ``train_epochs`` shared equally (see
        the module's docstring); a resumed run loads the models it finished."""
        ctx, c = self.ctx, self.ctx.c
        shares = split_batches(c.train_epochs * self._per_epoch(), len(chosen))
        done, start = ctx.reached("train")
        for k, (spec, batches) in enumerate(zip(chosen, shares)):
            net = permuted(self.net, self.pruned[spec])
            self.nets[spec], self.files[spec] = net, f"weights.pick{k}.pt"
            if (done or k < start) and self._load(net, spec):
                continue
            with ctx.timed("train"):
                self._finetune(net, spec, batches, k)
            log.info("fine-tuned %s: %d batches", list(spec.widths), batches)
            if ctx.dist.is_main:
                net.save(ctx.out / self.files[spec], extra=self._tag(spec))
            if not done:  # a run past this phase whose file was lost fine-tunes again, staying where it is
                ctx.save("train", k + 1)

    def _per_epoch(self) -> int:
        """Batches in one of the pipeline's epochs (the loader's, capped by ``batches_per_epoch``)."""
        n = len(self.ctx.train_loader("train", 0))
        cap = self.ctx.c.batches_per_epoch
        return min(n, cap) if cap else n

    def _finetune(self, net: DynamicNet, spec: SubnetSpec, batches: int, index: int) -> None:
        """``batches`` steps of cross-entropy on ``spec``, cosine decay from the learning rate."""
        ctx, c = self.ctx, self.ctx.c
        lr = self.options.prune_lr or c.lr
        opt = train.make_sgd(net, lr, weight_decay=c.weight_decay)
        step = train.ce_step(net, spec)
        params = list(net.parameters())
        per_epoch, used, epoch = self._per_epoch(), 0, 0
        net.train()
        while used < batches:
            for i, (x, y) in enumerate(ctx.train_loader("train", 1000 * index + epoch)):
                if used >= batches or i >= per_epoch:
                    break
                for group in opt.param_groups:
                    group["lr"] = train.cosine_lr(lr, used, batches)
                x, y = ctx.dist.shard((x.to(ctx.device), y.to(ctx.device)))
                opt.zero_grad(set_to_none=True)
                step(x, y)
                ctx.dist.sync_grads(params)
                opt.step()
                used += 1
            epoch += 1
        net.eval()
        net.set_subnet(net.full_spec())

    def _tag(self, spec: SubnetSpec) -> dict[str, Any]:
        identity = json.dumps(self.ctx.c.identity(), sort_keys=True, default=str)
        return {"torch_pruning": {"run": hashlib.sha256(identity.encode()).hexdigest()[:16],
                                  "widths": list(spec.widths), "kept": [list(k) for k in self.pruned[spec].kept]}}

    def _load(self, net: DynamicNet, spec: SubnetSpec) -> bool:
        """Load a resumed run's fine-tuned model when its file is this run's, for this pick."""
        from ...dynamic.weights import load_weights_file

        path = Path(self.ctx.out) / self.files[spec]
        if not path.is_file():
            return False
        blob = load_weights_file(path)
        if (blob.get("extra") or {}).get("torch_pruning") != self._tag(spec)["torch_pruning"]:
            log.warning("%s is not this run's fine-tuned model for %s; fine-tuning again", path, list(spec.widths))
            return False
        net.load_weights(blob, path)
        net.bn_stats.clear()
        net.set_subnet(net.full_spec())
        return True

    # ---- the networks that serve the picks ----
    def net_for(self, spec: SubnetSpec) -> DynamicNet:
        return self.nets[spec]

    def weights_file(self, spec: SubnetSpec) -> str | None:
        return self.files[spec]
