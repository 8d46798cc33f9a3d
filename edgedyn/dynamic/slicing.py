"""How a spec reaches each layer: widths, index maps after a concat, permutations, costs."""

from __future__ import annotations

import torch
from torch import nn

from .groups import LayerInfo, Member, Parts
from .layers import ChannelSliced, DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, Index, make_channel_sliced, make_dynamic
from .spec import SubnetSpec


def module_of(modules: dict[str, nn.Module], info: LayerInfo) -> nn.Module:
    """The module a layer info describes (a per-channel parameter: the module owning it)."""
    if info.kind == "param":
        return modules[info.name.rpartition(".")[0]]
    return modules[info.name]


def make_layer_dynamic(modules: dict[str, nn.Module], info: LayerInfo) -> None:
    mod = module_of(modules, info)
    if info.kind == "param":
        make_channel_sliced(mod, (info.name.rpartition(".")[2],))
    elif info.kind in ("conv", "linear", "bn") or info.kind == "ln" and not info.frozen:
        make_dynamic(mod, info.expand)


def side_width(spec: SubnetSpec, group: int | None, parts: Parts, full: int, expand: int = 1) -> tuple[int, Index]:
    """(active channels, index map or None for a prefix) of one side of a layer."""
    if parts:
        pieces = []
        for g, offset, channels in parts:
            width = spec[g] if g is not None else channels
            pieces.append(torch.arange(offset * expand, (offset + width) * expand))
        index = torch.cat(pieces)
        return len(index) // expand, index
    return (spec[group] if group is not None else full), None


def apply_spec(mod: nn.Module, info: LayerInfo, spec: SubnetSpec, stats: dict | None) -> None:
    """Set one layer's active widths (and index maps) for ``spec``."""
    w_in, in_index = side_width(spec, info.in_group, info.in_parts, info.in_channels // info.expand, info.expand)
    w_out, out_index = side_width(spec, info.out_group, info.out_parts, info.out_channels)
    if isinstance(mod, DynamicBatchNorm2d):
        mod.active, mod.index = w_out, out_index
        mod.override = stats[info.name] if stats is not None else None
    elif isinstance(mod, DynamicConv2d):
        mod.active_in, mod.active_out, mod.in_index, mod.out_index = w_in, w_out, in_index, out_index
    elif isinstance(mod, DynamicLinear):
        mod.active_in, mod.active_out, mod.in_index = w_in, w_out, in_index
    elif isinstance(mod, ChannelSliced):
        names = ("weight", "bias") if info.kind == "ln" else (info.name.rpartition(".")[2],)
        for name in names:
            mod.channel_active[name] = (w_out, out_index)


def widths(spec: SubnetSpec, info: LayerInfo) -> tuple[int, int]:
    """Active (input channels, output channels) of a layer under ``spec``."""
    w_in = side_width(spec, info.in_group, info.in_parts, info.in_channels // info.expand, info.expand)[0]
    w_out = side_width(spec, info.out_group, info.out_parts, info.out_channels)[0]
    return w_in, w_out


def conv_fan_in(info: LayerInfo, w_in: int) -> int:
    """Input channels each output channel of a conv sees (grouped convs keep theirs)."""
    return w_in if info.groups == 1 else info.in_channels // info.groups


def layer_macs(spec: SubnetSpec, info: LayerInfo) -> int:
    """Multiply-accumulates of one layer; norms count one multiply-add per output element."""
    w_in, w_out = widths(spec, info)
    if info.kind == "conv":
        kh, kw = info.kernel
        return info.out_hw[0] * info.out_hw[1] * kh * kw * conv_fan_in(info, w_in) * w_out
    if info.kind == "linear":
        return w_in * info.expand * w_out
    if info.kind in ("bn", "ln"):
        return info.out_hw[0] * info.out_hw[1] * w_out
    return 0  # a per-channel scale: elementwise, not counted (thop's convention)


def layer_params(spec: SubnetSpec, info: LayerInfo, mod: nn.Module) -> int:
    if info.kind == "ln" and info.frozen:  # not sliced: all its parameters
        return sum(p.numel() for p in mod.parameters(recurse=False))
    w_in, w_out = widths(spec, info)
    if info.kind == "param":
        return w_out
    bias = w_out if getattr(mod, "bias", None) is not None else 0
    if info.kind == "conv":
        return info.kernel[0] * info.kernel[1] * conv_fan_in(info, w_in) * w_out + bias
    if info.kind == "linear":
        return w_in * info.expand * w_out + bias
    return 2 * w_out if getattr(mod, "weight", None) is not None else 0


def permute_member(mod: nn.Module, info: LayerInfo, m: Member, channels: int, perm: torch.Tensor) -> None:
    """Reorder one member's ``channels`` channels (from ``m.offset``) by ``perm``, in place."""
    lo, hi = m.offset, m.offset + channels
    tensors: list[torch.Tensor | None]
    if m.side == "out":
        if info.kind == "param":
            tensors = [mod._parameters[info.name.rpartition(".")[2]]]
        else:
            tensors = [mod._parameters.get("weight"), mod._parameters.get("bias")]
        if isinstance(mod, DynamicBatchNorm2d):
            tensors += [mod.running_mean, mod.running_var]
        for t in tensors:
            if t is not None:
                t[lo:hi].copy_(t[lo:hi][perm])
    elif isinstance(mod, DynamicLinear):
        w = mod.weight.view(mod.out_features, mod.in_features // m.expand, m.expand)
        w[:, lo:hi].copy_(w[:, lo:hi][:, perm].clone())
    elif isinstance(mod, DynamicConv2d) and mod.groups > 1:
        return  # grouped / depthwise: the input follows the output (whole conv groups move)
    else:
        weight = mod.weight
        assert isinstance(weight, torch.Tensor)
        weight[:, lo:hi].copy_(weight[:, lo:hi][:, perm])


def whole_units(perm: torch.Tensor, unit: int) -> torch.Tensor:
    """The permutation nearest ``perm`` that moves whole units of ``unit`` channels, each in order.

    Units (the conv groups of a grouped conv) are ranked by the mean position of their
    channels in ``perm``; a permutation that already moves whole units is returned unchanged.
    """
    position = torch.empty_like(perm)
    position[perm] = torch.arange(len(perm))
    mean = position.view(-1, unit).float().mean(1)
    order = torch.sort(mean, stable=True).indices
    return (order[:, None] * unit + torch.arange(unit)).flatten()
