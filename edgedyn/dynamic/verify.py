"""Check the coupling groups against the model itself: what the tracer missed is frozen.

Torch-Pruning's graph can miss a channel mapping (a channel shuffle written with
``view`` + ``transpose``, a custom indexing op). Reordering a correct coupling group's
channels everywhere it appears leaves the network's output unchanged; a group whose
reordering changes the output has a member the graph did not see, so it is frozen at full
width. Uses its own random generator (the global one is left as it was) and restores the
weights exactly.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .groups import CouplingGroup, LayerInfo
from .slicing import module_of, permute_member

#: Relative output change above which a reordering is taken to have changed the function.
TOLERANCE = 1e-3


@torch.no_grad()
def freeze_unfollowed(model: nn.Module, groups: list[CouplingGroup], layers: dict[str, LayerInfo],
                      example: torch.Tensor) -> list[CouplingGroup]:
    """``groups`` with every group whose channel reordering changes ``model``'s output frozen."""
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(example.shape, generator=gen, dtype=example.dtype).to(example.device)
    was_training = model.training
    model.eval()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    out: list[CouplingGroup] = []
    try:
        ref = model(x)
        scale = float(ref.abs().max()) + 1e-12
        for g in groups:
            if g.frozen or g.channels < 2:
                out.append(g)
                continue
            perm = _order(g, gen)
            for m in g.members:
                info = layers[m.layer]
                permute_member(module_of(modules, info), info, m, g.channels, perm)
            changed = float((model(x) - ref).abs().max()) / scale
            _restore(model, saved)
            if changed > TOLERANCE:
                reason = (f"reordering its channels changes the output ({changed:.1e}): a channel mapping "
                          "the tracer did not see (e.g. a channel shuffle)")
                g = dataclasses.replace(g, grid=(g.channels,), floor=g.channels, frozen=reason)
            out.append(g)
    finally:
        _restore(model, saved)
        model.train(was_training)
    return out


def _order(g: CouplingGroup, gen: torch.Generator) -> torch.Tensor:
    """A random reordering that moves whole units (conv groups of a grouped conv)."""
    blocks = torch.randperm(g.channels // g.unit, generator=gen)
    return (blocks[:, None] * g.unit + torch.arange(g.unit)).flatten()


def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        v.copy_(saved[k])
