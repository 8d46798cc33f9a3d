"""Execution backends behind one interface (see :mod:`edgedyn.backends.base`), by name
(:mod:`edgedyn.backends.registry`).

Heavy or optional modules (TensorRT) are imported only when their backend is asked for.
"""

from __future__ import annotations

from .base import PRECISIONS, Backend, BackendOptions, OnnxBackend, Runner
from .registry import DEVICE_DEFAULTS, backend_class, backend_names, get_backend, register_backend

#: The backends that run models (deploy and serve); ``roofline`` only estimates (profile).
BACKENDS = ("onnxruntime", "torch", "tensorrt")

__all__ = ["BACKENDS", "DEVICE_DEFAULTS", "PRECISIONS", "Backend", "BackendOptions", "OnnxBackend", "Runner",
           "backend_class", "backend_names", "get_backend", "register_backend"]
