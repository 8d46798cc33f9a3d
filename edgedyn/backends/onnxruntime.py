"""ONNX Runtime backend (CPU, or CUDA where onnxruntime-gpu is installed)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailable
from .base import BackendOptions, OnnxBackend, Runner

if TYPE_CHECKING:
    from ..blocks import BlockKey, Layout


def default_threads() -> int:
    """Physical cores when known (pinned intra-op threads), else logical CPUs."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def session_options(threads: int | None):
    """Session settings shared by profiling and deployment (so the table predicts deploy).

    Intra-op threads are pinned and do not spin-wait: edgedyn keeps several sessions in
    one process (one per sub-net; many blocks while profiling), and threads spinning after
    one session's run would steal the cores from the next session's run. Measured on this
    project's 2-core CPU with four resnet20 sessions taking turns: spinning gave 4-8 ms
    p90s on a 0.4 ms network. Sleeping threads have their own cost, a wake-up per
    parallel operator, which makes small networks slower and noisier on 2 threads than
    on 1; the profiler therefore picks the thread count per model (``profile/threads.py``).
    """
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def _providers(device: str) -> list[str]:
    import onnxruntime

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise BackendUnavailable(f"onnxruntime has no CUDA provider here (device {device!r}); "
                                 "install onnxruntime-gpu or use --device cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
       "tensor(uint8)": np.uint8, "tensor(int64)": np.int64}


class OrtRunner(Runner):
    """An ONNX Runtime session. Extra graph inputs (e.g. a residual) get fixed random feeds."""

    def __init__(self, model: str | bytes, options: BackendOptions, name: str = "model") -> None:
        super().__init__()
        import onnxruntime

        self.name = name
        try:
            self.session = onnxruntime.InferenceSession(model, session_options(options.threads),
                                                providers=_providers(options.device))
        except Exception as err:
            first = str(err).strip().splitlines()[0][:200]
            raise BackendUnavailable(f"{name}: onnxruntime cannot load the model ({first})") from None
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_shape = tuple(int(d) for d in inputs[0].shape)
        self.input_dtype = np.dtype(_NP.get(inputs[0].type, np.float32))
        rng = np.random.default_rng(0)
        self._extra = {i.name: rng.standard_normal([int(d) for d in i.shape]).astype(_NP.get(i.type, np.float32))
                       for i in inputs[1:]}
        self._x = rng.standard_normal(self.input_shape).astype(self.input_dtype)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x, **self._extra})[0]

    def time(self, n_warmup: int = 10, n_iters: int = 50, x: np.ndarray | None = None) -> np.ndarray:
        feeds = {self.input_name: self._x if x is None else x, **self._extra}
        run = self.session.run
        for _ in range(n_warmup):
            run(None, feeds)
        out = np.empty(n_iters)
        for i in range(n_iters):
            t0 = time.perf_counter()
            run(None, feeds)
            out[i] = (time.perf_counter() - t0) * 1e3
        return out

    def timed_call(self) -> float:
        """One timed call on the stored input (ms); used by interleaved measurement."""
        feeds = {self.input_name: self._x, **self._extra}
        t0 = time.perf_counter()
        self.session.run(None, feeds)
        return (time.perf_counter() - t0) * 1e3


_NCHWC_BLOCK: dict[int | None, int] = {}


def nchwc_block(threads: int | None = None) -> int:
    """The channel block of ONNX Runtime's NCHWc convolutions on this CPU (0: it uses none).

    Asked of ONNX Runtime itself: a 3 -> 1 channel conv is optimized, and the padded
    output channels of the NCHWc conv it becomes are the block (16 with AVX-512, 8 with
    AVX2; ARM CPUs get no NCHWc transform).
    """
    if threads in _NCHWC_BLOCK:
        return _NCHWC_BLOCK[threads]
    import tempfile

    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    block = 0
    with tempfile.TemporaryDirectory(prefix="edgedyn-nchwc-") as tmp:
        so = session_options(threads)
        so.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
        onnxruntime.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
        inits = {i.name: list(i.dims) for i in opt.graph.initializer}
        for node in opt.graph.node:
            if node.domain == "com.microsoft.nchwc" and node.op_type == "Conv" and node.input[1] in inits:
                block = int(inits[node.input[1]][0])
    _NCHWC_BLOCK[threads] = block
    return block


