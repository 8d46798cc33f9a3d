"""A weights file (``weights.pt``, what ``DynamicNet.save`` writes) checked before any loader uses it.

The network is rebuilt from the file's ``config`` (model, input size, classes, channel grid),
its tensors are copied in and its per-sub-net BatchNorm statistics kept; a tampered file (a
missing key, a string ``input_size``, a list where tensors belong, a NaN weight) must fail
in one :class:`~edgedyn.errors.ArtifactError` line naming the file and the field or tensor,
never deep inside the model builder. :func:`check_weights_blob` checks what
``torch.load(weights_only=True)`` returned; :func:`load_net` checks a file and rebuilds its
network (what a reader of ``weights.pt`` calls instead of ``DynamicNet.load``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .errors import ArtifactError, EdgedynError

if TYPE_CHECKING:
    from .dynamic import DynamicNet

__all__ = ["check_finite_tensors", "check_weights_blob", "check_weights_config", "load_net"]

# (field, may be None, least value, greatest value): the command line's bounds
_CONFIG_FIELDS: tuple[tuple[str, bool, int, int], ...] = (
    ("input_size", False, 1, 2048),
    ("num_classes", False, 1, 100_000),
    ("channel_groups", False, 1, 4096),
    ("group_size", True, 1, 4096),
    ("min_groups", False, 1, 4096),
)


def check_weights_config(config: Any, where: str) -> dict[str, Any]:
    """A weights file's ``config``: the model's name and its integer options within bounds."""
    from .models import resolve_model

    if not isinstance(config, Mapping):
        raise ArtifactError(f"{where}: field 'config' must be an object, got {type(config).__name__}")
    model = config.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 4096:
        raise ArtifactError(f"{where}: field 'config.model' is {repr(model)[:60]}, not a model reference")
    try:
        resolve_model(model)  # a name, file.py:function or module:function that still resolves
    except EdgedynError as err:
        raise ArtifactError(f"{where}: field 'config.model' does not resolve ({err})") from None
    for name, optional, low, high in _CONFIG_FIELDS:
        if name not in config:
            raise ArtifactError(f"{where}: field 'config.{name}' is missing")
        value = config[name]
        if value is None and optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArtifactError(f"{where}: field 'config.{name}' must be an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise ArtifactError(f"{where}: field 'config.{name}' is {value}, must be in [{low}, {high}]")
    block = config.get("grid_block")  # optional: only a block-aware grid records it
    if block is not None and (not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= 4096):
        raise ArtifactError(f"{where}: field 'config.grid_block' is {repr(block)[:40]}, must be an integer in [1, 4096]")
    return dict(config)


def check_finite_tensors(tensors: Mapping[Any, Any], where: str, field: str) -> None:
    """Every value of ``tensors`` is a tensor, and a floating one holds no NaN or infinity."""
    for key, value in tensors.items():
        name = f"{field}.{str(key)[:80]}"
        if not isinstance(value, torch.Tensor):
            raise ArtifactError(f"{where}: '{name}' is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtifactError(f"{where}: tensor '{name}' holds NaN or infinite values")


def _check_bn_stats(stats: Any, where: str) -> None:
    if not isinstance(stats, Mapping):
        raise ArtifactError(f"{where}: field 'bn_stats' must be an object, got {type(stats).__name__}")
    for spec, layers in stats.items():
        name = f"bn_stats.{str(spec)[:60]}"
        if not isinstance(spec, str) or not isinstance(layers, Mapping):
            raise ArtifactError(f"{where}: field '{name}' must map a sub-net to its layers' statistics")
        for layer, pair in layers.items():
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ArtifactError(f"{where}: field '{name}.{str(layer)[:60]}' must be [mean, var]")
            check_finite_tensors({f"{layer}.mean": pair[0], f"{layer}.var": pair[1]}, where, name)


def check_weights_blob(blob: Any, where: str | os.PathLike) -> dict[str, Any]:
    """What ``torch.load`` returned for an edgedyn weights file, checked: its schema, its
    ``config``, ``state_dict`` (finite tensors), ``bn_stats`` and ``signature``."""
    from .dynamic.net import WEIGHTS_SCHEMA

    where = os.fspath(where)
    if not isinstance(blob, dict):
        raise ArtifactError(f"{where}: not an edgedyn weights file (a {type(blob).__name__})")
    if blob.get("schema") != WEIGHTS_SCHEMA:
        raise ArtifactError(f"{where}: field 'schema' is {str(blob.get('schema'))[:60]!r}, expected {WEIGHTS_SCHEMA!r}")
    check_weights_config(blob.get("config"), where)
    state = blob.get("state_dict")
    if not isinstance(state, Mapping) or not state:
        raise ArtifactError(f"{where}: field 'state_dict' must be a non-empty object of tensors")
    check_finite_tensors(state, where, "state_dict")
    _check_bn_stats(blob.get("bn_stats", {}), where)
    signature = blob.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise ArtifactError(f"{where}: field 'signature' must be a string, got {type(signature).__name__}")
    return blob


def load_net(path: str | os.PathLike) -> DynamicNet:
    """``DynamicNet.load(path)`` after :func:`check_weights_blob`: a tampered file fails in one line."""
    from .dynamic import DynamicNet
    from .dynamic.net import read_torch_file
    from .errors import EdgedynError

    check_weights_blob(read_torch_file(path), path)
    try:
        return DynamicNet.load(path)
    except EdgedynError as err:
        if isinstance(err, ArtifactError):
            raise
        raise ArtifactError(f"{os.fspath(path)}: field 'config' does not build a network ({err})") from None
