"""Coupling groups: channels that must keep one width and one channel set.

Found by tracing the model with Torch-Pruning's DependencyGraph. A residual add ties
the outputs of every conv feeding it; a depthwise conv ties its input to its output;
BatchNorm and LayerNorm follow their conv. Each group lists its *members*: a layer and
which side of it (``out`` channels or ``in`` channels) the group's channels are.

Beyond plain prefix slicing:

- **Concatenations.** A layer after a ``torch.cat`` takes each input group at an
  ``offset``; a sub-net keeps a prefix of every input and the layer takes the matching
  channels through an index map (``LayerInfo.in_parts`` / ``out_parts``).
- **Grouped convolutions** tie their input and output groups into one coupling group whose
  widths come in units of the channels per conv group (``CouplingGroup.unit``): a sub-net
  keeps a prefix of whole conv groups (the group *count* shrinks, each group keeps its width;
  see docs/models.md for why).
- **Frozen groups.** What cannot be sliced (channel shuffles and splits, layers edgedyn
  does not know, a LayerNorm over more than the channels) freezes the coupling groups it
  touches at full width: ``CouplingGroup.frozen`` says why, their grid is only the full
  width, and the other groups stay searchable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

SLICEABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)


@dataclass(frozen=True)
class Member:
    """One side of one layer that belongs to a coupling group."""

    layer: str  # qualified module name (or parameter name, for a per-channel parameter)
    side: str  # "out" | "in"
    expand: int = 1  # input features per channel (a Linear after a flatten of C x H x W)
    offset: int = 0  # first channel of this group in the layer's channels (after a concat)


@dataclass(frozen=True)
class CouplingGroup:
    index: int
    name: str  # the first producing layer, for people
    channels: int  # full width
    members: tuple[Member, ...]
    grid: tuple[int, ...]  # allowed widths, ascending, last == channels
    floor: int  # smallest allowed width
    unit: int = 1  # widths are multiples of this (channels per conv group of a grouped conv)
    frozen: str | None = None  # why the group stays at full width (None: searchable)

    @property
    def step(self) -> int:
        """Channel-group size (the smallest grid step)."""
        return self.grid[1] - self.grid[0] if len(self.grid) > 1 else self.grid[0]

    def widths_from(self, floor: int | None = None) -> tuple[int, ...]:
        f = self.floor if floor is None else floor
        return tuple(w for w in self.grid if w >= f)


def channel_grid(channels: int, channel_groups: int = 8, group_size: int | None = None,
                 unit: int = 1) -> tuple[int, ...]:
    """The widths a group may take.

    By default ``channels`` is split into ``channel_groups`` equal parts (rounded up when it
    does not divide). ``group_size`` instead sets an absolute, hardware-aligned step
    (e.g. 8, 16, 32); the full width is always allowed. With ``unit`` > 1 (a grouped conv)
    every width is a multiple of ``unit``.
    """
    if unit > 1:
        step = None if group_size is None else max(1, math.ceil(group_size / unit))
        return tuple(w * unit for w in channel_grid(channels // unit, channel_groups, step))
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


def with_block_multiples(grid: tuple[int, ...], floor: int, block: int, unit: int = 1) -> tuple[int, ...]:
    """``grid`` and every multiple of ``block`` from ``floor`` up to the full width (the last
    width of ``grid``), each a multiple of ``unit``: a block-aware grid (a backend that computes
    in blocks of ``block`` channels pays for a width rounded up to one). The floor is kept."""
    if block <= 1:
        return grid
    step = block * unit // math.gcd(block, unit)
    extra = {w for w in range(step, grid[-1] + 1, step) if w >= floor}
    return tuple(sorted(set(grid) | extra))


Parts = tuple[tuple[int, int, int], ...]  # (group, offset, channels), by offset


@dataclass
class LayerInfo:
    """A conv / linear / bn / ln layer (or a per-channel parameter) as traced at full width."""

    name: str
    kind: str  # conv | linear | bn | ln | param
    in_group: int | None = None  # None: fixed input (the image, or unsliceable), or see in_parts
    out_group: int | None = None  # None: fixed output (the classifier), or see out_parts
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
    groups: int = 1  # conv groups (depthwise: == channels)
    in_parts: Parts = ()  # input channels from several groups (after a concat)
    out_parts: Parts = ()  # output channels likewise (a BatchNorm or depthwise conv after a concat)
    frozen: str | None = None  # why a side of this layer is fixed at full width

    @property
    def tied(self) -> bool:
        """Input channels are the output channels (norms, depthwise, per-channel parameters)."""
        return self.kind in ("bn", "ln", "param") or self.depthwise


def _conv_info(name: str, mod: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> LayerInfo:
    return LayerInfo(
        name, "conv", in_channels=mod.in_channels, out_channels=mod.out_channels,
        kernel=tuple(mod.kernel_size), stride=tuple(mod.stride), padding=tuple(mod.padding),  # type: ignore[arg-type]
        depthwise=mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels,
        in_hw=tuple(x.shape[-2:]), out_hw=tuple(out.shape[-2:]), groups=mod.groups,  # type: ignore[arg-type]
    )


def _layer_info(name: str, mod: nn.Module, x: torch.Tensor, out: torch.Tensor) -> LayerInfo | None:
    if isinstance(mod, nn.Conv2d):
        return _conv_info(name, mod, x, out)
    if isinstance(mod, nn.Linear):
        return LayerInfo(name, "linear", in_channels=mod.in_features, out_channels=mod.out_features)
    if isinstance(mod, nn.BatchNorm2d):
        return LayerInfo(name, "bn", in_channels=mod.num_features, out_channels=mod.num_features,
                         in_hw=tuple(x.shape[-2:]), out_hw=tuple(out.shape[-2:]))  # type: ignore[arg-type]
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) != 1:  # counted as one channel of all its elements
            info = LayerInfo(name, "ln", in_channels=1, out_channels=1, out_hw=(out.numel() // out.shape[0], 1))
            info.frozen = f"LayerNorm over {list(mod.normalized_shape)}, not over the channels alone"
            return info
        c = int(mod.normalized_shape[-1])
        return LayerInfo(name, "ln", in_channels=c, out_channels=c, out_hw=(out.numel() // (out.shape[0] * c), 1))
    return None


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
        if not isinstance(mod, SLICEABLE) or not inp or not isinstance(out, torch.Tensor):
            return
        info = _layer_info(names[mod], mod, inp[0], out)
        if info is not None and info.name not in infos:
            info.order = len(infos)
            infos[info.name] = info

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
        if isinstance(mod, nn.Conv2d) and mod.padding_mode != "zeros":
            raise ModelError(f"layer '{name}': padding_mode {mod.padding_mode!r} is not supported")
        if isinstance(mod, nn.BatchNorm2d) and not mod.track_running_stats:
            raise ModelError(f"layer '{name}': BatchNorm2d without running statistics is not supported")


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> Any:
    import warnings

    import torch_pruning as tp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as err:
        import traceback

        where = "".join(f"{type(err).__name__}: {err}".splitlines()[:1])[:160]
        if any("reshape" in frame.name for frame in traceback.extract_tb(err.__traceback__)):
            where += "; a channel shuffle (view + transpose across channel groups) interleaves channels, so no " \
                     "prefix of its output is a prefix of its inputs: edgedyn refuses it"
        raise ModelError(f"Torch-Pruning could not trace the model ({where})") from None


@dataclass
class _Raw:
    """One Torch-Pruning group, classified: members, sides that must stay fixed, reasons."""

    channels: int
    members: list[Member] = field(default_factory=list)
    fixed: set[tuple[str, str]] = field(default_factory=set)  # (layer, side) outside prefix slicing
    reasons: list[str] = field(default_factory=list)
    first: int = 0


def _side_channels(info: LayerInfo, side: str) -> int:
    return info.out_channels if side == "out" else info.in_channels


def _classify_item(raw: _Raw, name: str, side: str, idxs: list[int], info: LayerInfo) -> None:
    """Add one (layer, side, channel indices) of a Torch-Pruning group to ``raw``."""
    c, n = raw.channels, _side_channels(info, side)
    contiguous = bool(idxs) and idxs == list(range(idxs[0], idxs[0] + len(idxs)))
    if info.frozen:
        raw.fixed.add((name, side))
        raw.reasons.append(f"layer '{name}': {info.frozen}")
        return
    if info.kind == "linear" and side == "in" and n != c and len(idxs) == n and n % c == 0 and idxs[0] == 0 \
            and contiguous:  # a flatten of C x H x W: Torch-Pruning lists every feature
        raw.members.append(Member(name, "in", n // c))
    elif contiguous and len(idxs) == c and (n == c or side == "in" or info.tied):
        raw.members.append(Member(name, side, 1, idxs[0]))
    else:
        raw.fixed.add((name, side))
        raw.reasons.append(f"layer '{name}': channels {'split' if side == 'out' else 'remapped'} "
                           "(a split, slice or shuffle) where prefix slicing cannot follow")


def _classify(g: Any, dg: Any, names: dict[Any, str], infos: dict[str, LayerInfo]) -> _Raw:
    raw = _Raw(channels=len(list(g[0].idxs)))
    for item in g:
        mod, handler = item.dep.target.module, item.dep.handler
        if dg.is_out_channel_pruning_fn(handler):
            side = "out"
        elif dg.is_in_channel_pruning_fn(handler):
            side = "in"
        else:
            continue
        name = names.get(mod) if not isinstance(mod, nn.Parameter) else names.get(id(mod))
        if name is None:
            continue
        if name not in infos:
            if isinstance(mod, nn.Parameter) and mod.dim() >= 1 and mod.shape[0] == raw.channels \
                    and all(s == 1 for s in mod.shape[1:]):
                infos[name] = LayerInfo(name, "param", in_channels=raw.channels, out_channels=raw.channels,
                                        order=len(infos))
            elif any(True for _ in mod.parameters()) if isinstance(mod, nn.Module) else True:
                raw.reasons.append(f"layer '{name}' ({type(mod).__name__}) cannot be sliced")
                continue
            else:
                continue
        info = infos[name]
        _classify_item(raw, name, "out" if info.kind in ("bn", "ln", "param") else side, list(item.idxs), info)
    raw.members = list(dict.fromkeys(raw.members))
    return raw


def _merge_grouped_convs(raws: list[_Raw], infos: dict[str, LayerInfo]) -> list[_Raw]:
    """A grouped conv ties its input group to its output group (same width, in conv-group units)."""
    parent = list(range(len(raws)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    where: dict[tuple[str, str], int] = {(m.layer, m.side): i for i, r in enumerate(raws) for m in r.members}
    for info in infos.values():
        if info.kind == "conv" and info.groups > 1 and not info.depthwise:
            a, b = where.get((info.name, "in")), where.get((info.name, "out"))
            if a is None or b is None:
                continue
            if info.in_channels != info.out_channels or raws[a].channels != raws[b].channels:
                raws[b].fixed |= {(info.name, "out"), (info.name, "in")}
                raws[b].reasons.append(f"layer '{info.name}': grouped conv with {info.in_channels} inputs and "
                                       f"{info.out_channels} outputs (only equal widths are sliced)")
                raws[a].fixed.add((info.name, "in"))
            else:
                parent[root(a)] = root(b)
    merged: dict[int, _Raw] = {}
    for i, r in enumerate(raws):
        into = merged.setdefault(root(i), _Raw(r.channels))
        into.members += [m for m in r.members if m not in into.members]
        into.fixed |= r.fixed
        into.reasons += r.reasons
    return list(merged.values())


def _place(raw: _Raw, index: int, infos: dict[str, LayerInfo], parts: dict[tuple[str, str], list]) -> None:
    """Record ``raw``'s membership on its layers (a prefix group, or a part at an offset)."""
    for m in raw.members:
        info = infos[m.layer]
        n = _side_channels(info, m.side)
        if m.offset or (n != raw.channels and m.expand == 1):
            parts.setdefault((m.layer, m.side), []).append((index, m.offset, raw.channels))
            if info.tied:
                parts.setdefault((m.layer, "in"), []).append((index, m.offset, raw.channels))
        elif m.side == "out":
            info.out_group = index
            if info.tied or info.groups > 1:
                info.in_group = index
        else:
            info.in_group, info.expand = index, m.expand


