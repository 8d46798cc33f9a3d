"""Channel ranking: which channels of each coupling group matter least.

Two rankings, both ending in :func:`apply_order`, which permutes every group so that
its most important channels come first (prefix slicing then keeps them):

- ``noise``: trainable noise ranking (Parametric Noise Injection, He, Rakin & Fan,
  CVPR 2019). Each coupling group gets one trainable scalar alpha per channel
  (init 0). In training mode every conv / linear layer whose *output* channels are in
  the group computes with ``W + alpha_c * n``, with ``n ~ N(0, std(W))`` fresh each
  forward and detached; there is no noise in eval mode. After a short cross-entropy
  training run, channels with the largest ``|alpha|`` tolerate the most noise and are
  removed first. The noise branch computes with the layer's own active weight
  (``active_weight``: index maps after a concat, the group count of a depthwise or grouped
  conv). A layer whose outputs span several groups (a depthwise conv after a concat) gets
  no noise of its own: the layers producing its inputs carry it.
- ``l1``: the sum of the L1 norms of the group's output filters; smallest removed first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..dynamic import DynamicNet
from ..dynamic.layers import DynamicConv2d, DynamicLinear
from ..dynamic.slicing import module_of

RANKINGS = ("noise", "l1")


class NoiseInjection:
    """Trainable per-channel noise on the dynamic layers of ``net`` (removable).

    Implemented with forward hooks: because the noise term is linear in the weights,
    ``layer(x; W + a*n) = layer(x; W) + a * layer(x; n)`` for each output channel, so the
    hook adds ``alpha[:active] * layer(x; n)`` (no bias) to the output. ``alphas[g]`` is
    the parameter of coupling group ``g``.
    """

    def __init__(self, net: DynamicNet) -> None:
        self.net = net
        device = next(net.parameters()).device
        self.alphas = nn.ParameterList(
            nn.Parameter(torch.zeros(g.channels, device=device)) for g in net.groups)
        self._hooks: list = []
        mods = dict(net.model.named_modules())
        for g in net.groups:
            for m in g.members:
                info = net.layers[m.layer]
                mod = module_of(mods, info)
                if m.side == "out" and isinstance(mod, (DynamicConv2d, DynamicLinear)) and not info.out_parts:
                    self._hooks.append(mod.register_forward_hook(self._hook(g.index)))

    def _hook(self, group: int) -> Callable:
        def hook(mod: Any, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:  # a dynamic conv or linear
            if not mod.training:
                return None
            x = inputs[0]
            c_out = mod.active_out
            alpha = self.alphas[group][:c_out]
            if isinstance(mod, DynamicConv2d):
                w, groups = mod.active_weight()
                noise = (torch.randn_like(w) * w.detach().std()).detach()
                extra = F.conv2d(x, noise, None, mod.stride, mod.padding, mod.dilation, groups)
                return out + alpha.view(1, -1, 1, 1) * extra
            w = mod.active_weight()
            noise = (torch.randn_like(w) * w.detach().std()).detach()
            return out + alpha * F.linear(x, noise)

        return hook

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.alphas.parameters()

    def orders(self) -> list[torch.Tensor]:
        """Per group: channel indices, most important (smallest |alpha|) first."""
        return [torch.sort(a.detach().abs().cpu(), stable=True).indices for a in self.alphas]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def __enter__(self) -> NoiseInjection:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def l1_orders(net: DynamicNet) -> list[torch.Tensor]:
    """Per group: channel indices by descending summed L1 norm of its output filters."""
    mods = dict(net.model.named_modules())
    orders = []
    for g in net.groups:
        score = torch.zeros(g.channels)
        for m in g.members:
            info = net.layers[m.layer]
            mod = module_of(mods, info)
            if m.side == "out" and isinstance(mod, (DynamicConv2d, DynamicLinear)) and not info.out_parts:
                score += mod.weight.detach().abs().flatten(1).sum(1).cpu()
        orders.append(torch.sort(-score, stable=True).indices)
    return orders


def apply_order(net: DynamicNet, orders: list[torch.Tensor]) -> None:
    """Permute every coupling group so that ``orders[g][0]`` becomes channel 0, etc."""
    for g, order in enumerate(orders):
        net.permute_channels(g, order)
