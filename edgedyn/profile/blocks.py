"""Blocks: the units a backend fuses and the latency table keys.

A model is cut into blocks as inference runtimes fuse it (ONNX Runtime, TensorRT):

- ``conv``: a convolution with its BatchNorm folded in, and the residual add and the
  activation that follow it when they are its only consumer;
- ``add``: a residual add (and activation) not fused into a conv;
- ``maxpool`` / ``avgpool`` / ``gap`` (global average pool);
- ``linear``: a fully connected layer (and its activation).

Flatten, dropout (eval) and identity are free. Each block's channel counts follow the
coupling groups of a :class:`~edgedyn.dynamic.DynamicNet`, so a :class:`BlockTemplate`
turns any :class:`SubnetSpec` into a typed :class:`BlockKey`. Identical keys are
measured once, and one table serves every model whose blocks it holds.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ModelError

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec

OPS = ("conv", "add", "maxpool", "avgpool", "gap", "linear")
ACTS = ("none", "relu", "relu6")


@dataclass(frozen=True, order=True)
class BlockKey:
    """What a latency-table entry measures. Everything that changes the latency is here."""

    op: str
    c_in: int
    c_out: int
    in_h: int
    in_w: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    depthwise: bool = False
    residual: bool = False  # a fused residual add
    act: str = "none"
    batch: int = 1
    precision: str = "fp32"

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.op in ("gap", "linear"):
            return (1, 1)
        if self.op == "add":
            return (self.in_h, self.in_w)
        return (
            (self.in_h + 2 * self.padding - self.kernel) // self.stride + 1,
            (self.in_w + 2 * self.padding - self.kernel) // self.stride + 1,
        )

    def macs(self) -> int:
        oh, ow = self.out_hw
        if self.op == "conv":
            per = self.kernel * self.kernel * (1 if self.depthwise else self.c_in)
            return self.batch * oh * ow * per * self.c_out
        if self.op == "linear":
            return self.batch * self.c_in * self.c_out
        return self.batch * self.c_in * self.in_h * self.in_w  # element-wise / pooling work

    def to_str(self) -> str:
        """Stable text form, used as the JSON key."""
        return "|".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self))

    @classmethod
    def from_str(cls, text: str) -> "BlockKey":
        kv = dict(part.split("=", 1) for part in text.split("|"))
        typed = {}
        for f in fields(cls):
            if f.name not in kv:
                raise ValueError(f"block key {text!r} lacks {f.name!r}")
            v = kv[f.name]
            typed[f.name] = v if f.type in ("str", str) else (v == "1") if f.type in ("bool", bool) else int(v)
        key = cls(**typed)
        if key.op not in OPS or key.act not in ACTS:
            raise ValueError(f"block key {text!r} has an unknown op or activation")
        return key

    def with_channels(self, c_in: int, c_out: int) -> "BlockKey":
        d = asdict(self)
        d.update(c_in=c_in, c_out=c_out)
        return BlockKey(**d)


def _fmt(v) -> str:
    return str(int(v)) if isinstance(v, bool) else str(v)


@dataclass(frozen=True)
class BlockTemplate:
    """A block of one model: fixed geometry, channel counts taken from coupling groups."""

    name: str  # the layer(s) it covers, for people
    op: str
    in_group: int | None  # group of the input channels (None: fixed)
    out_group: int | None
    c_in_fixed: int
    c_out_fixed: int
    in_h: int
    in_w: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    depthwise: bool = False
    residual: bool = False
    act: str = "none"
    expand: int = 1  # linear after flatten: input features per channel

    def key(self, spec: "SubnetSpec", batch: int = 1, precision: str = "fp32") -> BlockKey:
        c_in = spec[self.in_group] if self.in_group is not None else self.c_in_fixed
        c_out = spec[self.out_group] if self.out_group is not None else self.c_out_fixed
        return self.key_for(c_in, c_out, batch, precision)

    def key_for(self, c_in: int, c_out: int, batch: int = 1, precision: str = "fp32") -> BlockKey:
        """The key at given channel counts (one-axis blocks take ``c_in`` for both)."""
        if self.op not in ("conv", "linear") or self.depthwise:
            c_out = c_in
        return BlockKey(self.op, c_in * self.expand, c_out, self.in_h, self.in_w, self.kernel, self.stride,
                        self.padding, self.depthwise, self.residual, self.act, batch, precision)


_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_FREE_FUNCS = (torch.flatten,)
_FREE_MODULES = (nn.Dropout, nn.Identity, nn.Flatten)


def _pair(v) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ModelError(f"non-square kernel/stride/padding {v} is not supported by the profiler")
        return int(v[0])
    return int(v)


def model_blocks(net: "DynamicNet") -> list[BlockTemplate]:
    """Cut ``net``'s model into fused blocks (cached on the net)."""
    cached = getattr(net, "_block_templates", None)
    if cached is not None:
        return cached
    blocks = _trace_blocks(net)
    net._block_templates = blocks
    return blocks


