"""Stand-alone models of one block, for measuring it: ONNX (onnxruntime, tensorrt) or torch.

Weights are random (latency does not depend on their values). BatchNorm is already
folded, as in the exported sub-nets; a fused residual add is a second graph input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .key import BlockKey

OPSET = 18


def block_onnx(key: BlockKey):
    """An ONNX ModelProto computing ``key``'s block (input ``input``, output ``output``)."""
    if key.nchwc_block:
        return _nchwc_onnx(key)
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = key.batch
    oh, ow = key.out_hw
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                            [b, key.c_in] if key.op == "linear" else [b, key.c_in, key.in_h, key.in_w])]
    inits, nodes = [], []
    x = "input"

    if key.op == "conv":
        groups = key.c_in if key.depthwise else 1
        w = rng.standard_normal((key.c_out, key.c_in // groups, key.kernel, key.kernel)).astype(np.float32) * 0.05
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(key.c_out, np.float32), "b")]
        p = key.padding
        nodes.append(helper.make_node("Conv", [x, "w", "b"], ["conv"], kernel_shape=[key.kernel] * 2,
                                      strides=[key.stride] * 2, pads=[p] * 4, group=groups))
        x = "conv"
        if key.residual:
            inputs.append(helper.make_tensor_value_info("residual", TensorProto.FLOAT, [b, key.c_out, oh, ow]))
            nodes.append(helper.make_node("Add", [x, "residual"], ["sum"]))
            x = "sum"
    elif key.op == "add":
        inputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [b, key.c_in, key.in_h, key.in_w]))
        nodes.append(helper.make_node("Add", [x, "other"], ["sum"]))
        x = "sum"
    elif key.op == "maxpool":
        nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[key.kernel] * 2,
                                      strides=[key.stride] * 2, pads=[key.padding] * 4))
        x = "pool"
    elif key.op == "avgpool":
        nodes.append(helper.make_node("AveragePool", [x], ["pool"], kernel_shape=[key.kernel] * 2,
                                      strides=[key.stride] * 2, pads=[key.padding] * 4))
        x = "pool"
    elif key.op == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
        x = "pool"
    elif key.op == "linear":
        w = rng.standard_normal((key.c_out, key.c_in)).astype(np.float32) * 0.05
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(key.c_out, np.float32), "b")]
        nodes.append(helper.make_node("Gemm", [x, "w", "b"], ["fc"], transB=1))
        x = "fc"
    else:
        raise ValueError(f"unknown block op {key.op!r}")

    if key.act == "relu":
        nodes.append(helper.make_node("Relu", [x], ["act"]))
        x = "act"
    elif key.act == "relu6":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", [x, "lo", "hi"], ["act"]))
        x = "act"
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    out_shape = [b, key.c_out] if key.op == "linear" else [b, key.c_out, *((1, 1) if key.op == "gap" else (oh, ow))]
    graph = helper.make_graph(nodes, "block", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgedyn")
    model.ir_version = 9
    return model


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
    rng = np.random.default_rng(0)
    b, (oh, ow) = key.batch, key.out_hw

    def padded(c: int) -> int:
        return -(-c // blk) * blk

    def value(name: str, shape: list[int]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    inits = []
    if key.op == "conv":
        c_in = key.c_in if key.c_in < blk else padded(key.c_in)  # narrow inputs are read as plain NCHW
        c_out = padded(key.c_out)
        w = rng.standard_normal((c_out, c_in, key.kernel, key.kernel)).astype(np.float32) * 0.05
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(c_out, np.float32), "b")]
        inputs = [value("input", [b, c_in, key.in_h, key.in_w])]
        names = ["input", "w", "b"]
        if key.residual:
            inputs.append(value("residual", [b, c_out, oh, ow]))
            names.append("residual")
        fused: dict[str, dict[str, Any]] = {"relu": {"activation": "Relu"},
                                            "relu6": {"activation": "Clip", "activation_params": [0.0, 6.0]}}
        act = fused.get(key.act, {})
        node = helper.make_node("Conv", names, ["output"], domain=NCHWC_DOMAIN, kernel_shape=[key.kernel] * 2,
                                strides=[key.stride] * 2, pads=[key.padding] * 4, dilations=[1, 1], group=1, **act)
        out = value("output", [b, c_out, oh, ow])
    elif key.op == "maxpool":
        if key.act != "none":
            raise ValueError(f"no NCHWc form for block {key.to_str()}")
        c = padded(key.c_in)
        inputs = [value("input", [b, c, key.in_h, key.in_w])]
        node = helper.make_node("MaxPool", ["input"], ["output"], domain=NCHWC_DOMAIN, kernel_shape=[key.kernel] * 2,
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


class _Block(nn.Module):
    def __init__(self, key: BlockKey) -> None:
        super().__init__()
        self.key = key
        self.op: nn.Module
        if key.op == "conv":
            self.op = nn.Conv2d(key.c_in, key.c_out, key.kernel, key.stride, key.padding,
                                groups=key.c_in if key.depthwise else 1)
        elif key.op == "linear":
            self.op = nn.Linear(key.c_in, key.c_out)
        elif key.op == "maxpool":
            self.op = nn.MaxPool2d(key.kernel, key.stride, key.padding)
        elif key.op == "avgpool":
            self.op = nn.AvgPool2d(key.kernel, key.stride, key.padding)
        elif key.op == "gap":
            self.op = nn.AdaptiveAvgPool2d(1)
        else:
            self.op = nn.Identity()
        self.act = {"relu": nn.ReLU(), "relu6": nn.ReLU6()}.get(key.act, nn.Identity())

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        y = self.op(x)
        if other is not None:
            y = y + other
        return self.act(y)


def block_torch(key: BlockKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A torch module for ``key`` and example inputs (with the residual / other operand)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((key.batch, key.c_in) if key.op == "linear" else (key.batch, key.c_in, key.in_h, key.in_w),
                    generator=gen)
    inputs: tuple[torch.Tensor, ...] = (x,)
    if key.residual or key.op == "add":
        oh, ow = key.out_hw
        inputs += (torch.randn(key.batch, key.c_out, oh, ow, generator=gen),)
    return _Block(key), inputs
