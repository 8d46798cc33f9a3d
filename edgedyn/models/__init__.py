"""Model registry: the architectures edgedyn supports, built by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ModelError
from .cifar_resnet import resnet20, resnet56


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[[int], nn.Module]
    default_input_size: int
    min_input_size: int
    default_num_classes: int


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    return build


MODELS: dict[str, ModelEntry] = {
    "resnet20": ModelEntry(resnet20, 32, 8, 10),
    "resnet56": ModelEntry(resnet56, 32, 8, 10),
    "resnet18": ModelEntry(_torchvision("resnet18"), 224, 32, 1000),
    "resnet34": ModelEntry(_torchvision("resnet34"), 224, 32, 1000),
    "resnet50": ModelEntry(_torchvision("resnet50"), 224, 32, 1000),
    "mobilenet_v2": ModelEntry(_torchvision("mobilenet_v2"), 224, 32, 1000),
    "vgg11_bn": ModelEntry(_torchvision("vgg11_bn"), 224, 32, 1000),
}


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; supported: {', '.join(MODELS)}") from None


def build_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build an untrained supported model by name."""
    entry = get_entry(name)
    return entry.build(num_classes if num_classes is not None else entry.default_num_classes)
