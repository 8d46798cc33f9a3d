"""Reading weights safely: edgedyn weights files, state dicts and common checkpoint shapes.

Everything is read with ``torch.load(..., weights_only=True)``: a pickle that holds code
is refused. A checkpoint may be a bare state dict, or a dict holding one under
``state_dict``, ``model``, ``model_state_dict`` or ``net``; ``module.`` (DDP) and
``_orig_mod.`` (``torch.compile``) prefixes are stripped. Missing and unexpected keys,
shape mismatches and non-finite tensors each fail in one line naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError

WEIGHTS_SCHEMA = "edgedyn.dynamic_weights/1"
#: Keys under which training scripts commonly keep the state dict, in the order tried.
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net")
_PREFIXES = ("module.", "_orig_mod.")
_LIST = 6  # keys named in a message before "..."


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line ArtifactError for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
        found = re.search(r"(?:unsupported global:? GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err), re.IGNORECASE)
        if found:
            raise ArtifactError(f"{path}: refused, the pickle holds Python code or objects ({found.group(1)}); "
                                "edgedyn loads weights only (weights_only=True)") from None
        if "weights only load failed" in msg.lower():
            msg = "corrupt, not written by torch.save, or holding objects weights_only loading refuses"
        raise ArtifactError(f"{path}: not a readable weights file ({msg[:160]})") from None


def load_weights_file(path: str | os.PathLike) -> dict:
    """Load an edgedyn weights file safely (``weights_only=True``); one-line ArtifactError if bad."""
    path = Path(path)
    blob = read_torch_file(path)
    if not isinstance(blob, dict):
        raise ArtifactError(f"{path}: not an edgedyn weights file")
    if blob.get("schema") != WEIGHTS_SCHEMA:
        raise ArtifactError(f"{path}: field 'schema' is {blob.get('schema')!r}, expected {WEIGHTS_SCHEMA!r}")
    for field in ("config", "state_dict"):
        if field not in blob:
            raise ArtifactError(f"{path}: field '{field}' is missing")
    return blob


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state_dict_from_checkpoint(blob: Any, where: str | os.PathLike = "weights") -> dict[str, torch.Tensor]:
    """The state dict inside ``blob`` (bare, or under a common key), prefixes stripped."""
    state = blob if _is_state_dict(blob) else None
    if state is None and isinstance(blob, Mapping):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(blob.get(key)):
                state = blob[key]
                break
    if state is None:
        keys = ", ".join(map(str, list(blob)[:_LIST])) if isinstance(blob, Mapping) else type(blob).__name__
        raise ArtifactError(f"{where}: no state dict found (a dict of tensors, or one under "
                            f"{', '.join(repr(k) for k in CHECKPOINT_KEYS)}; found {keys or 'an empty dict'})")
    out = {str(k): v for k, v in state.items()}
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _names(keys: list[str]) -> str:
    head = ", ".join(keys[:_LIST])
    return f"{head}, ... ({len(keys)} in all)" if len(keys) > _LIST else head


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """One-line ArtifactError for missing / unexpected keys, a shape mismatch or a non-finite tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise ArtifactError(f"{where}: missing keys: {_names(missing)}")
    if unexpected:
        raise ArtifactError(f"{where}: unexpected keys: {_names(unexpected)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ArtifactError(f"{where}: tensor '{k}' has shape {list(v.shape)}, the model expects "
                                f"{list(own[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ArtifactError(f"{where}: tensor '{k}' holds non-finite values (nan or inf)")

