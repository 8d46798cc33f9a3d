"""Which way should a grouped conv narrow? Timed on ONNX Runtime (CPU, 1 thread).

A ResNeXt-style 3x3 grouped conv (``channels`` in and out, ``groups`` groups) at a reduced
width ``w`` can either keep the group count and narrow every group (``w / groups`` channels
per group) or keep each group's width and drop whole groups (``w / (channels / groups)``
groups). Both have the same MACs. This times both, interleaved, and prints the medians.

    nice env OMP_NUM_THREADS=1 .venv/bin/python tools/grouped_conv_timing.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [(256, 32, 14), (128, 32, 28), (512, 32, 7), (224, 28, 14)]  # (channels, groups, spatial size) / RegNet


def _session(conv: nn.Module, channels: int, hw: int, path: Path):
    import onnxruntime as ort

    from edgedyn.export import export_onnx

    export_onnx(conv, torch.zeros(1, channels, hw, hw), path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time(session, x: np.ndarray, repeat: int) -> float:
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for _ in range(repeat):
        session.run(None, {name: x})
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    print(f"{'C':>4} {'G':>3} {'HW':>3} {'width':>5}  {'fixed groups (ms)':>18} {'fewer groups (ms)':>18}  ratio")
    with tempfile.TemporaryDirectory() as tmp:
        for channels, groups, hw in CASES:
            per_group = channels // groups
            for frac in (2, 4):
                w = channels // frac
                fixed = nn.Conv2d(w, w, 3, padding=1, groups=groups, bias=False)  # w / groups channels each
                fewer = nn.Conv2d(w, w, 3, padding=1, groups=w // per_group, bias=False)  # whole groups dropped
                a = _session(fixed, w, hw, Path(tmp) / "a.onnx")
                b = _session(fewer, w, hw, Path(tmp) / "b.onnx")
                x = np.random.default_rng(0).standard_normal((1, w, hw, hw)).astype(np.float32)
                ta, tb = [], []
                for _ in range(15):  # interleaved, so that load on the machine hits both alike
                    ta.append(_time(a, x, 20))
                    tb.append(_time(b, x, 20))
                ma, mb = statistics.median(ta), statistics.median(tb)
                print(f"{channels:>4} {groups:>3} {hw:>3} {w:>5}  {ma:>18.4f} {mb:>18.4f}  {ma / mb:.2f}")


if __name__ == "__main__":
    main()
