"""Blocks: the units a backend fuses and the latency table keys.

A model is cut into blocks as inference runtimes fuse it (ONNX Runtime, TensorRT):

- ``conv``: a convolution with its BatchNorm folded in, and the residual add and the
  activation that follow it when they are its only consumer;
- ``add``: a residual add (and activation) not fused into a conv;
- ``maxpool`` / ``avgpool`` / ``gap`` (global average pool);
- ``linear``: a fully connected layer (and its activation);
- ``reorder`` / ``reorder_in``: a change of activation layout between blocks (ONNX
  Runtime's NCHWc ``ReorderOutput`` / ``ReorderInput``); only a
  :class:`~edgedyn.profile.layout.Layout` adds these.

Flatten, dropout (eval) and identity are free. Each block's channel counts follow the
coupling groups of a :class:`~edgedyn.dynamic.DynamicNet`, so a :class:`BlockTemplate`
turns any :class:`SubnetSpec` into a typed :class:`BlockKey`. Identical keys are
measured once, and one table serves every model whose blocks it holds.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ModelError

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec
    from .layout import Layout

OPS = ("conv", "add", "maxpool", "avgpool", "gap", "linear", "reorder", "reorder_in")
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
    layout: str = "plain"  # the activation layout the kernel runs in: "plain" (NCHW) or "nchwc<block>"

    @property
    def nchwc_block(self) -> int:
        """The channel block of an NCHWc key (0 for plain keys)."""
        return int(self.layout[5:]) if self.layout.startswith("nchwc") else 0

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.op in ("gap", "linear"):
            return (1, 1)
        if self.op in ("add", "reorder", "reorder_in"):
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
    def from_str(cls, text: str) -> BlockKey:
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
        if key.layout != "plain" and not (key.layout.startswith("nchwc") and key.layout[5:].isdigit()):
            raise ValueError(f"block key {text!r} has an unknown layout")
        return key

    def with_channels(self, c_in: int, c_out: int) -> BlockKey:
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
    src: int = -1  # index of the block whose output this block reads (-1: the model input)
    res_src: int = -1  # a fused residual add: index of the block that computed the other operand

    def channels(self, spec: SubnetSpec) -> tuple[int, int]:
        """(c_in, c_out) of this block in ``spec`` (before ``expand``)."""
        c_in = spec[self.in_group] if self.in_group is not None else self.c_in_fixed
        c_out = spec[self.out_group] if self.out_group is not None else self.c_out_fixed
        return c_in, c_out

    def key(self, spec: SubnetSpec, batch: int = 1, precision: str = "fp32", layout: str = "plain") -> BlockKey:
        return self.key_for(*self.channels(spec), batch, precision, layout)

    def key_for(self, c_in: int, c_out: int, batch: int = 1, precision: str = "fp32",
                layout: str = "plain") -> BlockKey:
        """The key at given channel counts (one-axis blocks take ``c_in`` for both)."""
        if self.op not in ("conv", "linear") or self.depthwise:
            c_out = c_in
        return BlockKey(self.op, c_in * self.expand, c_out, self.in_h, self.in_w, self.kernel, self.stride,
                        self.padding, self.depthwise, self.residual, self.act, batch, precision, layout)

    def in_widths(self, net: DynamicNet) -> tuple[int, ...]:
        return net.groups[self.in_group].widths_from() if self.in_group is not None else (self.c_in_fixed,)

    def out_widths(self, net: DynamicNet) -> tuple[int, ...]:
        return net.groups[self.out_group].widths_from() if self.out_group is not None else (self.c_out_fixed,)


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


def model_blocks(net: DynamicNet) -> list[BlockTemplate]:
    """Cut ``net``'s model into fused blocks (cached on the net)."""
    cached = getattr(net, "_block_templates", None)
    if cached is not None:
        return cached
    blocks = _trace_blocks(net)
    net._block_templates = blocks
    return blocks


