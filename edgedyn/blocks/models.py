"""Stand-alone models of one block, for measuring it: ONNX (onnxruntime, tensorrt) or torch.

Weights are random (latency does not depend on their values). BatchNorm is already
folded, as in the exported sub-nets; a fused residual add is a second graph input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .key import BlockKey

OPSET = 18

_POOL: list[np.ndarray] = []


def random_weights(shape: tuple[int, ...]) -> np.ndarray:
    """Random float32 weights (normal, std 0.05) of ``shape``: a slice of one pool drawn once.

    A profile builds each block's graph once per pass; drawing fresh normals for every
    weight took 13 s of a resnet18@224 profile's 137 s block stage. Latency does not depend
    on the values, and the pool's are still random normals.
    """
    n = int(np.prod(shape, dtype=np.int64))
    if not _POOL or _POOL[0].size < n:
        size = max(n, 1 << 20)
        _POOL[:] = [(np.random.default_rng(0).standard_normal(size, dtype=np.float32) * 0.05).astype(np.float32)]
    return _POOL[0][:n].reshape(shape)


def block_onnx(key: BlockKey):
    """An ONNX ModelProto computing ``key``'s block (input ``input``, output ``output``)."""
    if key.nchwc_block:
        return _nchwc_onnx(key)
    from onnx import TensorProto, helper

    g = _Graph(key)
    x = _BODIES[key.op](g, key) if key.op in _BODIES else None
    if x is None:
        raise ValueError(f"unknown block op {key.op!r}")
    x = g.activation(x, key.act)
    g.nodes.append(helper.make_node("Identity", [x], ["output"]))
    graph = helper.make_graph(g.nodes, "block", g.inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, _out_shape(key))], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgedyn")
    model.ir_version = 9
    return model


def _in_shape(key: BlockKey) -> list[int]:
    b, c, h, w = key.batch, key.c_in, key.in_h, key.in_w
    if key.op == "linear":
        return [b, c] if (h, w) == (1, 1) else [b, h, w, c]
    return [b, h, w, c] if key.op in ("layernorm", "to_nchw") else [b, c, h, w]


def _out_shape(key: BlockKey) -> list[int]:
    b, (oh, ow) = key.batch, key.out_hw
    if key.op == "linear":
        return [b, key.c_out] if (oh, ow) == (1, 1) else [b, oh, ow, key.c_out]
    return [b, oh, ow, key.c_out] if key.op in ("layernorm", "to_nhwc") else [b, key.c_out, oh, ow]


def _value(name: str, shape: list[int]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


class _Graph:
    """The nodes, inputs and initializers of one block's ONNX graph, built step by step."""

    def __init__(self, key: BlockKey) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs = [_value("input", _in_shape(key))]

    def node(self, op: str, ins: list[str], out: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def input(self, name: str, shape: list[int]) -> str:
        self.inputs.append(_value(name, shape))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        return self.const(name, random_weights(tuple(shape)))

    def activation(self, x: str, act: str) -> str:
        if act == "relu6":
            return self.node("Clip", [x, self.const("lo", np.array(0)), self.const("hi", np.array(6))], "act")
        if act == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x], "sig")], "act")
        if act == "gelu":  # as exported at opset 18: x * 0.5 * (1 + erf(x / sqrt 2)), which ONNX Runtime fuses
            e = self.node("Erf", [self.node("Div", [x, self.const("sqrt2", np.array(np.sqrt(2.0)))], "div")], "erf")
            one = self.node("Add", [e, self.const("one", np.array(1.0))], "one_erf")
            return self.node("Mul", [self.node("Mul", [x, one], "x_erf"), self.const("half", np.array(0.5))], "act")
        if act == "hardsigmoid":
            return self.node("HardSigmoid", [x], "act", alpha=1.0 / 6, beta=0.5)
        simple = {"relu": "Relu", "hardswish": "HardSwish", "sigmoid": "Sigmoid"}
        return self.node(simple[act], [x], "act") if act in simple else x


