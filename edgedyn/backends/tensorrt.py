"""TensorRT backend: ONNX -> serialized engine (``.engine``) -> runner on torch CUDA buffers.

Written strictly against the documented Python APIs of TensorRT 10 (JetPack 6 ships 10.3)
and TensorRT 11 (desktop). Every TensorRT attribute used here is listed, with its source,
in ``docs/tensorrt_api.md``. The differences between the two generations are detected in
one place, :func:`tensorrt_api`:

- precision: TRT 10 builds weakly typed networks and picks precision with
  ``BuilderFlag.FP16`` / ``BuilderFlag.INT8``; TRT 11 removed those flags, every network
  is strongly typed and precision comes from the graph (an fp16 ONNX graph, or explicit
  QuantizeLinear/DequantizeLinear nodes for int8);
- device memory: ``ICudaEngine.device_memory_size_v2`` + ``IExecutionContext.set_device_memory``
  (TRT >= 10.1 and 11) or ``device_memory_size`` + the ``device_memory`` setter (TRT 10.0).

Like Polygraphy, all ``tensorrt`` and CUDA imports are lazy, so this module imports on a
machine without them; using the backend there raises :class:`BackendUnavailable`.
This path is tested on the CPU against a strict stand-in of the ``tensorrt`` module
(``tests/standins/tensorrt_standin.py``); it is unverified on hardware until it has run
on a real GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..artifacts import atomic_write_bytes
from ..errors import BackendUnavailable, EdgedynError
from .base import PRECISIONS, OnnxBackend, Runner
from .tensorrt_onnx import QDQ_OPS, check_qdq, convert_to_fp16, one_line

__all__ = ["DEFAULT_WORKSPACE", "NEEDS", "QDQ_OPS", "TIMING_CACHE_NAME", "SharedActivationMemory", "TensorRTBackend",
           "TensorRTRunner", "TrtApi", "check_qdq", "convert_to_fp16", "cuda_available", "import_tensorrt",
           "make_logger", "require_gpu", "tensorrt_api"]

_LOG = logging.getLogger(__name__)

NEEDS = (
    "TensorRT backend needs the 'tensorrt' package (pip install edgedyn[tensorrt], "
    "or JetPack's python3-libnvinfer) and a CUDA GPU"
)
DEFAULT_WORKSPACE = 1 << 30  # bytes; override with BackendOptions.extra["workspace_bytes"]
TIMING_CACHE_NAME = "timing.cache"

# TRT 10 (weakly typed): builder flags that allow each precision. For int8 the graph holds
# explicit Q/DQ nodes; INT8 enables int8 kernels for them and FP16 lets the layers outside
# Q/DQ pairs run in fp16 (see docs/tensorrt_api.md, "Precision paths").
_WEAK_TYPING_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}


def import_tensorrt() -> ModuleType:
    """Import ``tensorrt`` or raise :class:`BackendUnavailable` with a one-line message."""
    try:
        import tensorrt
    except (ImportError, OSError) as err:
        raise BackendUnavailable(f"{NEEDS} ('import tensorrt' failed: {one_line(err)})") from None
    return tensorrt


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU (the runner's buffers and stream are torch CUDA objects)."""
    import torch

    return bool(torch.cuda.is_available())


def require_gpu() -> None:
    """Raise :class:`BackendUnavailable` unless torch sees a CUDA GPU."""
    if not cuda_available():
        raise BackendUnavailable(f"{NEEDS} (no CUDA GPU is visible to torch)")