def _trace_blocks(net: DynamicNet) -> list[BlockTemplate]:
    from torch.fx.passes.shape_prop import ShapeProp

    from ..dynamic.layers import DYNAMIC_TYPES

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, DYNAMIC_TYPES) or super().is_leaf_module(m, qualname)

    model = net.model
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:
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
    producer: dict[fx.Node, int] = {}  # index of the block that computed each tensor (-1: the input)

    def add_block(tpl: BlockTemplate, src_node, *outs, res_node=None) -> None:
        blocks.append(dataclasses.replace(tpl, src=producer.get(src_node, -1),
                                          res_src=producer.get(res_node, -1) if res_node is not None else -1))
        for n in outs:
            producer[n] = len(blocks) - 1
    order = {n: i for i, n in enumerate(gm.graph.nodes)}

    def single_user(node, pred):
        us = users(node)
        return us[0] if len(us) == 1 and pred(us[0]) else None

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            group[node], channels[node] = None, shape(node)[1]
            producer[node] = -1
            continue
        if node.op == "output" or node in consumed:
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        m = mod_of(node)
        info = net.layers.get(node.target) if node.op == "call_module" else None

        if info is not None and info.kind == "conv":
            in_shape = shape(src)
            tail, fused_add, act, other = node, False, "none", None
            bn = single_user(tail, lambda u: isinstance(mod_of(u), nn.BatchNorm2d))
            if bn is not None:
                consumed.add(bn)
                tail = bn
            add = single_user(tail, is_add)
            if add is not None:
                operand = add.args[0] if add.args[1] is tail else add.args[1]
                if order.get(operand, 1 << 30) < order[tail]:  # the other operand is ready: fuse
                    consumed.add(add)
                    tail, fused_add, other = add, True, operand
            a = single_user(tail, lambda u: act_of(u) is not None)
            if a is not None:
                consumed.add(a)
                tail, act = a, act_of(a)
            add_block(BlockTemplate(
                node.target, "conv", info.in_group, info.out_group, info.in_channels, info.out_channels,
                in_shape[2], in_shape[3], _pair(m.kernel_size), _pair(m.stride), _pair(m.padding),
                info.depthwise, fused_add, act), src, node, tail, res_node=other)
            for n in (node, tail):
                group[n], channels[n] = info.out_group, info.out_channels
            continue

        if info is not None and info.kind == "linear":
            tail, act = node, "none"
            a = single_user(tail, lambda u: act_of(u) is not None)
            if a is not None:
                consumed.add(a)
                tail, act = a, act_of(a)
            add_block(BlockTemplate(node.target, "linear", info.in_group, info.out_group,
                                    info.in_channels // info.expand, info.out_channels, 1, 1,
                                    act=act, expand=info.expand), src, node, tail)
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
            add_block(BlockTemplate(node.name, "add", g, g, s[1], s[1], s[2], s[3], act=act), a_, node, tail)
            group[node] = group[tail] = g
            channels[node] = channels[tail] = s[1]
            continue

        # pass-through ops keep the channel group of their input
        if src is not None:
            group[node], channels[node] = group.get(src), channels.get(src, 0)
            producer[node] = producer.get(src, -1)
        in_shape = shape(src) if src is not None and "tensor_meta" in src.meta else None
        g = group.get(src)
        if isinstance(m, nn.MaxPool2d):
            add_block(BlockTemplate(node.target, "maxpool", g, g, in_shape[1], in_shape[1], in_shape[2],
                                    in_shape[3], _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)), src, node)
        elif isinstance(m, nn.AdaptiveAvgPool2d) or (node.op == "call_function" and node.target is F.adaptive_avg_pool2d):
            out = shape(node)
            if out[2:] == (1, 1):
                add_block(BlockTemplate(str(node.target) if m else node.name, "gap", g, g, in_shape[1],
                                        in_shape[1], in_shape[2], in_shape[3]), src, node)
            elif out[2:] != in_shape[2:]:
                if in_shape[2] % out[2] or in_shape[3] % out[3] or in_shape[2] // out[2] != in_shape[3] // out[3]:
                    raise ModelError(f"layer '{node.target}': adaptive pooling {in_shape[2:]} -> {out[2:]} is not "
                                     "a plain average pool; profile at an input size where it is")
                k = in_shape[2] // out[2]
                add_block(BlockTemplate(node.target, "avgpool", g, g, in_shape[1], in_shape[1], in_shape[2],
                                        in_shape[3], k, k, 0), src, node)
        elif m is not None and (type(m) in _ACT_MODULES or isinstance(m, _FREE_MODULES)) or node.op == "call_function" and (node.target in _FREE_FUNCS or node.target in _ACT_FUNCS) or node.op in ("call_method",) and node.target in ("flatten", "view", "reshape", "size"):
            pass
        elif isinstance(m, nn.BatchNorm2d):
            raise ModelError(f"layer '{node.target}': a BatchNorm that does not follow a conv is not supported")
        else:
            raise ModelError(f"layer '{node.target}': op {node.op}:{getattr(node.target, '__name__', node.target)} "
                             "has no latency block")
    return blocks


def subnet_keys(net: DynamicNet, spec: SubnetSpec, batch: int = 1, precision: str = "fp32",
                layout: Layout | None = None) -> list[BlockKey]:
    """The block keys of one sub-net in execution order (with ``layout``'s reorders)."""
    if layout is not None and layout.kind != "plain":
        return layout.subnet_keys(net, spec, batch, precision)
    net.check_spec(spec)
    return [t.key(spec, batch, precision) for t in model_blocks(net)]


def all_keys(net: DynamicNet, batch: int = 1, precision: str = "fp32",
             layout: Layout | None = None) -> list[BlockKey]:
    """Every distinct block key any valid sub-net of ``net`` can use (the profiling grid)."""
    from .layout import PLAIN

    return (layout or PLAIN).all_keys(net, batch, precision)
