"""Backends by name: a name maps to a lazily imported class (after nn-Meter's registry).

``"onnxruntime": "edgedyn.backends.onnxruntime:OnnxRuntimeBackend"`` names the module and
the class; the module is imported the first time the backend is asked for, so heavy or
optional libraries (TensorRT) stay unimported until then. :func:`register_backend` adds
one (a ``"module:Class"`` target, or the class itself); :func:`get_backend` instantiates
one; an unknown name is a one-line :class:`~edgedyn.errors.EdgedynError` listing the known.
"""

from __future__ import annotations

import importlib

from ..errors import EdgedynError
from .base import Backend, BackendOptions

_TARGETS: dict[str, str | type[Backend]] = {
    "onnxruntime": "edgedyn.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "edgedyn.backends.torch_backend:TorchBackend",
    "tensorrt": "edgedyn.backends.tensorrt:TensorRTBackend",
    "roofline": "edgedyn.backends.roofline:RooflineBackend",
}

#: The backend and precision each device kind gets when none is asked for.
DEVICE_DEFAULTS: dict[str, tuple[str, str]] = {
    "cpu": ("onnxruntime", "fp32"), "cuda": ("tensorrt", "fp16"), "jetson": ("tensorrt", "fp16")}


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Make ``name`` a backend: ``target`` is ``"package.module:ClassName"`` (imported when
    the backend is first asked for) or a :class:`~edgedyn.backends.base.Backend` subclass.
    Registering a known name again replaces it."""
    if not isinstance(name, str) or not name:
        raise EdgedynError(f"a backend name must be a non-empty string, got {name!r}")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise EdgedynError(f"backend {name!r}: target {target!r} must read 'package.module:ClassName'")
    _TARGETS[name] = target


def backend_names() -> tuple[str, ...]:
    """The registered backend names, sorted."""
    return tuple(sorted(_TARGETS))


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name``, its module imported now if it was not yet."""
    target = _TARGETS.get(name)
    if target is None:
        raise EdgedynError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise EdgedynError(f"backend {name!r}: cannot import {target} ({type(err).__name__}: {err})") from None
    else:
        cls = target
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise EdgedynError(f"backend {name!r}: {target!r} is not a Backend class")
    return cls


def get_backend(name: str, options: BackendOptions | None = None) -> Backend:
    """Instantiate the backend registered as ``name``; unknown names give a one-line error."""
    return backend_class(name)(options)

