"""Loading full-model weights into a run's network (an edgedyn weights file or a plain state dict)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..dynamic import DynamicNet
from ..errors import ArtifactError


def load_weights_into(net: DynamicNet, path: str | Path) -> None:
    """Load an edgedyn weights file, or a plain state dict of the same model (one-line errors)."""
    from ..dynamic.net import WEIGHTS_SCHEMA, load_weights_file, read_torch_file

    path = Path(path)
    blob = read_torch_file(path)
    if isinstance(blob, dict) and "schema" in blob:
        blob = load_weights_file(path)
        if blob["schema"] == WEIGHTS_SCHEMA and blob["config"].get("model") != net.name:
            raise ArtifactError(f"{path}: field 'config.model' is {blob['config'].get('model')!r}, "
                                f"expected {net.name!r}")
        net.load_weights(blob, path)
        net.bn_stats.clear()
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        net.load_weights({"state_dict": blob}, path)
    else:
        raise ArtifactError(f"{path}: neither an edgedyn weights file nor a state dict")
    net.set_subnet(net.full_spec())
