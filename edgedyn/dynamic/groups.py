"""Coupling groups: channels that must keep one width and one channel set.

Found by tracing the model with Torch-Pruning's DependencyGraph. A residual add ties
the outputs of every conv feeding it; a depthwise conv ties its input to its output;
BatchNorm follows its conv. Each group lists its *members*: a layer and which side of it
(``out`` channels or ``in`` channels) the group's channels are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ModelError

SLICEABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
#: Graph operators that would map channels in ways prefix slicing cannot follow.
_UNSUPPORTED_OPS = ("CONCAT", "SPLIT", "UNBIND", "SLICE", "EXPAND")


@dataclass(frozen=True)
class Member:
    """One side of one layer that belongs to a coupling group."""

    layer: str  # qualified module name
    side: str  # "out" | "in"
    expand: int = 1  # input features per channel (a Linear after a flatten of C x H x W)


@dataclass(frozen=True)
class CouplingGroup:
    index: int
    name: str  # the first producing layer, for people
    channels: int  # full width
    members: tuple[Member, ...]
    grid: tuple[int, ...]  # allowed widths, ascending, last == channels
    floor: int  # smallest allowed width

    @property
    def step(self) -> int:
        """Channel-group size (the smallest grid step)."""
        return self.grid[1] - self.grid[0] if len(self.grid) > 1 else self.grid[0]

    def widths_from(self, floor: int | None = None) -> tuple[int, ...]:
        f = self.floor if floor is None else floor
        return tuple(w for w in self.grid if w >= f)


def channel_grid(channels: int, channel_groups: int = 8, group_size: int | None = None) -> tuple[int, ...]:
    """The widths a group may take.

    By default ``channels`` is split into ``channel_groups`` equal parts (rounded up when it
    does not divide). ``group_size`` instead sets an absolute, hardware-aligned step
    (e.g. 8, 16, 32); the full width is always allowed.
    """
    if group_size is not None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        grid = list(range(group_size, channels + 1, group_size))
        if not grid or grid[-1] != channels:
            grid.append(channels)
        return tuple(grid)
    if channel_groups < 1:
        raise ValueError(f"channel_groups must be >= 1, got {channel_groups}")
    parts = min(channel_groups, channels)
    return tuple(sorted({math.ceil(channels * k / parts) for k in range(1, parts + 1)}))


@dataclass
class LayerInfo:
    """A conv / linear / bn layer as traced at full width."""

    name: str
    kind: str  # conv | linear | bn
    in_group: int | None = None  # None: fixed input (the image, or unsliceable)
    out_group: int | None = None  # None: fixed output (the classifier)
    in_channels: int = 0
    out_channels: int = 0
    expand: int = 1
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    depthwise: bool = False
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    order: int = 0  # execution order in the traced forward pass
    extra: dict = field(default_factory=dict)


def _trace_layers(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, LayerInfo], str]:
    """Run the model once with hooks; record shapes and order; name the layer that fails."""
    infos: dict[str, LayerInfo] = {}
    names = {m: n for n, m in model.named_modules()}
    current: list[str] = []
    hooks = []

    def pre(mod, inp):
        current.append(names[mod])

    def post(mod, inp, out):
        current.pop()
        name = names[mod]
        if not isinstance(mod, SLICEABLE):
            return
        x = inp[0]
        if isinstance(mod, nn.Conv2d):
            info = LayerInfo(
                name, "conv", in_channels=mod.in_channels, out_channels=mod.out_channels,
                kernel=tuple(mod.kernel_size), stride=tuple(mod.stride), padding=tuple(mod.padding),
                depthwise=mod.groups > 1, in_hw=tuple(x.shape[-2:]), out_hw=tuple(out.shape[-2:]),
            )
        elif isinstance(mod, nn.Linear):
            info = LayerInfo(name, "linear", in_channels=mod.in_features, out_channels=mod.out_features)
        else:
            info = LayerInfo(name, "bn", in_channels=mod.num_features, out_channels=mod.num_features,
                             in_hw=tuple(x.shape[-2:]), out_hw=tuple(out.shape[-2:]))
        info.order = len(infos)
        infos[name] = info

    for mod in model.modules():
        if mod is not model:
            hooks.append(mod.register_forward_pre_hook(pre))
            hooks.append(mod.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(example)
    except Exception as err:
        where = current[-1] if current else type(model).__name__
        raise ModelError(f"model cannot be traced: layer '{where}' failed ({type(err).__name__}: {err})") from None
    finally:
        for h in hooks:
            h.remove()
    classifier = max((i for i in infos.values() if i.kind in ("conv", "linear")), key=lambda i: i.order).name
    return infos, classifier


def _check_layers(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        has_params = any(True for _ in mod.parameters(recurse=False))
        if has_params and not isinstance(mod, SLICEABLE):
            raise ModelError(f"layer '{name}' ({type(mod).__name__}) has parameters but is not "
                             "Conv2d, Linear or BatchNorm2d; edgedyn cannot slice it")
        if isinstance(mod, nn.Conv2d):
            if mod.groups > 1 and not (mod.groups == mod.in_channels == mod.out_channels):
                raise ModelError(f"layer '{name}': grouped conv with groups={mod.groups} is not supported "
                                 "(only dense or depthwise convs)")
            if mod.padding_mode != "zeros":
                raise ModelError(f"layer '{name}': padding_mode {mod.padding_mode!r} is not supported")
        if isinstance(mod, nn.BatchNorm2d) and not mod.track_running_stats:
            raise ModelError(f"layer '{name}': BatchNorm2d without running statistics is not supported")


def find_groups(
    model: nn.Module,
    example: torch.Tensor,
    channel_groups: int = 8,
    group_size: int | None = None,
    min_groups: int = 1,
) -> tuple[list[CouplingGroup], dict[str, LayerInfo], str]:
    """Trace ``model`` and return (coupling groups, layer infos, classifier name)."""
    import torch_pruning as tp

    if min_groups < 1:
        raise ValueError(f"min_groups must be >= 1 (a layer never drops to zero), got {min_groups}")
    _check_layers(model)
    infos, classifier = _trace_layers(model, example)
    modules = dict(model.named_modules())
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as err:
        raise ModelError(f"Torch-Pruning could not trace the model ({type(err).__name__}: {err})") from None

    for node in dg.module2node.values():
        if node.type.name in _UNSUPPORTED_OPS:
            near = [n for n in (getattr(x, "name", "") for x in node.outputs + node.inputs) if n in modules]
            where = near[0] if near else node.name
            raise ModelError(f"layer '{where}': feeds a {node.type.name.lower()} op, which prefix slicing "
                             "cannot follow")

    raw = dg.get_all_groups(ignored_layers=[modules[classifier]], root_module_types=[nn.Conv2d, nn.Linear])
    names = {m: n for n, m in modules.items()}
    groups: list[tuple[int, list[Member], int]] = []
    for g in raw:
        members: list[Member] = []
        channels = None
        for dep, idxs in g:
            mod = dep.target.module
            name = names.get(mod)
            if name is None or not isinstance(mod, SLICEABLE):
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                side = "out"
                channels = channels or (mod.out_channels if isinstance(mod, nn.Conv2d) else
                                        mod.out_features if isinstance(mod, nn.Linear) else mod.num_features)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                side = "in"
            else:
                continue
            if isinstance(mod, nn.BatchNorm2d):
                side = "out"
            m = Member(name, side)
            if m not in members:
                members.append(m)
        if channels is None or not any(m.side == "out" for m in members):
            continue
        first = min((infos[m.layer].order, m.layer) for m in members if m.side == "out")
        groups.append((first[0], members, channels))

    groups.sort(key=lambda t: t[0])
    result: list[CouplingGroup] = []
    for index, (_, members, channels) in enumerate(groups):
        fixed: list[Member] = []
        for m in members:
            info = infos[m.layer]
            if m.side == "in" and info.kind == "linear" and info.in_channels != channels:
                if info.in_channels % channels:
                    raise ModelError(f"layer '{m.layer}': {info.in_channels} input features do not "
                                     f"split into {channels} channels")
                m = Member(m.layer, "in", info.in_channels // channels)
            if m.side == "out":
                info.out_group = index
                if info.kind == "bn" or info.depthwise:
                    info.in_group = index
            else:
                info.in_group, info.expand = index, m.expand
            fixed.append(m)
        grid = channel_grid(channels, channel_groups, group_size)
        floor = grid[min(min_groups, len(grid)) - 1]
        name = min((infos[m.layer].order, m.layer) for m in fixed if m.side == "out")[1]
        result.append(CouplingGroup(index, name, channels, tuple(fixed), grid, floor))

    for info in infos.values():
        if info.kind in ("conv", "linear") and info.out_group is None and info.name != classifier:
            raise ModelError(f"layer '{info.name}': its output channels belong to no coupling group")
        if info.in_group is None and info.order > 0 and info.kind != "bn" and info.in_channels != example.shape[1]:
            raise ModelError(f"layer '{info.name}': its input channels belong to no coupling group")
    return result, infos, classifier