def _conv(g: _Graph, key: BlockKey) -> str:
    groups = key.c_in if key.depthwise else key.c_in // key.group_width if key.group_width else 1
    w = g.weight("w", (key.c_out, key.c_in // groups, *key.kernel_hw))
    x = g.node("Conv", ["input", w, g.const("b", np.zeros(key.c_out))], "conv", kernel_shape=list(key.kernel_hw),
               strides=[key.stride] * 2, pads=list(key.padding_hw) * 2, group=groups)
    if key.residual:
        return g.node("Add", [x, g.input("residual", [key.batch, key.c_out, *key.out_hw])], "sum")
    return x


def _linear(g: _Graph, key: BlockKey) -> str:
    if (key.in_h, key.in_w) == (1, 1):
        return g.node("Gemm", ["input", g.weight("w", (key.c_out, key.c_in)), g.const("b", np.zeros(key.c_out))],
                      "fc", transB=1)
    y = g.node("MatMul", ["input", g.weight("w", (key.c_in, key.c_out))], "mm")  # per position of N H W C
    return g.node("Add", [y, g.const("b", np.zeros(key.c_out))], "fc")


def _concat(g: _Graph, key: BlockKey) -> str:
    sizes = [key.c_in // key.parts] * key.parts
    sizes[-1] += key.c_in - sum(sizes)
    names = ["input"] + [g.input(f"part{i}", [key.batch, c, key.in_h, key.in_w]) for i, c in enumerate(sizes[1:])]
    g.inputs[0] = _value("input", [key.batch, sizes[0], key.in_h, key.in_w])
    return g.node("Concat", names, "cat", axis=1)


def _layer_norm(g: _Graph, key: BlockKey, x: str = "input") -> str:
    return g.node("LayerNormalization", [x, g.weight("gamma", (key.c_in,)), g.const("beta", np.zeros(key.c_in))],
                  "ln", axis=-1, epsilon=1e-6)


def _layer_norm_2d(g: _Graph, key: BlockKey) -> str:
    y = _layer_norm(g, key, g.node("Transpose", ["input"], "nhwc", perm=[0, 2, 3, 1]))
    return g.node("Transpose", [y], "nchw", perm=[0, 3, 1, 2])


def _pool(op: str) -> Callable[[_Graph, BlockKey], str]:
    return lambda g, key: g.node(op, ["input"], "pool", kernel_shape=list(key.kernel_hw), strides=[key.stride] * 2,
                                 pads=list(key.padding_hw) * 2, ceil_mode=int(key.ceil))


def _affine(g: _Graph, key: BlockKey) -> str:
    """A BatchNorm that follows no conv (DenseNet's pre-activation), as exported: BatchNormalization."""
    c = key.c_in
    return g.node("BatchNormalization", ["input", g.weight("gamma", (c,)), g.const("beta", np.zeros(c)),
                                         g.const("mean", np.zeros(c)), g.const("var", np.ones(c))], "bn")


_BODIES: dict[str, Callable[[_Graph, BlockKey], str]] = {
    "conv": _conv,
    "linear": _linear,
    "add": lambda g, key: g.node("Add", ["input", g.input("other", _in_shape(key))], "sum"),
    "mul": lambda g, key: g.node("Mul", ["input", g.input("other", _in_shape(key))], "prod"),
    "scale": lambda g, key: g.node("Mul", ["input", g.input("scale", [key.batch, key.c_in, 1, 1])], "prod"),
    "act": lambda g, key: "input",
    "maxpool": _pool("MaxPool"),
    "avgpool": _pool("AveragePool"),
    "gap": lambda g, key: g.node("GlobalAveragePool", ["input"], "pool"),
    "concat": _concat,
    "affine": _affine,
    "layernorm": _layer_norm,
    "layernorm2d": _layer_norm_2d,
    "to_nhwc": lambda g, key: g.node("Transpose", ["input"], "t", perm=[0, 2, 3, 1]),
    "to_nchw": lambda g, key: g.node("Transpose", ["input"], "t", perm=[0, 3, 1, 2]),
}


NCHWC_DOMAIN = "com.microsoft.nchwc"


def _nchwc_onnx(key: BlockKey):
    """``key`` as ONNX Runtime runs it inside a network: its own NCHWc kernels, blocked tensors in and out.

    This is what ONNX Runtime's CPU graph optimizer turns the block into (see
    :mod:`edgedyn.blocks.layout`); building it directly keeps the input and output
    reorders that an isolated plain block would pay out of the measurement.
    """
    from onnx import TensorProto, helper, numpy_helper

    if key.op not in ("conv", "maxpool", "reorder", "reorder_in") or key.depthwise:
        raise ValueError(f"no NCHWc form for block {key.to_str()}")
    blk = key.nchwc_block
    b, (oh, ow) = key.batch, key.out_hw

    def padded(c: int) -> int:
        return -(-c // blk) * blk

    def value(name: str, shape: list[int]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    inits = []
    if key.op == "conv":
        c_in = key.c_in if key.c_in < blk else padded(key.c_in)  # narrow inputs are read as plain NCHW
        c_out = padded(key.c_out)
        w = random_weights((c_out, c_in, *key.kernel_hw))
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(c_out, np.float32), "b")]
        inputs = [value("input", [b, c_in, key.in_h, key.in_w])]
        names = ["input", "w", "b"]
        if key.residual:
            inputs.append(value("residual", [b, c_out, oh, ow]))
            names.append("residual")
        fused: dict[str, dict[str, Any]] = {"relu": {"activation": "Relu"},
                                            "relu6": {"activation": "Clip", "activation_params": [0.0, 6.0]}}
        act = fused.get(key.act, {})
        node = helper.make_node("Conv", names, ["output"], domain=NCHWC_DOMAIN, kernel_shape=list(key.kernel_hw),
                                strides=[key.stride] * 2, pads=list(key.padding_hw) * 2, dilations=[1, 1], group=1,
                                **act)
        out = value("output", [b, c_out, oh, ow])
    elif key.op == "maxpool":
        if key.act != "none":
            raise ValueError(f"no NCHWc form for block {key.to_str()}")
        c = padded(key.c_in)
        inputs = [value("input", [b, c, key.in_h, key.in_w])]
        node = helper.make_node("MaxPool", ["input"], ["output"], domain=NCHWC_DOMAIN, kernel_shape=list(key.kernel_hw),
                                strides=[key.stride] * 2, pads=[key.padding] * 4)
        out = value("output", [b, c, oh, ow])
    elif key.op == "reorder_in":  # plain NCHW -> blocked (padded)
        inputs = [value("input", [b, key.c_in, key.in_h, key.in_w])]
        node = helper.make_node("ReorderInput", ["input"], ["output"], domain=NCHWC_DOMAIN)
        out = value("output", [b, padded(key.c_in), key.in_h, key.in_w])
    else:  # reorder: blocked (padded) -> plain NCHW
        inputs = [value("input", [b, padded(key.c_in), key.in_h, key.in_w])]
        node = helper.make_node("ReorderOutput", ["input"], ["output"], domain=NCHWC_DOMAIN, channels=key.c_in)
        out = value("output", [b, key.c_in, key.in_h, key.in_w])
    graph = helper.make_graph([node], "block", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(NCHWC_DOMAIN, 1)], producer_name="edgedyn")
    model.ir_version = 9
    return model


_TORCH_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "gelu": nn.GELU}


class _Block(nn.Module):
    def __init__(self, key: BlockKey) -> None:
        super().__init__()
        self.key = key
        self.op: nn.Module
        if key.op == "conv":
            groups = key.c_in if key.depthwise else key.c_in // key.group_width if key.group_width else 1
            self.op = nn.Conv2d(key.c_in, key.c_out, key.kernel_hw, key.stride, key.padding_hw, groups=groups)
        elif key.op == "linear":
            self.op = nn.Linear(key.c_in, key.c_out)
        elif key.op == "maxpool":
            self.op = nn.MaxPool2d(key.kernel_hw, key.stride, key.padding_hw, ceil_mode=key.ceil)
        elif key.op == "avgpool":
            self.op = nn.AvgPool2d(key.kernel_hw, key.stride, key.padding_hw, ceil_mode=key.ceil)
        elif key.op == "gap":
            self.op = nn.AdaptiveAvgPool2d(1)
        elif key.op in ("layernorm", "layernorm2d"):
            self.op = nn.LayerNorm(key.c_in, eps=1e-6)
        elif key.op == "affine":
            self.op = nn.BatchNorm2d(key.c_in).eval()
        else:
            self.op = nn.Identity()
        self.act = _TORCH_ACTS[key.act]() if key.act in _TORCH_ACTS else nn.Identity()

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        op = self.key.op
        if op == "concat":
            y = torch.cat([x, *others], 1)
        elif op in ("mul", "scale"):
            y = x * others[0]
        elif op == "layernorm2d":
            y = self.op(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif op in ("to_nhwc", "to_nchw"):
            y = x.permute(0, 2, 3, 1) if op == "to_nhwc" else x.permute(0, 3, 1, 2)
        else:
            y = self.op(x)
            if others:  # a fused residual, or an add's other operand
                y = y + others[0]
        return self.act(y)


def block_torch(key: BlockKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A torch module for ``key`` and example inputs (with the residual / other operands)."""
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = key.batch, key.c_in, key.in_h, key.in_w
    if key.op == "concat":
        sizes = [c // key.parts] * key.parts
        sizes[-1] += c - sum(sizes)
        return _Block(key), tuple(torch.randn(b, n, h, w, generator=gen) for n in sizes)
    x = torch.randn(*_in_shape(key), generator=gen)
    inputs: tuple[torch.Tensor, ...] = (x,)
    if key.residual or key.op in ("add", "mul"):
        inputs += (torch.randn(b, key.c_out, *key.out_hw, generator=gen),)
    elif key.op == "scale":
        inputs += (torch.randn(b, c, 1, 1, generator=gen),)
    return _Block(key), inputs
