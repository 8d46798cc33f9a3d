"""Dynamic-width layers: the full-size torch layer, computing on a prefix slice.

As in slimmable networks, each layer allocates the maximum size and slices
``weight[:out, :in]`` in ``forward``, so a narrower sub-net really computes less. The
classes subclass the torch layers, so state-dict keys and weight loading are unchanged.
``make_dynamic`` converts a layer in place; ``make_static`` turns one back into a plain,
smaller torch layer holding only the active channels (used by extraction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DynamicConv2d(nn.Conv2d):
    active_in: int
    active_out: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.active_out
        if self.groups == 1:
            weight, groups = self.weight[:out, : self.active_in], 1
        else:  # depthwise: input channels == output channels
            weight, groups = self.weight[:out], out
        bias = self.bias[:out] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class DynamicLinear(nn.Linear):
    active_in: int
    active_out: int
    expand: int  # input features per channel after a flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.active_out
        weight = self.weight[:out, : self.active_in * self.expand]
        bias = self.bias[:out] if self.bias is not None else None
        return F.linear(x, weight, bias)


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with sliced affine parameters and optional per-sub-net statistics.

    The running statistics are shared (the prefix is updated in training). When a
    sub-net has its own recalibrated statistics, ``override`` holds them and eval mode
    uses them instead.
    """

    active: int
    override: tuple[torch.Tensor, torch.Tensor] | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if not self.training and self.override is not None:
            mean, var = self.override
        else:
            mean, var = self.running_mean[:c], self.running_var[:c]
        weight = self.weight[:c] if self.weight is not None else None
        bias = self.bias[:c] if self.bias is not None else None
        return F.batch_norm(x, mean, var, weight, bias, self.training, factor, self.eps)


_DYNAMIC = {nn.Conv2d: DynamicConv2d, nn.Linear: DynamicLinear, nn.BatchNorm2d: DynamicBatchNorm2d}
DYNAMIC_TYPES = tuple(_DYNAMIC.values())


def make_dynamic(mod: nn.Module, expand: int = 1) -> nn.Module:
    """Turn a Conv2d / Linear / BatchNorm2d into its dynamic subclass, in place."""
    cls = _DYNAMIC[type(mod)]
    mod.__class__ = cls
    if isinstance(mod, DynamicConv2d):
        mod.active_in, mod.active_out = mod.in_channels, mod.out_channels
    elif isinstance(mod, DynamicLinear):
        mod.expand = expand
        mod.active_in, mod.active_out = mod.in_features // expand, mod.out_features
    else:
        mod.active, mod.override = mod.num_features, None
    return mod


def make_static(mod: nn.Module) -> nn.Module:
    """Turn a dynamic layer into a plain torch layer holding only its active channels (in place)."""
    with torch.no_grad():
        if isinstance(mod, DynamicConv2d):
            out, inn = mod.active_out, mod.active_in
            if mod.groups == 1:
                mod.weight = nn.Parameter(mod.weight[:out, :inn].clone())
            else:
                mod.weight = nn.Parameter(mod.weight[:out].clone())
                mod.groups = inn = out
            if mod.bias is not None:
                mod.bias = nn.Parameter(mod.bias[:out].clone())
            mod.in_channels, mod.out_channels = inn, out
            del mod.active_in, mod.active_out
            mod.__class__ = nn.Conv2d
        elif isinstance(mod, DynamicLinear):
            out, inn = mod.active_out, mod.active_in * mod.expand
            mod.weight = nn.Parameter(mod.weight[:out, :inn].clone())
            if mod.bias is not None:
                mod.bias = nn.Parameter(mod.bias[:out].clone())
            mod.in_features, mod.out_features = inn, out
            del mod.active_in, mod.active_out, mod.expand
            mod.__class__ = nn.Linear
        elif isinstance(mod, DynamicBatchNorm2d):
            c = mod.active
            mean, var = mod.override if mod.override is not None else (mod.running_mean[:c], mod.running_var[:c])
            mod.running_mean = mean.clone()
            mod.running_var = var.clone()
            if mod.weight is not None:
                mod.weight = nn.Parameter(mod.weight[:c].clone())
                mod.bias = nn.Parameter(mod.bias[:c].clone())
            mod.num_features = c
            del mod.active, mod.override
            mod.__class__ = nn.BatchNorm2d
    return mod