@dataclass(frozen=True)
class TrtApi:
    """The parts of the TensorRT Python API that differ between the generations we support."""

    version: str
    major: int
    weak_typing: bool  # BuilderFlag.FP16/INT8 exist (TRT 10); removed in TRT 11
    memory_v2: bool  # device_memory_size_v2 + set_device_memory (TRT >= 10.1, 11)

    def network_flags(self, trt: ModuleType) -> int:
        """Flags for ``Builder.create_network``.

        TRT 10: 0 (explicit batch is the default and EXPLICIT_BATCH is deprecated; the network
        stays weakly typed so the builder flags can choose precision). TRT 11: STRONGLY_TYPED,
        which 11.x accepts and ignores because every network is strongly typed; 0 if a later
        release drops the deprecated flag.
        """
        if self.weak_typing:
            return 0
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    def builder_flags(self, precision: str) -> tuple[str, ...]:
        """Names of the ``BuilderFlag`` members to set for ``precision`` (none on TRT 11)."""
        return _WEAK_TYPING_FLAGS[precision] if self.weak_typing else ()

    def device_memory_size(self, engine: Any) -> int:
        """Bytes of activation memory an execution context of ``engine`` needs."""
        return int(engine.device_memory_size_v2 if self.memory_v2 else engine.device_memory_size)

    def set_device_memory(self, context: Any, address: int, size: int) -> None:
        """Give a USER_MANAGED execution context its activation memory."""
        if self.memory_v2:
            context.set_device_memory(address, size)
        else:
            context.device_memory = address