def _trace_blocks(net: "DynamicNet") -> list[BlockTemplate]:
    from torch.fx.passes.shape_prop import ShapeProp

    from ..dynamic.layers import DYNAMIC_TYPES

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, DYNAMIC_TYPES) or super().is_leaf_module(m, qualname)

    model = net.model
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"model {net.name!r} cannot be traced into blocks ({type(err).__name__}: {err})") from None
    example = torch.zeros(net.input_shape)
    was_training = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    model.train(was_training)
    modules = dict(gm.named_modules())

    def shape(node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    def users(node) -> list:
        return list(node.users)

    def mod_of(node):
        return modules.get(node.target) if node.op == "call_module" else None

    def act_of(node) -> str | None:
        m = mod_of(node)
        if m is not None and type(m) in _ACT_MODULES:
            return _ACT_MODULES[type(m)]
        if node.op == "call_function" and node.target in _ACT_FUNCS:
            return _ACT_FUNCS[node.target]
        if node.op == "call_function" and node.target is F.hardtanh and node.kwargs.get("min_val") == 0:
            return "relu6"
        return None

    def is_add(node) -> bool:
        return node.op == "call_function" and node.target in _ADD_FUNCS and len(node.args) == 2 and all(
            isinstance(a, fx.Node) for a in node.args)

    group: dict[fx.Node, int | None] = {}  # channel group of each tensor
    channels: dict[fx.Node, int] = {}
    consumed: set[fx.Node] = set()
    blocks: list[BlockTemplate] = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}

    def single_user(node, pred):
        us = users(node)
        return us[0] if len(us) == 1 and pred(us[0]) else None

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            group[node], channels[node] = None, shape(node)[1]
            continue
        if node.op == "output" or node in consumed:
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        m = mod_of(node)
        info = net.layers.get(node.target) if node.op == "call_module" else None

        if info is not None and info.kind == "conv":
            in_shape = shape(src)
            tail, fused_add, act = node, False, "none"
            bn = single_user(tail, lambda u: isinstance(mod_of(u), nn.BatchNorm2d))
            if bn is not None:
                consumed.add(bn)
                tail = bn
            add = single_user(tail, is_add)
            if add is not None:
                other = add.args[0] if add.args[1] is tail else add.args[1]
                if order.get(other, 1 << 30) < order[tail]:  # the other operand is ready: fuse
                    consumed.add(add)
                    tail, fused_add = add, True
            a = single_user(tail, lambda u: act_of(u) is not None)
            if a is not None:
                consumed.add(a)
                tail, act = a, act_of(a)
            blocks.append(BlockTemplate(
                node.target, "conv", info.in_group, info.out_group, info.in_channels, info.out_channels,
                in_shape[2], in_shape[3], _pair(m.kernel_size), _pair(m.stride), _pair(m.padding),
                info.depthwise, fused_add, act))
            for n in (node, tail):
                group[n], channels[n] = info.out_group, info.out_channels
            continue

        if info is not None and info.kind == "linear":
            tail, act = node, "none"
            a = single_user(tail, lambda u: act_of(u) is not None)
            if a is not None:
                consumed.add(a)
                tail, act = a, act_of(a)
            blocks.append(BlockTemplate(node.target, "linear", info.in_group, info.out_group,
                                        info.in_channels // info.expand, info.out_channels, 1, 1,
                                        act=act, expand=info.expand))
            group[node] = group[tail] = info.out_group
            channels[node] = channels[tail] = info.out_channels
            continue

        if is_add(node):
            a_, b_ = node.args
            g = group.get(a_) if group.get(a_) is not None else group.get(b_)
            s = shape(node)
            tail, act = node, "none"
            a = single_user(tail, lambda u: act_of(u) is not None)
            if a is not None:
                consumed.add(a)
                tail, act = a, act_of(a)
            blocks.append(BlockTemplate(node.name, "add", g, g, s[1], s[1], s[2], s[3], act=act))
            group[node] = group[tail] = g
            channels[node] = channels[tail] = s[1]
            continue

        # pass-through ops keep the channel group of their input
        if src is not None:
            group[node], channels[node] = group.get(src), channels.get(src, 0)
        in_shape = shape(src) if src is not None and "tensor_meta" in src.meta else None
        g = group.get(src)
        if isinstance(m, nn.MaxPool2d):
            blocks.append(BlockTemplate(node.target, "maxpool", g, g, in_shape[1], in_shape[1], in_shape[2],
                                        in_shape[3], _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)))
        elif isinstance(m, nn.AdaptiveAvgPool2d) or (node.op == "call_function" and node.target is F.adaptive_avg_pool2d):
            out = shape(node)
            if out[2:] == (1, 1):
                blocks.append(BlockTemplate(str(node.target) if m else node.name, "gap", g, g, in_shape[1],
                                            in_shape[1], in_shape[2], in_shape[3]))
            elif out[2:] != in_shape[2:]:
                if in_shape[2] % out[2] or in_shape[3] % out[3] or in_shape[2] // out[2] != in_shape[3] // out[3]:
                    raise ModelError(f"layer '{node.target}': adaptive pooling {in_shape[2:]} -> {out[2:]} is not "
                                     "a plain average pool; profile at an input size where it is")
                k = in_shape[2] // out[2]
                blocks.append(BlockTemplate(node.target, "avgpool", g, g, in_shape[1], in_shape[1], in_shape[2],
                                            in_shape[3], k, k, 0))
        elif m is not None and (type(m) in _ACT_MODULES or isinstance(m, _FREE_MODULES)):
            pass
        elif node.op == "call_function" and (node.target in _FREE_FUNCS or node.target in _ACT_FUNCS):
            pass
        elif node.op in ("call_method",) and node.target in ("flatten", "view", "reshape", "size"):
            pass
        elif isinstance(m, nn.BatchNorm2d):
            raise ModelError(f"layer '{node.target}': a BatchNorm that does not follow a conv is not supported")
        else:
            raise ModelError(f"layer '{node.target}': op {node.op}:{getattr(node.target, '__name__', node.target)} "
                             "has no latency block")
    return blocks


