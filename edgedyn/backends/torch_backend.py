"""PyTorch backend (eager), CPU or CUDA. Profiles and measures; it does not deploy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BackendUnavailable
from .base import Backend, Runner

if TYPE_CHECKING:
    from ..blocks import BlockKey


class TorchRunner(Runner):
    def __init__(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], device: str,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.device = torch.device("cuda" if device in ("cuda", "jetson") else "cpu")
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "int8":
            raise BackendUnavailable("torch backend measures fp32/fp16 only; use onnxruntime or tensorrt for int8")
        self.module = module.eval().to(self.device, self.dtype)
        self.inputs = tuple(t.to(self.device, self.dtype) for t in inputs)
        self.input_shape = tuple(inputs[0].shape)
        self.input_dtype = np.dtype(np.float16 if self.dtype == torch.float16 else np.float32)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x, *self.inputs[1:])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out = self._call(torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()

    def timed_call(self) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._call(self.inputs[0])
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        self._call(self.inputs[0])
        return (time.perf_counter() - t0) * 1e3

    def time(self, n_warmup: int = 10, n_iters: int = 50, x: np.ndarray | None = None) -> np.ndarray:
        for _ in range(n_warmup):
            self.timed_call()
        return np.array([self.timed_call() for _ in range(n_iters)])


class TorchBackend(Backend):
    name = "torch"
    artifact_suffix = ".pt"

    @classmethod
    def available(cls) -> bool:
        return True

    def version(self) -> str:
        return torch.__version__ + (f"+cuda{torch.version.cuda}" if torch.version.cuda else "")

    def _check_device(self) -> None:
        if self.options.device in ("cuda", "jetson") and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch backend: device {self.options.device!r} needs CUDA, which is not available")

    def prepare(self, module: Any, example: Any, workdir: Path | None = None) -> TorchRunner:
        self._check_device()
        if self.options.threads and self.options.device == "cpu":
            torch.set_num_threads(self.options.threads)
        inputs = example if isinstance(example, tuple) else (example,)
        return TorchRunner(module, inputs, self.options.device, self.options.precision)

    def block_runner(self, key: BlockKey, workdir: Path | None = None) -> TorchRunner:
        from ..blocks.models import block_torch

        module, inputs = block_torch(key)
        return self.prepare(module, inputs)

    def build(self, onnx_path: Path, out_path: Path) -> Path:
        raise BackendUnavailable("the torch backend profiles and measures only; deploy with onnxruntime or tensorrt")

    def load(self, artifact: Path, input_shape: tuple[int, ...]) -> Runner:
        raise BackendUnavailable("the torch backend profiles and measures only; deploy with onnxruntime or tensorrt")
