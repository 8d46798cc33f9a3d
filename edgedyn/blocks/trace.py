"""Cutting a model into the blocks an inference runtime fuses (traced with ``torch.fx``).

A :class:`~edgedyn.dynamic.DynamicNet` is traced in eval mode (its dynamic layers kept
whole), shapes are propagated on a zero input, and the graph is walked once in execution
order: each conv takes its BatchNorm, then a residual add whose other operand is ready,
then an activation, when each is the only consumer of what precedes it; linear layers take
an activation, unfused adds take one too; pools, activations left alone, per-channel
scales (squeeze-and-excitation, ConvNeXt's layer scale), element-wise products,
concatenations, LayerNorms, BatchNorms that follow no conv (DenseNet's pre-activation,
with their activation) and NCHW <-> NHWC transposes become blocks of their own;
reshapes, dropout, stochastic depth (eval) and identities are free. Anything else fails in
one line naming the layer: a block the table cannot price is never guessed. See
:mod:`edgedyn.blocks` for the block kinds.

Each tensor's channels are tracked as *parts* (coupling group or None for a fixed width,
full channels), so a block after a concatenation takes the sum of its inputs' widths.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.nn import functional

from ..errors import ModelError
from .key import BlockKey
from .template import BlockTemplate, Parts

if TYPE_CHECKING:
    from ..dynamic import DynamicNet
    from ..dynamic.groups import LayerInfo

_ACT_MODULES: dict[type, str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish",
                                 nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.SiLU: "silu",
                                 nn.GELU: "gelu"}
_ACT_FUNCS: dict[Any, str] = {functional.relu: "relu", torch.relu: "relu", functional.relu6: "relu6",
                              functional.hardswish: "hardswish", functional.hardsigmoid: "hardsigmoid",
                              torch.sigmoid: "sigmoid", functional.sigmoid: "sigmoid", functional.silu: "silu",
                              functional.gelu: "gelu"}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid"}
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_MUL_FUNCS = (operator.mul, operator.imul, torch.mul)
_FREE_FUNCS = (torch.flatten,)
_FREE_FUNC_NAMES = ("stochastic_depth",)  # torchvision.ops.stochastic_depth: the identity in eval
_FREE_MODULES = (nn.Dropout, nn.Identity, nn.Flatten)
_FREE_METHODS = ("flatten", "view", "reshape", "size", "contiguous")
_TRANSPOSES: dict[tuple[int, ...], str] = {(0, 2, 3, 1): "to_nhwc", (0, 3, 1, 2): "to_nchw"}


def _pair(v: Any) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ModelError(f"non-square stride, pool or dilation {v} is not supported by the profiler")
        return int(v[0])
    return int(v)


def _hw(v: Any, what: str, where: str) -> tuple[int, int]:
    """(height, width) of a conv's kernel or padding (Inception's 1x7 kernels are not square)."""
    if isinstance(v, str):
        raise ModelError(f"{where}: {what}={v!r} has no latency block (give it in numbers)")
    h, w = (v, v) if not isinstance(v, (tuple, list)) else v
    return int(h), int(w)


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
    was_training, active = model.training, net.active_spec
    model.eval()  # as deployed: dropout and stochastic depth trace as identities
    net.set_subnet(net.full_spec())  # shapes at full width
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(net.input_shape))
    except Exception as err:
        raise ModelError(f"model {net.name!r} cannot be traced into blocks ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    finally:
        model.train(was_training)
        net.set_subnet(active)
    return gm


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCS or node.op == "call_method"
            and node.target in ("add", "add_")) and len(node.args) == 2 and all(
        isinstance(a, fx.Node) for a in node.args)


def _is_mul(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _MUL_FUNCS or node.op == "call_method"
            and node.target in ("mul", "mul_")) and len(node.args) == 2


def _where(node: fx.Node) -> str:
    """The layer a node belongs to, for error messages: its module, or the module whose forward calls it."""
    if node.op == "call_module":
        return f"layer '{node.target}'"
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack.values()), None) if stack else None
    path = owner[0] if isinstance(owner, tuple) else owner
    what = getattr(node.target, "__name__", str(node.target))
    return f"layer '{path}' ({node.op} {what})" if path else f"node '{node.name}' ({node.op} {what})"


def _total(parts: Parts) -> int:
    return sum(c for _, c in parts)


class _Cutter:
    """One walk over a traced graph, collecting :class:`BlockTemplate` s in execution order."""

    def __init__(self, net: DynamicNet, gm: fx.GraphModule) -> None:
        self.net = net
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.parts: dict[fx.Node, Parts] = {}  # channels of each tensor: (group or None, channels) per part
        self.last: set[fx.Node] = set()  # tensors in channels-last (NHWC) layout
        self.consumed: set[fx.Node] = set()
        self.blocks: list[BlockTemplate] = []
        self.producer: dict[fx.Node, int] = {}  # index of the block that computed each tensor (-1: the input)

    # -- graph queries ------------------------------------------------------------------
    def mod_of(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(str(node.target)) if node.op == "call_module" else None

    def act_of(self, node: fx.Node) -> str | None:
        m = self.mod_of(node)
        if m is not None and type(m) in _ACT_MODULES:
            if isinstance(m, nn.GELU) and m.approximate != "none":
                return None
            return _ACT_MODULES[type(m)]
        if node.op == "call_function" and node.target in _ACT_FUNCS:
            if node.target is functional.gelu and node.kwargs.get("approximate", "none") != "none":
                return None
            return _ACT_FUNCS[node.target]
        if node.op == "call_method" and node.target in _ACT_METHODS:
            return _ACT_METHODS[str(node.target)]
        if node.op == "call_function" and node.target is functional.hardtanh and node.kwargs.get("min_val") == 0 \
                and node.kwargs.get("max_val") == 6:
            return "relu6"
        return None

    def is_free(self, node: fx.Node, m: nn.Module | None) -> bool:
        """Ops that cost nothing: reshapes, dropout, identity, stochastic depth (eval)."""
        return (m is not None and isinstance(m, _FREE_MODULES)
                or node.op == "call_function" and (node.target in _FREE_FUNCS
                                                   or getattr(node.target, "__name__", "") in _FREE_FUNC_NAMES)
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

    def chw(self, node: fx.Node) -> tuple[int, int, int]:
        """(channels, height, width) of a tensor (N C H W, N H W C when channels-last, or N C)."""
        s = _shape(node)
        if len(s) == 2:
            return s[1], 1, 1
        if len(s) != 4:
            raise ModelError(f"{_where(node)}: a {len(s)}-d tensor has no latency block (the profiler models "
                             "N C H W and N H W C tensors)")
        return (s[3], s[1], s[2]) if node in self.last else (s[1], s[2], s[3])

    def parts_of(self, node: fx.Node) -> Parts:
        return self.parts.get(node) or ((None, self.chw(node)[0]),)

    # -- the walk -----------------------------------------------------------------------
    def add_block(self, tpl: BlockTemplate, src_node: Any, *outs: fx.Node, res_node: fx.Node | None = None) -> None:
        self.blocks.append(dataclasses.replace(
            tpl, src=self.producer.get(src_node, -1),
            res_src=self.producer.get(res_node, -1) if res_node is not None else -1))
        for n in outs:
            self.producer[n] = len(self.blocks) - 1

    def follow(self, name: str, op: str, src: fx.Node, out: fx.Node, *tails: fx.Node, act: str = "none",
               parts: Parts | None = None, kernel: int = 1, stride: int = 1, padding: int = 0,
               ceil: bool = False) -> None:
        """A block whose channels follow its input's (pools, element-wise ops, norms, transposes, concat)."""
        parts = parts if parts is not None else self.parts_of(src)
        c, h, w = self.chw(src)
        g = parts[0][0] if len(parts) == 1 else None
        self.add_block(BlockTemplate(name, op, g, g, _total(parts), _total(parts), h, w, act=act,
                                     kernel=kernel, stride=stride, padding=padding, ceil=ceil,
                                     in_parts=parts if len(parts) > 1 else ()), src, out, *tails)
        for n in (out, *tails):
            self.parts[n] = parts

    def cut(self) -> list[BlockTemplate]:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.parts[node] = ((None, _shape(node)[1]),)
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
        if _pair(m.dilation) != 1:
            raise ModelError(f"layer '{node.target}': a dilated conv has no latency block")
        grouped = info.groups > 1 and not info.depthwise
        in_parts = tuple((g, c) for g, _, c in (info.in_parts or (info.out_parts if info.depthwise else ())))
        (kh, kw), (ph, pw) = _hw(m.kernel_size, "kernel", _where(node)), _hw(m.padding, "padding", _where(node))
        self.add_block(BlockTemplate(
            str(node.target), "conv", info.in_group, info.out_group, info.in_channels, info.out_channels,
            in_shape[2], in_shape[3], kh, _pair(m.stride), ph,
            info.depthwise, fused_add, act, group_width=info.in_channels // info.groups if grouped else 0,
            in_parts=in_parts, kernel_w=0 if kw == kh else kw, padding_w=-1 if pw == ph else pw),
            src, node, tail, res_node=other_node)
        out = in_parts if info.depthwise and in_parts else ((info.out_group, info.out_channels),)
        for n in (node, tail):
            self.parts[n] = out

    def linear(self, node: fx.Node, src: Any, info: LayerInfo) -> None:
        """A linear layer (and its activation): on a flattened tensor, or per position of an N H W C one."""
        tail, act = self.fuse_act(node)
        s = _shape(src)
        if len(s) == 4:
            if src not in self.last:
                raise ModelError(f"layer '{node.target}': a linear layer over the last axis of an N C H W tensor "
                                 "has no latency block")
            self.last.update((node, tail))
        elif len(s) != 2:
            raise ModelError(f"layer '{node.target}': a linear layer on a {len(s)}-d tensor has no latency block")
        h, w = (s[1], s[2]) if len(s) == 4 else (1, 1)
        in_parts = tuple((g, c) for g, _, c in info.in_parts) if info.expand == 1 else ()
        self.add_block(BlockTemplate(str(node.target), "linear", info.in_group, info.out_group,
                                     info.in_channels // info.expand, info.out_channels, h, w,
                                     act=act, expand=info.expand, in_parts=in_parts), src, node, tail)
        self.parts[node] = self.parts[tail] = ((info.out_group, info.out_channels),)

    def add(self, node: fx.Node) -> None:
        """A residual add not fused into a conv (with its activation)."""
        a_, b_ = node.args
        assert isinstance(a_, fx.Node) and isinstance(b_, fx.Node)  # _is_add checked it
        if _shape(a_) != _shape(b_):
            raise ModelError(f"{_where(node)}: an add that broadcasts has no latency block")
        parts = self.parts_of(a_) if any(g is not None for g, _ in self.parts_of(a_)) else self.parts_of(b_)
        if a_ in self.last or b_ in self.last:
            raise ModelError(f"{_where(node)}: an add of channels-last tensors has no latency block")
        tail, act = self.fuse_act(node)
        self.follow(node.name, "add", a_, node, tail, act=act, parts=parts)

    def other(self, node: fx.Node, src: fx.Node | None) -> None:
        """Every block that is not a conv, a linear layer or an add; free ops; else a one-line error."""
        m = self.mod_of(node)
        act = self.act_of(node)
        if node.op == "get_attr":  # a parameter (ConvNeXt's layer scale): read by the op that uses it
            return
        if src is not None and act is not None:
            self.follow(node.name if m is None else str(node.target), "act", src, node, act=act)
            self.last.update({node} if src in self.last else set())
        elif src is not None and (isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) or node.op == "call_function"
                                  and node.target in (functional.max_pool2d, functional.avg_pool2d)):
            self.pool(node, src, m)
        elif src is not None and (isinstance(m, nn.AdaptiveAvgPool2d) or node.op == "call_function"
                                  and node.target is functional.adaptive_avg_pool2d):
            self.adaptive_pool(node, src, m)
        elif src is not None and self.is_mean(node):
            self.follow(node.name, "gap", src, node)
        elif src is not None and self.is_free(node, m):
            self.parts[node] = self.parts_of(src)
            self.producer[node] = self.producer.get(src, -1)
            if src in self.last:
                self.last.add(node)
        elif _is_mul(node):
            self.mul(node)
        elif node.op == "call_function" and node.target is torch.cat:
            self.concat(node)
        elif src is not None and (node.op == "call_function" and node.target is torch.permute
                                  or node.op == "call_method" and node.target == "permute"):
            self.transpose(node, src)
        elif src is not None and isinstance(m, nn.LayerNorm):
            self.layer_norm(node, src, m)
        elif src is not None and isinstance(m, nn.BatchNorm2d):  # follows no conv (DenseNet's pre-activation)
            tail, act = self.fuse_act(node)
            self.follow(str(node.target), "affine", src, node, tail, act=act)
        else:
            raise ModelError(f"{_where(node)} has no latency block, so this model cannot be profiled "
                             "(search it with --cost flops)")

    def pool(self, node: fx.Node, src: fx.Node, m: nn.Module | None) -> None:
        """Max or average pooling: a module, or ``F.max_pool2d`` / ``F.avg_pool2d`` (Inception)."""
        names = ("kernel_size", "stride", "padding", "ceil_mode" if isinstance(m, nn.AvgPool2d) or
                 node.target is functional.avg_pool2d else "dilation")
        if m is not None:
            opts: dict[str, Any] = {k: getattr(m, k) for k in names}
            opts["ceil_mode"] = m.ceil_mode
        else:
            opts = {**dict(zip(names, node.args[1:])), **node.kwargs}
        op = "maxpool" if isinstance(m, nn.MaxPool2d) or node.target is functional.max_pool2d else "avgpool"
        k, p = _pair(opts["kernel_size"]), _pair(opts.get("padding", 0))
        s = _pair(opts.get("stride")) if opts.get("stride") else k
        if _pair(opts.get("dilation", 1)) != 1:
            raise ModelError(f"{_where(node)}: a pool with dilation has no latency block")
        out, (h, w) = tuple(_shape(node)[2:]), _shape(src)[2:]
        ceil = False
        if out != BlockKey(op, 1, 1, h, w, k, s, p).out_hw:  # ceil_mode rounds up (GoogLeNet)
            ceil = True
            if out != BlockKey(op, 1, 1, h, w, k, s, p, ceil=True).out_hw:
                raise ModelError(f"{_where(node)}: a pool {tuple(_shape(src)[2:])} -> {out} that no kernel, stride "
                                 "and padding explain has no latency block")
        self.follow(str(node.target) if m is not None else node.name, op, src, node, kernel=k, stride=s, padding=p,
                    ceil=ceil)

    @staticmethod
    def is_mean(node: fx.Node) -> bool:
        """``x.mean((2, 3))``: global average pooling written by hand (squeeze-and-excitation)."""
        if not (node.op == "call_method" and node.target == "mean"
                or node.op == "call_function" and node.target is torch.mean):
            return False
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (tuple, list)) and sorted(int(d) % 4 for d in dims) == [2, 3]

    def adaptive_pool(self, node: fx.Node, src: fx.Node, m: nn.Module | None) -> None:
        """Global pooling (a ``gap`` block), a plain average pool, or nothing (same size)."""
        in_shape, out = _shape(src), _shape(node)
        name = str(node.target) if m is not None else node.name
        if out[2:] == (1, 1):
            self.follow(name, "gap", src, node)
        elif out[2:] != in_shape[2:]:
            if in_shape[2] % out[2] or in_shape[3] % out[3] or in_shape[2] // out[2] != in_shape[3] // out[3]:
                raise ModelError(f"layer '{node.target}': adaptive pooling {in_shape[2:]} -> {out[2:]} is not "
                                 "a plain average pool; profile at an input size where it is")
            k = in_shape[2] // out[2]
            self.follow(name, "avgpool", src, node, kernel=k, stride=k)
        else:
            self.parts[node] = self.parts_of(src)
            self.producer[node] = self.producer.get(src, -1)

    def mul(self, node: fx.Node) -> None:
        """``x * s``: a per-channel scale (s of shape C x 1 x 1: squeeze-and-excitation, layer scale), or
        an element-wise product of two tensors of one shape."""
        a_, b_ = node.args
        nodes = [x for x in (a_, b_) if isinstance(x, fx.Node)]
        if len(nodes) != 2:
            raise ModelError(f"{_where(node)}: a product with a constant has no latency block")
        big, small = sorted(nodes, key=lambda x: (-math.prod(_shape(x)), -len(_shape(x))))
        bs, ss = _shape(big), _shape(small)
        if big in self.last or small in self.last:
            raise ModelError(f"{_where(node)}: a product of channels-last tensors has no latency block")
        if bs == ss and len(bs) == 4:
            self.follow(node.name, "mul", big, node)
        elif len(bs) == 4 and tuple(ss[-3:]) == (bs[1], 1, 1) and (len(ss) == 3 or ss[0] == bs[0]):
            self.follow(node.name, "scale", big, node)
        else:
            raise ModelError(f"{_where(node)}: a product of shapes {tuple(bs)} and {tuple(ss)} has no latency block")

    def concat(self, node: fx.Node) -> None:
        """``torch.cat`` along the channels: a block over every input's parts."""
        args: Any = node.args
        ins = args[0]
        dim: Any = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(ins, (list, tuple)) or not all(isinstance(x, fx.Node) for x in ins) \
                or len(_shape(node)) != 4 or int(dim) % 4 != 1 or any(x in self.last for x in ins):
            raise ModelError(f"{_where(node)}: only a concatenation of N C H W tensors along the channels has a "
                             "latency block")
        parts = tuple(p for x in ins for p in self.parts_of(x))
        self.follow(node.name, "concat", ins[0], node, parts=parts)
        self.blocks[-1] = dataclasses.replace(self.blocks[-1], in_parts=parts)

    def transpose(self, node: fx.Node, src: fx.Node) -> None:
        dims = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) > 1 else node.kwargs.get("dims")
        dims = tuple(int(d) for d in dims) if isinstance(dims, (tuple, list)) else None
        op = _TRANSPOSES.get(dims) if dims else None
        if op is None or (op == "to_nhwc") == (src in self.last):
            raise ModelError(f"{_where(node)}: a permute {dims} has no latency block (only N C H W <-> N H W C)")
        self.follow(node.name, op, src, node)
        if op == "to_nhwc":
            self.last.add(node)

    def layer_norm(self, node: fx.Node, src: fx.Node, m: nn.LayerNorm) -> None:
        """A LayerNorm over the channels: of an N H W C tensor, or of an N C H W one (``LayerNorm2d``)."""
        c, _, _ = self.chw(src)
        if tuple(m.normalized_shape) != (c,):
            raise ModelError(f"layer '{node.target}': a LayerNorm over {list(m.normalized_shape)}, not the channels, "
                             "has no latency block")
        two_d = len(_shape(src)) == 4 and src not in self.last
        self.follow(str(node.target), "layernorm2d" if two_d else "layernorm", src, node)
        if src in self.last:
            self.last.add(node)
