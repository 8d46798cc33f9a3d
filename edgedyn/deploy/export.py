"""The export stage: a sub-net's fp32 PyTorch model -> ONNX, checked against PyTorch on ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .check import max_abs_diff, ort_runner, run_each


@dataclass
class Exported:
    """An exported sub-net: its ONNX file, PyTorch's outputs on the check samples and the
    ONNX's max abs difference from them."""

    path: Path
    reference: np.ndarray
    diff: float


def export_subnet(model: torch.nn.Module, shape: tuple[int, ...], path: Path, check: np.ndarray,
                  threads: int | None, label: str) -> Exported:
    """Export ``model`` to ``path`` and check it against PyTorch on ``check`` (one-line error
    naming ``label`` beyond the fp32 tolerance)."""
    from ..export import export_onnx  # looked up per call: tests substitute the exporter

    onnx_path = export_onnx(model, torch.zeros(shape), path)
    with torch.no_grad():
        ref = model(torch.from_numpy(check)).numpy()
    diff = max_abs_diff(run_each(ort_runner(onnx_path, threads), check), ref, f"{label}: exported ONNX")
    return Exported(Path(onnx_path), ref, diff)