def _unit(raw: _Raw, infos: dict[str, LayerInfo]) -> int:
    unit = 1
    for m in raw.members:
        info = infos[m.layer]
        if info.kind == "conv" and info.groups > 1 and not info.depthwise:
            unit = math.lcm(unit, info.out_channels // info.groups)
    return unit


def _finish_parts(parts: dict[tuple[str, str], list], infos: dict[str, LayerInfo],
                  raws: list[_Raw]) -> None:
    """Layers fed by a concat get their parts; parts that do not tile the layer freeze their groups."""
    for (layer, side), items in parts.items():
        info = infos[layer]
        items[:] = sorted(set(items), key=lambda t: t[1])
        n, pos = _side_channels(info, side), 0
        for _, offset, channels in items:
            pos = pos + channels if offset == pos else -1
        if pos != n:
            for g, _, _ in items:
                raws[g].reasons.append(f"layer '{layer}': its {side}put channels come from more than a concat")
            continue
        if side == "out":
            info.out_parts = tuple(items)
        else:
            info.in_parts = tuple(items)


def find_groups(
    model: nn.Module,
    example: torch.Tensor,
    channel_groups: int = 8,
    group_size: int | None = None,
    min_groups: int = 1,
    grid_block: int | None = None,
) -> tuple[list[CouplingGroup], dict[str, LayerInfo], str]:
    """Trace ``model`` and return (coupling groups, layer infos, classifier name); ``grid_block``
    adds every multiple of that block above a group's floor to its grid
    (:func:`with_block_multiples`)."""
    if min_groups < 1:
        raise ValueError(f"min_groups must be >= 1 (a layer never drops to zero), got {min_groups}")
    _check_layers(model)
    infos, classifier = _trace_layers(model, example)
    modules = dict(model.named_modules())
    dg = _dependency_graph(model, example)
    names: dict[Any, str] = {m: n for n, m in modules.items()}
    names.update({id(p): n for n, p in model.named_parameters()})
    found = dg.get_all_groups(ignored_layers=[modules[classifier]], root_module_types=[nn.Conv2d, nn.Linear])
    raws = [r for r in (_classify(g, dg, names, infos) for g in found) if any(m.side == "out" for m in r.members)]
    raws = _merge_grouped_convs(raws, infos)
    for r in raws:
        r.first = min(infos[m.layer].order for m in r.members if m.side == "out") if any(
            m.side == "out" for m in r.members) else 10**9
    raws.sort(key=lambda r: r.first)
    parts: dict[tuple[str, str], list] = {}
    for index, r in enumerate(raws):
        _place(r, index, infos, parts)
    _finish_parts(parts, infos, raws)
    _freeze_orphans(infos, classifier, example.shape[1], raws)
    result: list[CouplingGroup] = []
    for index, r in enumerate(raws):
        unit = _unit(r, infos)
        frozen = "; ".join(dict.fromkeys(r.reasons)) or None
        grid = (r.channels,) if frozen else channel_grid(r.channels, channel_groups, group_size, unit)
        floor = grid[min(min_groups, len(grid)) - 1]
        if grid_block and not frozen:
            grid = with_block_multiples(grid, floor, grid_block, unit)
        name = min((infos[m.layer].order, m.layer) for m in r.members if m.side == "out")[1]
        result.append(CouplingGroup(index, name, r.channels, tuple(r.members), grid, floor, unit, frozen))
    return result, infos, classifier


def _freeze_orphans(infos: dict[str, LayerInfo], classifier: str, image_channels: int, raws: list[_Raw]) -> None:
    """Layers whose channels belong to no group stay at full width (and so do groups touching them)."""
    fixed = {s for r in raws for s in r.fixed}
    for info in infos.values():
        if info.kind in ("conv", "linear") and info.out_group is None and not info.out_parts \
                and info.name != classifier:
            info.frozen = info.frozen or "its output channels belong to no coupling group"
        if info.in_group is None and not info.in_parts and info.order > 0 and not info.tied \
                and info.in_channels != image_channels:
            info.frozen = info.frozen or "its input channels belong to no coupling group"
    for (layer, _side) in fixed:
        infos[layer].frozen = infos[layer].frozen or "channels remapped by a split, slice or shuffle"
    for r in raws:
        for m in r.members:
            if (m.layer, m.side) in fixed or (m.layer, "in" if m.side == "out" else "out") in fixed \
                    and infos[m.layer].tied:
                r.reasons.append(f"layer '{m.layer}': {infos[m.layer].frozen}")