def subnet_keys(net: "DynamicNet", spec: "SubnetSpec", batch: int = 1, precision: str = "fp32") -> list[BlockKey]:
    """The block keys of one sub-net, in execution order."""
    net.check_spec(spec)
    return [t.key(spec, batch, precision) for t in model_blocks(net)]


def all_keys(net: "DynamicNet", batch: int = 1, precision: str = "fp32") -> list[BlockKey]:
    """Every distinct block key any valid sub-net of ``net`` can use (the profiling grid)."""
    keys: dict[BlockKey, None] = {}
    for t in model_blocks(net):
        ins = net.groups[t.in_group].widths_from() if t.in_group is not None else (t.c_in_fixed,)
        outs = net.groups[t.out_group].widths_from() if t.out_group is not None else (t.c_out_fixed,)
        for ci in ins:
            for co in outs:
                keys[t.key_for(ci, co, batch, precision)] = None
    return list(keys)


def layout_transitions(net: "DynamicNet", spec: "SubnetSpec", block: int) -> float:
    """Elements reordered between layouts when a sub-net runs (a calibration feature).

    CPU runtimes (ONNX Runtime's NCHWc, oneDNN) run a conv in a blocked layout only when
    its input channels are a multiple of the vector block (``block``: 16 with AVX-512, 8
    with AVX2); elsewhere the graph falls back to plain NCHW and inserts reorders. Those
    reorders exist only between blocks, so no isolated block measurement can see them.
    This counts the elements crossing every change of layout along the execution order.
    ``block <= 1`` means the backend has no such layouts (returns 0).
    """
    if block <= 1:
        return 0.0
    total, prev = 0.0, None
    for key in subnet_keys(net, spec):
        if key.op == "conv":
            blocked = key.c_in % block == 0 or key.c_in < 4  # the stem reads the image directly
        elif key.op == "linear":
            blocked = False
        else:
            blocked = prev if prev is not None else False  # pools and adds follow their input
        if prev is not None and blocked != prev:
            total += key.c_in * key.in_h * key.in_w * key.batch
        prev = blocked
    return total