def tensorrt_api(trt: ModuleType) -> TrtApi:
    """Detect the TensorRT API generation from ``__version__`` and the features present."""
    version = str(getattr(trt, "__version__", "unknown"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise BackendUnavailable(f"{NEEDS} (unrecognised tensorrt version {version!r})") from None
    if major < 10:
        raise BackendUnavailable(f"TensorRT {version} is too old: the TensorRT backend needs TensorRT 10 or 11")
    weak_typing = hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")
    memory_v2 = hasattr(trt.ICudaEngine, "device_memory_size_v2") and hasattr(
        trt.IExecutionContext, "set_device_memory"
    )
    return TrtApi(version=version, major=major, weak_typing=weak_typing, memory_v2=memory_v2)


def make_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` that keeps errors (for one-line messages) and forwards warnings to logging."""

    class _Logger(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            levels = trt.ILogger.Severity
            if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                self.errors.append(one_line(msg))
            elif severity == levels.WARNING:
                _LOG.warning("TensorRT: %s", msg)
            else:
                _LOG.debug("TensorRT: %s", msg)

    return _Logger()


def _last_error(logger: Any) -> str:
    return logger.errors[-1] if logger.errors else "no error message from TensorRT"


class SharedActivationMemory:
    """One activation buffer for several engines that run one at a time.

    Each runner loaded with ``shared_memory=`` gets an execution context created with
    ``ExecutionContextAllocationStrategy.USER_MANAGED`` (TRT 10 and 11) and is pointed at
    this buffer, sized for the largest engine registered so far. All those runners enqueue
    on this object's single CUDA stream, so their executions never overlap.
    ``device`` is where the buffer lives ("cuda"; tests use "cpu").
    """

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self._sizes: list[int] = []
        self._contexts: list[tuple[TrtApi, Any]] = []
        self._buffer: Any = None  # torch.Tensor
        self._stream: Any = None  # torch.cuda.Stream

    @property
    def size(self) -> int:
        """Bytes needed: the maximum over the registered engines."""
        return max(self._sizes, default=0)

    @property
    def address(self) -> int | None:
        return None if self._buffer is None else int(self._buffer.data_ptr())

    @property
    def stream(self) -> Any:
        """The CUDA stream every sharing runner executes on."""
        if self._stream is None:
            import torch

            self._stream = torch.cuda.Stream()
        return self._stream

    def attach(self, api: TrtApi, engine: Any, context: Any) -> None:
        """Register ``engine``'s context; grow the buffer if needed and (re)bind every context."""
        import torch

        self._sizes.append(api.device_memory_size(engine))
        self._contexts.append((api, context))
        if self._buffer is None or self._buffer.numel() < self.size:
            if self._stream is not None:
                self._stream.synchronize()  # the old buffer may still be in use
            self._buffer = torch.empty(max(self.size, 1), dtype=torch.uint8, device=self.device)
            bind = self._contexts
        else:
            bind = self._contexts[-1:]
        for ctx_api, ctx in bind:
            ctx_api.set_device_memory(ctx, int(self._buffer.data_ptr()), int(self._buffer.numel()))


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class TensorRTRunner(Runner):
    """Runs one deserialized engine on torch CUDA buffers (after Polygraphy's TrtRunner).

    Loading (deserialize, execution context) happens in the constructor so that a bad
    engine fails at load time; CUDA buffers and the stream are made in :meth:`activate`.
    """

    def __init__(
        self,
        trt: ModuleType,
        api: TrtApi,
        path: Path,
        input_shape: tuple[int, ...],
        shared_memory: SharedActivationMemory | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._api = api
        self._shared = shared_memory
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise EdgedynError(f"{self.path}: file not found") from None
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EdgedynError(
                f"{self.path}: engine could not be deserialized (built for another TensorRT version or GPU?)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EdgedynError(f"{self.path}: expected one input and one output tensor, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        if self.input_shape != tuple(input_shape):
            raise EdgedynError(
                f"{self.path}: engine input shape {self.input_shape} differs from the requested {tuple(input_shape)}"
            )
        self.output_shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.output_name))
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        if shared_memory is None:
            self.context = self.engine.create_execution_context()
        else:
            self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EdgedynError(f"{self.path}: could not create an execution context ({_last_error(self._logger)})")
        if shared_memory is not None:
            shared_memory.attach(api, self.engine, self.context)
        self._stream: Any = None
        self._input: Any = None
        self._output: Any = None

    @property
    def device_memory_size(self) -> int:
        """Activation memory (bytes) one execution context of this engine needs."""
        return self._api.device_memory_size(self.engine)

    def _activate(self) -> None:
        import torch

        self._stream = self._shared.stream if self._shared is not None else torch.cuda.Stream()
        self._input = torch.empty(self.input_shape, dtype=_torch_dtype(self.input_dtype), device="cuda")
        self._output = torch.empty(self.output_shape, dtype=_torch_dtype(self.output_dtype), device="cuda")
        self.context.set_tensor_address(self.input_name, self._input.data_ptr())
        self.context.set_tensor_address(self.output_name, self._output.data_ptr())

    def _deactivate(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._stream = self._input = self._output = None

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise EdgedynError(f"{self.path}: TensorRT execution failed ({_last_error(self._logger)})")

    def _load_input(self, x: np.ndarray) -> None:
        import torch

        with torch.cuda.stream(self._stream):
            self._input.copy_(torch.from_numpy(np.ascontiguousarray(x)))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        self._load_input(x)
        self._execute()
        with torch.cuda.stream(self._stream):
            out = self._output.to("cpu")
        self._stream.synchronize()
        return out.numpy()

    def time(self, n_warmup: int = 10, n_iters: int = 50, x: np.ndarray | None = None) -> np.ndarray:
        """GPU latency per execution in ms, from CUDA events on the runner's stream (no copies)."""
        import torch

        if x is None:
            x = np.random.default_rng(0).standard_normal(self.input_shape).astype(self.input_dtype)
        self.check_input(x)
        self.activate()
        self._load_input(x)
        for _ in range(n_warmup):
            self._execute()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        out = np.empty(n_iters)
        for i in range(n_iters):
            start.record(self._stream)
            self._execute()
            end.record(self._stream)
            end.synchronize()
            out[i] = start.elapsed_time(end)
        return out


class TensorRTBackend(OnnxBackend):
    """ONNX -> TensorRT engine, for TensorRT 10 (JetPack 6) and TensorRT 11.

    ``BackendOptions.extra`` keys: ``timing_cache`` (path of the timing cache shared by
    builds; default ``<engine dir>/timing.cache``), ``workspace_bytes`` (builder workspace
    memory-pool limit; default 1 GiB).
    """

    name = "tensorrt"
    artifact_suffix = ".engine"
    default_subsample = 2  # an engine build per block: measure every other width, interpolate the rest
    artifacts_bound_to_version = True  # an engine is deserialised only by the TensorRT that built it

    @classmethod
    def available(cls) -> bool:
        try:
            import_tensorrt()
        except BackendUnavailable:
            return False
        return cuda_available()

    def version(self) -> str:
        return str(import_tensorrt().__version__)

    def _tensorrt(self) -> tuple[ModuleType, TrtApi]:
        trt = import_tensorrt()
        require_gpu()
        return trt, tensorrt_api(trt)

    def check_ready(self) -> None:
        self._tensorrt()  # the module and a GPU

    def from_onnx(self, onnx_path: Path, example: Any) -> TensorRTRunner:
        engine = self.build(onnx_path, Path(onnx_path).with_name(f"model{self.artifact_suffix}"))
        return self.load(engine, tuple(example.shape))

    def timing_cache_path(self, out_path: Path) -> Path:
        """Where the timing cache shared by builds lives."""
        custom = self.options.extra.get("timing_cache")
        return Path(custom) if custom else Path(out_path).parent / TIMING_CACHE_NAME

    def build(self, onnx_path: Path, out_path: Path) -> Path:
        """Build ``onnx_path`` at ``self.options.precision`` and write the engine atomically."""
        trt, api = self._tensorrt()
        onnx_path, out_path = Path(onnx_path), Path(out_path)
        precision = self.options.precision
        if precision not in PRECISIONS:
            raise EdgedynError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
        if not onnx_path.is_file():
            raise EdgedynError(f"{onnx_path}: file not found")
        source = onnx_path
        if precision == "int8":
            check_qdq(onnx_path)
        elif precision == "fp16" and not api.weak_typing:
            source = convert_to_fp16(onnx_path, out_path.with_name(f"{out_path.stem}.fp16.onnx"))

        logger = make_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(api.network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            detail = "; ".join(_parser_error(e) for e in errors) or _last_error(logger)
            raise EdgedynError(f"{source}: TensorRT {api.version} could not parse the ONNX model: {detail}")

        config = builder.create_builder_config()
        workspace = int(self.options.extra.get("workspace_bytes", DEFAULT_WORKSPACE))
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        for flag in api.builder_flags(precision):
            config.set_flag(getattr(trt.BuilderFlag, flag))
        cache_path = self.timing_cache_path(out_path)
        _load_timing_cache(config, cache_path)

        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise EdgedynError(
                f"{onnx_path}: TensorRT {api.version} could not build a {precision} engine: {_last_error(logger)}"
            )
        _save_timing_cache(config, cache_path)
        return atomic_write_bytes(out_path, bytes(blob))

    def load(
        self,
        artifact: Path,
        input_shape: tuple[int, ...],
        shared_memory: SharedActivationMemory | None = None,
    ) -> TensorRTRunner:
        """Deserialize ``artifact``; with ``shared_memory`` its activations live in that shared buffer."""
        trt, api = self._tensorrt()
        return TensorRTRunner(trt, api, Path(artifact), tuple(input_shape), shared_memory)

    def load_for_serving(self, artifacts: Sequence[Path], input_shape: tuple[int, ...]) -> tuple[list[Runner], Any]:
        """Every engine on one :class:`SharedActivationMemory` (on ``extra["memory_device"]``, default cuda)."""
        import torch

        shared = SharedActivationMemory(device=str(self.options.extra.get("memory_device", "cuda")))
        runners: list[Runner] = [self.load(Path(a), input_shape, shared_memory=shared) for a in artifacts]
        for r in runners if torch.cuda.is_available() else []:  # activated where CUDA is
            r.activate()
        return runners, shared


def _parser_error(error: Any) -> str:
    op = error.node_operator()
    where = f"{op} node '{error.node_name()}': " if op else ""
    return one_line(f"{where}{error.desc()}")


def _load_timing_cache(config: Any, path: Path) -> None:
    """Attach the shared timing cache (empty if absent or made on another GPU/TensorRT)."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    _LOG.warning("%s: timing cache does not match this GPU/TensorRT; starting an empty one", path)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write_bytes(path, bytes(cache.serialize()))
