"""Dynamic-width layers: the full-size torch layer, computing on a slice of its channels.

As in slimmable networks, each layer allocates the maximum size and slices
``weight[:out, :in]`` in ``forward``, so a narrower sub-net really computes less. The
classes subclass the torch layers, so state-dict keys and weight loading are unchanged.
``make_dynamic`` converts a layer in place; ``make_static`` turns one back into a plain,
smaller torch layer holding only the active channels (used by extraction).

A side fed by a concatenation takes its channels through an index map (``in_index`` /
``out_index`` / ``index``: a prefix of each concatenated input) instead of a prefix. A
grouped conv keeps a prefix of whole conv groups: its group count shrinks with the width.
LayerNorm and per-channel parameters of other modules (ConvNeXt's ``layer_scale``) are
sliced through properties on a subclass of the module's own class, so a custom
``forward`` (torchvision's ``LayerNorm2d``, ``CNBlock``) sees the sliced tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Index = torch.Tensor | None


def _take(t: torch.Tensor, n: int, index: Index, dim: int = 0) -> torch.Tensor:
    if index is not None:
        return t.index_select(dim, index.to(t.device))
    return t[:n] if dim == 0 else t[:, :n]


class DynamicConv2d(nn.Conv2d):
    active_in: int
    active_out: int
    in_index: Index
    out_index: Index

    def active_weight(self) -> tuple[torch.Tensor, int]:
        """The weight of the active channels (a prefix, or through the index maps) and the group count."""
        out = self.active_out
        if self.in_index is None and self.out_index is None:
            if self.groups == 1:
                return self.weight[:out, : self.active_in], 1
            return self.weight[:out], out // (self.out_channels // self.groups)  # whole conv groups
        weight = _take(self.weight, out, self.out_index)
        if self.groups == 1:
            return _take(weight, self.active_in, self.in_index, 1), 1
        return weight, out // (self.out_channels // self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, groups = self.active_weight()
        bias = _take(self.bias, self.active_out, self.out_index) if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class DynamicLinear(nn.Linear):
    active_in: int
    active_out: int
    expand: int  # input features per channel after a flatten
    in_index: Index  # input features (already expanded), after a concat

    def active_weight(self) -> torch.Tensor:
        """The weight of the active outputs and inputs (a prefix, or through the input index map)."""
        out = self.active_out
        if self.in_index is None:
            return self.weight[:out, : self.active_in * self.expand]
        return self.weight[:out].index_select(1, self.in_index.to(self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias[: self.active_out] if self.bias is not None else None
        return F.linear(x, self.active_weight(), bias)


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with sliced affine parameters and optional per-sub-net statistics.

    The running statistics are shared (the prefix is updated in training). When a
    sub-net has its own recalibrated statistics, ``override`` holds them and eval mode
    uses them instead.
    """

    active: int
    override: tuple[torch.Tensor, torch.Tensor] | None
    index: Index
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def active_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared running statistics of the active channels (views for a prefix)."""
        return _take(self.running_mean, self.active, self.index), _take(self.running_var, self.active, self.index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if not self.training and self.override is not None:
            mean, var = self.override
        else:
            mean, var = self.active_stats()
        weight = _take(self.weight, c, self.index) if self.weight is not None else None
        bias = _take(self.bias, c, self.index) if self.bias is not None else None
        y = F.batch_norm(x, mean, var, weight, bias, self.training, factor, self.eps)
        if self.training and self.index is not None:  # index_select copied: write the update back
            with torch.no_grad():
                self.running_mean.index_copy_(0, self.index.to(mean.device), mean)
                self.running_var.index_copy_(0, self.index.to(var.device), var)
        return y


class ChannelSliced:
    """Mixin of the dynamic subclasses that slice named tensors through properties."""

    _edgedyn_base: type
    channel_active: dict[str, tuple[int, Index]]


class ChannelSlicedNorm(ChannelSliced):
    """The dynamic form of a LayerNorm (a leaf layer, as the torch layers' dynamic forms are)."""


def _sliced(name: str) -> property:
    def get(self: Any) -> Any:
        p = self._parameters[name]
        if p is None or name not in self.channel_active:
            return p
        n, index = self.channel_active[name]
        return _take(p, n, index)

    return property(get)


def _normalized_shape(self: Any) -> tuple[int, ...]:
    n, index = self.channel_active.get("weight", (None, None))
    if n is None:
        return self.__dict__["normalized_shape"]
    return (n,)


_SUBCLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _channel_subclass(cls: type, names: tuple[str, ...]) -> type:
    key = (cls, names)
    if key not in _SUBCLASSES:
        attrs: dict[str, Any] = {n: _sliced(n) for n in names}
        attrs["_edgedyn_base"] = cls
        if issubclass(cls, nn.LayerNorm):
            attrs["normalized_shape"] = property(_normalized_shape)
        mixin = ChannelSlicedNorm if issubclass(cls, nn.LayerNorm) else ChannelSliced
        _SUBCLASSES[key] = type(f"Dynamic{cls.__name__}", (mixin, cls), attrs)
    return _SUBCLASSES[key]


def make_channel_sliced(mod: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """Slice parameters ``names`` of ``mod`` along their first axis (LayerNorm: weight and bias)."""
    if isinstance(mod, ChannelSliced):
        names = tuple(sorted(set(names) | set(type(mod).__dict__) & set(mod._parameters)))
        base = mod._edgedyn_base
    else:
        base = type(mod)
        mod.__dict__["channel_active"] = {}
    mod.__class__ = _channel_subclass(base, tuple(sorted(names)))
    return mod


_DYNAMIC = {nn.Conv2d: DynamicConv2d, nn.Linear: DynamicLinear, nn.BatchNorm2d: DynamicBatchNorm2d}
#: Dynamic layers (leaves for a tracer); a module with sliced per-channel parameters is a ChannelSliced.
DYNAMIC_TYPES = (*_DYNAMIC.values(), ChannelSlicedNorm)


def make_dynamic(mod: nn.Module, expand: int = 1) -> nn.Module:
    """Turn a Conv2d / Linear / BatchNorm2d / LayerNorm into its dynamic form, in place."""
    if isinstance(mod, nn.LayerNorm):
        return make_channel_sliced(mod, ("bias", "weight"))
    cls = _DYNAMIC[type(mod)]
    mod.__class__ = cls
    if isinstance(mod, DynamicConv2d):
        mod.active_in, mod.active_out = mod.in_channels, mod.out_channels
        mod.in_index = mod.out_index = None
    elif isinstance(mod, DynamicLinear):
        mod.expand, mod.in_index = expand, None
        mod.active_in, mod.active_out = mod.in_features // expand, mod.out_features
    elif isinstance(mod, DynamicBatchNorm2d):
        mod.active, mod.override, mod.index = mod.num_features, None, None
    return mod


def _static_conv(mod: DynamicConv2d) -> None:
    out, inn = mod.active_out, mod.active_in
    weight = _take(mod.weight, out, mod.out_index)
    if mod.groups == 1:
        weight = _take(weight, inn, mod.in_index, 1)
    else:
        mod.groups = out // (mod.out_channels // mod.groups)
        inn = mod.groups * mod.weight.shape[1]
    mod.weight = nn.Parameter(weight.clone())
    if mod.bias is not None:
        mod.bias = nn.Parameter(_take(mod.bias, out, mod.out_index).clone())
    mod.in_channels, mod.out_channels = inn, out
    del mod.active_in, mod.active_out, mod.in_index, mod.out_index
    mod.__class__ = nn.Conv2d  # type: ignore[assignment]


def _static_linear(mod: DynamicLinear) -> None:
    out = mod.active_out
    if mod.in_index is None:
        inn = mod.active_in * mod.expand
        weight = mod.weight[:out, :inn]
    else:
        weight = mod.weight[:out].index_select(1, mod.in_index)
        inn = weight.shape[1]
    mod.weight = nn.Parameter(weight.clone())
    if mod.bias is not None:
        mod.bias = nn.Parameter(mod.bias[:out].clone())
    mod.in_features, mod.out_features = inn, out
    del mod.active_in, mod.active_out, mod.expand, mod.in_index
    mod.__class__ = nn.Linear  # type: ignore[assignment]


def _static_bn(mod: DynamicBatchNorm2d) -> None:
    c = mod.active
    mean, var = mod.override if mod.override is not None else mod.active_stats()
    mod.running_mean = mean.clone()
    mod.running_var = var.clone()
    if mod.weight is not None:
        mod.weight = nn.Parameter(_take(mod.weight, c, mod.index).clone())
        mod.bias = nn.Parameter(_take(mod.bias, c, mod.index).clone())
    mod.num_features = c
    del mod.active, mod.override, mod.index
    mod.__class__ = nn.BatchNorm2d  # type: ignore[assignment]


def _static_channel_sliced(mod: nn.Module) -> None:
    assert isinstance(mod, ChannelSliced)
    for name, (n, index) in mod.channel_active.items():
        p = mod._parameters[name]
        if p is not None:
            mod._parameters[name] = nn.Parameter(_take(p, n, index).clone(), requires_grad=p.requires_grad)
    if isinstance(mod, nn.LayerNorm) and "weight" in mod.channel_active:
        mod.__dict__["normalized_shape"] = (mod.channel_active["weight"][0],)
    base = mod._edgedyn_base
    del mod.__dict__["channel_active"]
    mod.__class__ = base


def make_static(mod: nn.Module) -> nn.Module:
    """Turn a dynamic layer into a plain torch layer holding only its active channels (in place)."""
    with torch.no_grad():
        if isinstance(mod, DynamicConv2d):
            _static_conv(mod)
        elif isinstance(mod, DynamicLinear):
            _static_linear(mod)
        elif isinstance(mod, DynamicBatchNorm2d):
            _static_bn(mod)
        elif isinstance(mod, ChannelSliced):
            _static_channel_sliced(mod)
    return mod
