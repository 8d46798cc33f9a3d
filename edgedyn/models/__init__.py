"""Models edgedyn builds: the in-tree CIFAR ResNets, every torchvision classification model,
and a user's own factory (``path/to/file.py:function`` or ``package.module:function``)."""

from __future__ import annotations

from torch import nn

from .ref import ModelRef, builtin_names, resolve_model, torchvision_names

#: The models edgedyn has always shipped (kept for the docs; every torchvision name works).
MODELS = ("resnet20", "resnet56", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11_bn")


def get_entry(name: str | ModelRef) -> ModelRef:
    """The resolved reference (``default_input_size``, ``min_input_size``, ``build``)."""
    return resolve_model(name)


def build_model(name: str | ModelRef, num_classes: int | None = None, input_size: int | None = None) -> nn.Module:
    """Build an untrained model from a name or factory reference."""
    return resolve_model(name).build(num_classes, input_size)


__all__ = ["MODELS", "ModelRef", "build_model", "builtin_names", "get_entry", "resolve_model", "torchvision_names"]
