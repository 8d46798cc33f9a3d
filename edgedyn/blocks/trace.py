"""Cutting a model into the blocks an inference runtime fuses (traced with ``torch.fx``).

A :class:`~edgedyn.dynamic.DynamicNet` is traced (its dynamic layers kept whole), shapes
are propagated on a zero input, and the graph is walked once in execution order: each
conv takes its BatchNorm, then a residual add whose other operand is ready, then an
activation, when each is the only consumer of what precedes it; linear layers take an
activation, unfused adds take one too; pools become blocks of their own and reshapes,
dropout and identities are free. See :mod:`edgedyn.blocks` for the block kinds.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.nn import functional

from ..errors import ModelError
from .template import BlockTemplate

if TYPE_CHECKING:
    from ..dynamic import DynamicNet
    from ..dynamic.groups import LayerInfo

_ACT_MODULES: dict[type, str] = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_ACT_FUNCS: dict[Any, str] = {functional.relu: "relu", torch.relu: "relu", functional.relu6: "relu6"}
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_FREE_FUNCS = (torch.flatten,)
_FREE_MODULES = (nn.Dropout, nn.Identity, nn.Flatten)
_FREE_METHODS = ("flatten", "view", "reshape", "size")


def _pair(v: Any) -> int:
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
    blocks = _Cutter(net, _traced(net)).cut()
    net.__dict__["_block_templates"] = blocks  # a plain attribute (nn.Module's setattr is typed for tensors)
    return blocks


def _traced(net: DynamicNet) -> fx.GraphModule:
    """``net``'s model as an fx graph (dynamic layers as leaves), every node's output shape known."""
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
    return gm


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _is_add(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _ADD_FUNCS and len(node.args) == 2 and all(
        isinstance(a, fx.Node) for a in node.args)


class _Cutter:
    """One walk over a traced graph, collecting :class:`BlockTemplate` s in execution order."""

    def __init__(self, net: DynamicNet, gm: fx.GraphModule) -> None:
        self.net = net
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.group: dict[fx.Node, int | None] = {}  # channel group of each tensor
        self.channels: dict[fx.Node, int] = {}
        self.consumed: set[fx.Node] = set()
        self.blocks: list[BlockTemplate] = []
        self.producer: dict[fx.Node, int] = {}  # index of the block that computed each tensor (-1: the input)

    # -- graph queries ------------------------------------------------------------------
    def mod_of(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(str(node.target)) if node.op == "call_module" else None

    def act_of(self, node: fx.Node) -> str | None:
        m = self.mod_of(node)
        if m is not None and type(m) in _ACT_MODULES:
            return _ACT_MODULES[type(m)]
        if node.op == "call_function" and node.target in _ACT_FUNCS:
            return _ACT_FUNCS[node.target]
        if node.op == "call_function" and node.target is functional.hardtanh and node.kwargs.get("min_val") == 0:
            return "relu6"
        return None

    def is_free(self, node: fx.Node, m: nn.Module | None) -> bool:
        """Ops that cost nothing: activations left alone, reshapes, dropout, identity."""
        return (m is not None and (type(m) in _ACT_MODULES or isinstance(m, _FREE_MODULES))
                or node.op == "call_function" and (node.target in _FREE_FUNCS or node.target in _ACT_FUNCS)
                or node.op == "call_method" and node.target in _FREE_METHODS)

    @staticmethod
    def single_user(node: fx.Node, pred: Callable[[fx.Node], bool]) -> fx.Node | None:
        us = list(node.users)
        return us[0] if len(us) == 1 and pred(us[0]) else None

    def fuse_act(self, tail: fx.Node) -> tuple[fx.Node, str]:
        """``tail``'s activation when it is its only consumer (consumed), and the new tail."""
        a = self.single_user(tail, lambda u: self.act_of(u) is not None)
        if a is None:
            return tail, "none"
        self.consumed.add(a)
        return a, self.act_of(a) or "none"

    # -- the walk -----------------------------------------------------------------------
    def add_block(self, tpl: BlockTemplate, src_node: Any, *outs: fx.Node, res_node: fx.Node | None = None) -> None:
        self.blocks.append(dataclasses.replace(
            tpl, src=self.producer.get(src_node, -1),
            res_src=self.producer.get(res_node, -1) if res_node is not None else -1))
        for n in outs:
            self.producer[n] = len(self.blocks) - 1

    def cut(self) -> list[BlockTemplate]:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.group[node], self.channels[node] = None, _shape(node)[1]
                self.producer[node] = -1
                continue
            if node.op == "output" or node in self.consumed:
                continue
            src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            info = self.net.layers.get(str(node.target)) if node.op == "call_module" else None
            if info is not None and info.kind == "conv":
                self.conv(node, src, info)
            elif info is not None and info.kind == "linear":
                self.linear(node, src, info)
            elif _is_add(node):
                self.add(node)
            else:
                self.other(node, src)
        return self.blocks

    def conv(self, node: fx.Node, src: Any, info: LayerInfo) -> None:
        """A conv with its BatchNorm, a residual add whose other operand is ready, and an activation."""
        m: Any = self.mod_of(node)
        in_shape = _shape(src)
        tail, fused_add = node, False
        other_node: fx.Node | None = None
        bn = self.single_user(tail, lambda u: isinstance(self.mod_of(u), nn.BatchNorm2d))
        if bn is not None:
            self.consumed.add(bn)
            tail = bn
        add = self.single_user(tail, _is_add)
        if add is not None:
            operand = add.args[0] if add.args[1] is tail else add.args[1]
            assert isinstance(operand, fx.Node)  # _is_add checked both
            if self.order.get(operand, 1 << 30) < self.order[tail]:  # the other operand is ready: fuse
                self.consumed.add(add)
                tail, fused_add, other_node = add, True, operand
        tail, act = self.fuse_act(tail)
        self.add_block(BlockTemplate(
            str(node.target), "conv", info.in_group, info.out_group, info.in_channels, info.out_channels,
            in_shape[2], in_shape[3], _pair(m.kernel_size), _pair(m.stride), _pair(m.padding),
            info.depthwise, fused_add, act), src, node, tail, res_node=other_node)
        for n in (node, tail):
            self.group[n], self.channels[n] = info.out_group, info.out_channels

    def linear(self, node: fx.Node, src: Any, info: LayerInfo) -> None:
        tail, act = self.fuse_act(node)
        self.add_block(BlockTemplate(str(node.target), "linear", info.in_group, info.out_group,
                                     info.in_channels // info.expand, info.out_channels, 1, 1,
                                     act=act, expand=info.expand), src, node, tail)
        self.group[node] = self.group[tail] = info.out_group
        self.channels[node] = self.channels[tail] = info.out_channels

    def add(self, node: fx.Node) -> None:
        """A residual add not fused into a conv (with its activation)."""
        a_, b_ = node.args
        assert isinstance(a_, fx.Node) and isinstance(b_, fx.Node)  # _is_add checked it
        g = self.group.get(a_) if self.group.get(a_) is not None else self.group.get(b_)
        s = _shape(node)
        tail, act = self.fuse_act(node)
        self.add_block(BlockTemplate(node.name, "add", g, g, s[1], s[1], s[2], s[3], act=act), a_, node, tail)
        self.group[node] = self.group[tail] = g
        self.channels[node] = self.channels[tail] = s[1]

    def other(self, node: fx.Node, src: fx.Node | None) -> None:
        """Pooling blocks; free ops (they keep the channel group of their input); else an error."""
        m = self.mod_of(node)
        if src is not None:
            self.group[node], self.channels[node] = self.group.get(src), self.channels.get(src, 0)
            self.producer[node] = self.producer.get(src, -1)
        in_shape: Any = _shape(src) if src is not None and "tensor_meta" in src.meta else None
        g = self.group.get(src) if src is not None else None
        if isinstance(m, nn.MaxPool2d):
            self.add_block(BlockTemplate(str(node.target), "maxpool", g, g, in_shape[1], in_shape[1], in_shape[2],
                                         in_shape[3], _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)),
                           src, node)
        elif isinstance(m, nn.AdaptiveAvgPool2d) or (node.op == "call_function"
                                                     and node.target is functional.adaptive_avg_pool2d):
            self.adaptive_pool(node, src, m, in_shape, g)
        elif self.is_free(node, m):
            pass
        elif isinstance(m, nn.BatchNorm2d):
            raise ModelError(f"layer '{node.target}': a BatchNorm that does not follow a conv is not supported")
        else:
            raise ModelError(f"layer '{node.target}': op {node.op}:{getattr(node.target, '__name__', node.target)} "
                             "has no latency block")

    def adaptive_pool(self, node: fx.Node, src: Any, m: nn.Module | None, in_shape: Any, g: int | None) -> None:
        """Global pooling (a ``gap`` block), a plain average pool, or nothing (same size)."""
        out = _shape(node)
        if out[2:] == (1, 1):
            self.add_block(BlockTemplate(str(node.target) if m is not None else node.name, "gap", g, g, in_shape[1],
                                         in_shape[1], in_shape[2], in_shape[3]), src, node)
        elif out[2:] != in_shape[2:]:
            if in_shape[2] % out[2] or in_shape[3] % out[3] or in_shape[2] // out[2] != in_shape[3] // out[3]:
                raise ModelError(f"layer '{node.target}': adaptive pooling {in_shape[2:]} -> {out[2:]} is not "
                                 "a plain average pool; profile at an input size where it is")
            k = in_shape[2] // out[2]
            self.add_block(BlockTemplate(str(node.target), "avgpool", g, g, in_shape[1], in_shape[1], in_shape[2],
                                         in_shape[3], k, k, 0), src, node)
