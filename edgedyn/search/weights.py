"""Loading full-model weights into a run's network (an edgedyn weights file or a plain state dict).

The file is checked (:mod:`edgedyn.validate_weights`) before the network sees it: a tampered
``config``, a tensor that is not one, a NaN weight or a tensor of the wrong shape fails in one
line naming the file and the field or tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..dynamic import DynamicNet
from ..errors import ArtifactError
from ..validate_weights import check_finite_tensors, check_weights_blob
from .checkpoint import check_tensors


def load_weights_into(net: DynamicNet, path: str | Path) -> None:
    """Load an edgedyn weights file, or a plain state dict of the same model (one-line errors)."""
    from ..dynamic.net import read_torch_file

    path = Path(path)
    blob = read_torch_file(path)
    expected = net.model.state_dict()
    if isinstance(blob, dict) and "schema" in blob:
        check_weights_blob(blob, path)
        if blob["config"]["model"] != net.name:
            raise ArtifactError(f"{path}: field 'config.model' is {blob['config']['model']!r}, expected {net.name!r}")
        check_tensors(path, "state_dict", blob["state_dict"], expected)
        net.load_weights(blob, path)
        net.bn_stats.clear()
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        check_finite_tensors(blob, str(path), "state_dict")
        check_tensors(path, "state_dict", blob, expected)
        net.load_weights({"state_dict": blob}, path)
    else:
        raise ArtifactError(f"{path}: neither an edgedyn weights file nor a state dict")
    net.set_subnet(net.full_spec())
