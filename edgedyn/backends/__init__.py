"""Execution backends behind one interface (see :mod:`edgedyn.backends.base`).

Heavy or optional modules (TensorRT) are imported only when their backend is asked for.
"""

from __future__ import annotations

from .base import PRECISIONS, Backend, BackendOptions, OnnxBackend, Runner

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def get_backend(name: str, options: BackendOptions | None = None) -> Backend:
    """Instantiate a backend by name; unknown names give a one-line error."""
    from ..errors import EdgedynError

    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend as cls
    elif name == "torch":
        from .torch_backend import TorchBackend as cls
    elif name == "tensorrt":
        from .tensorrt import TensorRTBackend as cls
    else:
        raise EdgedynError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} (or roofline for profile)")
    return cls(options)


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendOptions", "OnnxBackend", "Runner", "get_backend"]
