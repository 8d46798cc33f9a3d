"""Training loops: pre-training, the noise-ranking run, selective fine-tuning, and the
joint sandwich training of the chosen sub-nets (ours) or of uniform widths (US-Nets).

One epoch loop (:func:`run_epoch`) serves every phase; a phase differs only in its
*step* (what one batch does). SGD with Nesterov momentum 0.9, weight decay on conv /
linear weights only, cosine decay per iteration, as in the authors' scripts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..dynamic import DynamicNet, SubnetSpec
from ..dynamic.layers import DynamicConv2d, DynamicLinear
from .dist import Dist

Batch = tuple[torch.Tensor, torch.Tensor]
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- optimisation --------------------------------------------------------------------
def make_sgd(net: DynamicNet, lr: float, *, weight_decay: float = 5e-4, momentum: float = 0.9,
             nesterov: bool = True, extra: Iterable[nn.Parameter] = ()) -> torch.optim.SGD:
    """SGD over ``net`` (+ ``extra``, no decay); weight decay only on conv / linear weights."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for mod in net.model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            is_weight = pname == "weight" and isinstance(mod, (DynamicConv2d, DynamicLinear, nn.Conv2d, nn.Linear))
            (decay if is_weight else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay + list(extra), "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def cosine_lr(base: float, done: int, total: int) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` iterations."""
    return 0.5 * base * (1.0 + math.cos(math.pi * min(done, total) / max(total, 1)))


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Inplace distillation loss: cross-entropy against the teacher's (detached) softmax."""
    return -(F.softmax(target_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1).mean()


# -- steps ---------------------------------------------------------------------------
def ce_step(net: DynamicNet, spec: SubnetSpec) -> StepFn:
    """Plain cross-entropy on one sub-net."""

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net.set_subnet(spec)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss.detach()

    return step


def sandwich_step(net: DynamicNet, students: Callable[[], Sequence[SubnetSpec]], mean: bool = False) -> StepFn:
    """Sandwich rule with inplace distillation: full net on the labels, then each spec in
    ``students()`` on the full net's detached output; gradients accumulate (one step).

    ``mean``: each sub-net's loss is divided by the number of sub-nets in the step (the full
    net and its students), so the step's gradient has the size of one model's (US-Nets sums
    them: from a pre-trained start, a short schedule's first steps are then several times a
    plain fine-tune's). The returned loss is then the mean too."""
    full = net.full_spec()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        specs = list(students())  # the draws do not depend on the forward passes
        scale = 1.0 / (1 + len(specs)) if mean else 1.0  # x 1.0 is exact: the summed step unchanged
        net.set_subnet(full)
        out = net(x)
        loss = F.cross_entropy(out, y)
        (loss * scale).backward()
        teacher = out.detach()
        total = loss.detach()
        for spec in specs:
            net.set_subnet(spec)
            kd = soft_cross_entropy(net(x), teacher)
            (kd * scale).backward()
            total = total + kd.detach()
        net.set_subnet(full)
        return total * scale

    return step


def chosen_students(chosen: Sequence[SubnetSpec], gen: torch.Generator, randoms: int = 2) -> Callable[[], list[SubnetSpec]]:
    """The smallest chosen sub-net and ``randoms`` random chosen ones (never the full net)."""
    ordered = sorted(set(chosen), key=lambda s: sum(s.widths))
    full = ordered[-1]
    pool = [s for s in ordered if s != full] or [full]

    def students() -> list[SubnetSpec]:
        picks = [pool[int(torch.randint(len(pool), (1,), generator=gen))] for _ in range(randoms)]
        return [pool[0], *picks]

    return students


def random_students(net: DynamicNet, gen: torch.Generator, randoms: int = 2) -> Callable[[], list[SubnetSpec]]:
    """AutoSlim's one-shot training: the smallest sub-net and ``randoms`` sub-nets whose
    coupling groups each take an independent, uniformly drawn grid width (non-uniform, so
    that the greedy slimming that follows scores configurations the weights were trained for)."""
    smallest = net.min_spec()

    def students() -> list[SubnetSpec]:
        out = [smallest]
        for _ in range(randoms):
            widths = []
            for g in net.groups:
                choices = g.widths_from()
                widths.append(choices[int(torch.randint(len(choices), (1,), generator=gen))])
            out.append(SubnetSpec(tuple(widths)))
        return out

    return students


def uniform_students(net: DynamicNet, gen: torch.Generator, low: float = 0.25,
                     randoms: int = 2) -> Callable[[], list[SubnetSpec]]:
    """US-Nets: the smallest width ratio and ``randoms`` ratios drawn from U(low, 1)."""

    def students() -> list[SubnetSpec]:
        ratios = [low] + [low + (1 - low) * float(torch.rand((), generator=gen)) for _ in range(randoms)]
        return [net.uniform_spec(r) for r in ratios]

    return students


def neighbour_students(net: DynamicNet, gen: torch.Generator, low: float = 0.25, randoms: int = 2,
                       p: float = 0.5) -> Callable[[], list[SubnetSpec]]:
    """US-Nets' students (:func:`uniform_students`, drawn from ``gen`` exactly as US-Nets
    draws them) with each random one perturbed: every searchable coupling group, with
    probability ``p``, moves one step of its grid up or down (equally likely; a group at its
    floor or full width stays there). The smallest student stays the floor's uniform width.
    The perturbations draw from a generator of their own, seeded from ``gen``'s seed, so the
    uniform widths and batches are US-Nets' (common random numbers)."""
    uniform = uniform_students(net, gen, low, randoms)
    pgen = torch.Generator().manual_seed((gen.initial_seed() + 7919) % (2**63))

    def perturb(spec: SubnetSpec) -> SubnetSpec:
        widths = list(spec.widths)
        for g in net.groups:
            grid = g.widths_from()
            moved = float(torch.rand((), generator=pgen)) < p
            up = float(torch.rand((), generator=pgen)) < 0.5
            if moved and len(grid) > 1:
                i = grid.index(widths[g.index]) + (1 if up else -1)
                widths[g.index] = grid[min(max(i, 0), len(grid) - 1)]
        return SubnetSpec(tuple(widths))

    def students() -> list[SubnetSpec]:
        first, *rest = uniform()
        return [first, *(perturb(s) for s in rest)]

    return students


# -- loops ---------------------------------------------------------------------------
def run_epoch(net: DynamicNet, loader: Iterable[Batch], optimizer: torch.optim.Optimizer, step: StepFn, *,
              base_lr: float, epoch: int, epochs: int, dist: Dist, device: str = "cpu",
              max_batches: int | None = None, desc: str = "train", extra_params: Sequence[nn.Parameter] = (),
              schedule: tuple[int, int] | None = None) -> float:
    """One epoch of ``step`` with per-iteration cosine decay; returns the mean loss.

    ``schedule=(offset, total)`` places this phase's epochs at ``offset`` in a cosine
    schedule of ``total`` epochs (two phases that continue one schedule); by default the
    phase has its own schedule over ``epochs``.
    """
    from ..progress import Progress

    batches = list(loader) if max_batches is None else take_batches(loader, max_batches)
    per_epoch = len(batches)
    offset, total_epochs = schedule if schedule is not None else (0, epochs)
    net.train()
    total, seen = 0.0, 0
    bar = Progress(batches, desc=f"{desc} {epoch + 1}/{epochs}", leave=False, disable=not dist.is_main)
    params = [p for p in net.parameters()] + list(extra_params)
    for i, (x, y) in enumerate(bar):
        lr = cosine_lr(base_lr, (offset + epoch) * per_epoch + i, total_epochs * per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = dist.shard((x.to(device), y.to(device)))
        optimizer.zero_grad(set_to_none=True)
        loss = step(x, y)
        dist.sync_grads(params)
        optimizer.step()
        total += float(loss)
        seen += 1
    bar.close()
    net.eval()
    return total / max(seen, 1)


def finetune(net: DynamicNet, spec: SubnetSpec, loader: Iterable[Batch], evaluate: Callable[[SubnetSpec], float],
             target: float, *, lr: float, max_batches: int, check_every: int, dist: Dist,
             device: str = "cpu") -> tuple[float, int]:
    """Selective fine-tuning of one sub-net until ``evaluate(spec) >= target`` or the cap.

    Plain SGD (no momentum, no weight decay) on the active slices only: set_subnet makes
    the pruned channels receive zero gradient, so they stay exactly as they were.
    Returns (holdout accuracy after, batches trained).
    """
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    step = ce_step(net, spec)
    params = list(net.parameters())
    used = 0
    acc = evaluate(spec)
    it = iter(loader)
    while acc < target and used < max_batches:
        net.train()
        for _ in range(min(check_every, max_batches - used)):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            x, y = dist.shard((x.to(device), y.to(device)))
            optimizer.zero_grad(set_to_none=True)
            step(x, y)
            dist.sync_grads(params)
            optimizer.step()
            used += 1
        net.eval()
        acc = evaluate(spec)
    return acc, used


# -- evaluation ----------------------------------------------------------------------
@torch.no_grad()
def accuracy(net: DynamicNet, spec: SubnetSpec, batches: Iterable[Batch], device: str = "cpu") -> float:
    """Top-1 accuracy of sub-net ``spec`` in eval mode (its own BN statistics if it has any)."""
    net.set_subnet(spec)
    net.eval()
    correct = count = 0
    for x, y in batches:
        pred = net(x.to(device)).argmax(1)
        correct += int((pred == y.to(device)).sum())
        count += int(y.numel())
    return correct / max(count, 1)


@torch.no_grad()
def loss_and_accuracy(net: DynamicNet, spec: SubnetSpec, batches: Iterable[Batch],
                      device: str = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of sub-net ``spec`` in eval mode."""
    net.set_subnet(spec)
    net.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        out = net(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        count += int(y.numel())
    return loss_sum / max(count, 1), correct / max(count, 1)


@contextlib.contextmanager
def temporary_bn(net: DynamicNet, spec: SubnetSpec, calib: Sequence[Batch],
                 stats: dict | None = None) -> Iterator[None]:
    """BatchNorm statistics of ``spec`` recalibrated on ``calib`` (or ``stats``, kept from an
    earlier recalibration) inside the block, and the sub-net's earlier statistics (if any)
    back afterwards (none recalibrated when ``calib`` is empty and no ``stats`` are given)."""
    if not calib and stats is None:
        yield
        return
    kept = net.bn_stats.pop(spec, None)
    if stats is not None:
        net.bn_stats[spec] = stats
    else:
        net.calibrate_bn(spec, calib, len(calib))
    try:
        yield
    finally:
        net.bn_stats.pop(spec, None)
        if kept is not None:
            net.bn_stats[spec] = kept
        net.set_subnet(spec)


def calibrated_loss_and_accuracy(net: DynamicNet, spec: SubnetSpec, holdout: Sequence[Batch],
                                 calib: Sequence[Batch], device: str = "cpu") -> tuple[float, float]:
    """(loss, accuracy) after a temporary BN recalibration on ``calib`` (none when it is empty)."""
    with temporary_bn(net, spec, calib):
        return loss_and_accuracy(net, spec, holdout, device)


def calibrated_accuracy(net: DynamicNet, spec: SubnetSpec, holdout: Sequence[Batch], calib: Sequence[Batch],
                        device: str = "cpu") -> float:
    """Accuracy after a temporary BN recalibration on ``calib`` (none when it is empty)."""
    return calibrated_loss_and_accuracy(net, spec, holdout, calib, device)[1]


def take_batches(loader: Iterable[Batch], n: int) -> list[Batch]:
    out: list[Batch] = []
    for b in loader:
        if len(out) >= n:
            break
        out.append(b)
    return out


def is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