class OnnxRuntimeBackend(OnnxBackend):
    name = "onnxruntime"
    artifact_suffix = ".onnx"
    serving_device = "cpu"  # the CPU execution provider, whatever device the bundle was deployed for

    @classmethod
    def available(cls) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def from_onnx(self, onnx_path: Path, example: Any) -> OrtRunner:
        return OrtRunner(str(onnx_path), self.options, name=str(onnx_path))

    def from_onnx_model(self, model: Any, example: Any, workdir: Path) -> OrtRunner:
        """The model goes from memory into a session: no file (a resnet18@224 profile wrote
        4 GB of sub-net files for 20 s)."""
        return OrtRunner(model.SerializeToString(), self.options, name=str(Path(workdir) / "model.onnx"))

    def default_threads(self) -> int | None:
        """On the CPU, the module's :func:`default_threads` (the profiler then picks the count
        per model by timing); on CUDA none."""
        return default_threads() if self.options.device == "cpu" else None  # the module function

    def layout(self) -> Layout:
        """NCHWc with the block size ONNX Runtime picks on this CPU (plain where it blocks nothing)."""
        from ..blocks.layout import PLAIN, Layout

        if self.options.device != "cpu":
            return PLAIN
        block = nchwc_block(self.options.threads)
        return Layout("nchwc", block) if block > 1 else PLAIN

    def overhead_runner(self) -> OrtRunner:
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "empty",
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1])],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        return OrtRunner(model.SerializeToString(), self.options, name="call overhead")

    def block_runner(self, key: BlockKey, workdir: Path | None = None) -> OrtRunner:
        """The block's ONNX goes straight from memory into a session (no files)."""
        from ..blocks.models import block_onnx

        return OrtRunner(block_onnx(key).SerializeToString(), self.options, name=key.to_str())

    def build(self, onnx_path: Path, out_path: Path) -> Path:
        """Save ONNX Runtime's fully optimized graph for this device as the deployable model."""
        import onnxruntime

        from ..artifacts import atomic_write_bytes

        out_path = Path(out_path)
        tmp = out_path.with_name(out_path.name + ".opt.tmp")
        so = session_options(self.options.threads)
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp)
        try:
            onnxruntime.InferenceSession(str(onnx_path), so, providers=_providers(self.options.device))
            atomic_write_bytes(out_path, tmp.read_bytes())
        finally:
            tmp.unlink(missing_ok=True)
        return out_path

    def load(self, artifact: Path, input_shape: tuple[int, ...] | None = None) -> OrtRunner:
        artifact = Path(artifact)
        if not artifact.is_file():
            raise BackendUnavailable(f"{artifact}: model file not found")
        runner = OrtRunner(str(artifact), self.options, name=str(artifact))
        if input_shape is not None and tuple(input_shape) != runner.input_shape:
            raise BackendUnavailable(f"{artifact}: input shape {runner.input_shape} != expected {tuple(input_shape)}")
        return runner

    def load_bytes(self, data: bytes, input_shape: tuple[int, ...] | None, name: str) -> OrtRunner:
        """A session built from a model's bytes (the runtime passes the bytes it verified; no
        path is reopened). ``name`` names the model in messages."""
        runner = OrtRunner(bytes(data), self.options, name=name)
        if input_shape is not None and tuple(input_shape) != runner.input_shape:
            raise BackendUnavailable(f"{name}: input shape {runner.input_shape} != expected {tuple(input_shape)}")
        return runner
