"""ONNX preparation for TensorRT: the int8 (Q/DQ) graph check and the fp16 conversion.

Split from :mod:`edgedyn.backends.tensorrt` (which re-exports both); neither needs the
``tensorrt`` module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_bytes
from ..errors import BackendUnavailable, EdgedynError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def one_line(text: object) -> str:
    """``text`` on one line (whitespace runs collapsed), for error messages."""
    return " ".join(str(text).split())


_QDQ_HINT = (
    "quantize with onnxruntime's quantize_static, QDQ format, QuantType.QInt8 and extra_options "
    "ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False"
)


def check_qdq(onnx_path: Path) -> None:
    """Raise unless the ONNX graph holds explicit Q/DQ nodes that TensorRT can build.

    TensorRT quantization is symmetric only (zero points all zero) and dequantizes only
    int8/fp8/int4 tensors, so an int32 bias DequantizeLinear is refused too (NvInfer.h,
    IQuantizeLayer / IDequantizeLayer at TensorRT 10.3 and 11.0).
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # protobuf raises several types for a corrupt file
        raise EdgedynError(f"{onnx_path}: not a readable ONNX model ({one_line(err)})") from None
    nodes = [node for node in model.graph.node if node.op_type in QDQ_OPS]
    if not nodes:
        raise EdgedynError(
            f"{onnx_path}: precision int8 needs explicit QuantizeLinear/DequantizeLinear nodes ({_QDQ_HINT})"
        )
    initializers = {t.name: t for t in model.graph.initializer}
    for node in nodes:
        zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is not None:
            value = numpy_helper.to_array(zero_point)
            if value.dtype != np.int8 or np.any(value != 0):
                raise EdgedynError(
                    f"{onnx_path}: {node.op_type} node '{node.name}' has zero point {value.ravel()[:4].tolist()} "
                    f"of type {value.dtype}; TensorRT needs symmetric int8 Q/DQ, zero point 0 ({_QDQ_HINT})"
                )
        source = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.data_type != onnx.TensorProto.INT8:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(source.data_type)
            raise EdgedynError(
                f"{onnx_path}: DequantizeLinear node '{node.name}' dequantizes a tensor of type {dtype}; "
                f"the int8 path expects int8 tensors only ({_QDQ_HINT})"
            )


def convert_to_fp16(src: Path, dst: Path) -> Path:
    """Write an fp16 copy of ``src`` (fp32 inputs/outputs kept) to ``dst`` for strongly typed builds."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError as err:
        raise BackendUnavailable(
            f"fp16 engines on TensorRT 11 need onnxruntime's float16 converter ({one_line(err)})"
        ) from None
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    graph = OnnxModel(model)
    graph.topological_sort()  # the converter appends its input/output Casts at the end
    return atomic_write_bytes(dst, graph.model.SerializeToString())
