"""TensorRT backend: build/load logic against strict TensorRT 10.3 and 11.0 stand-ins (CPU),
plus one real build-and-run test for machines with TensorRT and a CUDA GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import edgedyn.backends.tensorrt as trt_backend
from edgedyn.backends.base import BackendOptions
from edgedyn.backends.tensorrt import (
    NEEDS,
    SharedActivationMemory,
    TensorRTBackend,
    TensorRTRunner,
    TrtApi,
    tensorrt_api,
)
from edgedyn.errors import BackendUnavailable, EdgedynError
from edgedyn.export import export_onnx, run_onnxruntime

try:  # tests/ is on sys.path when it has no __init__.py, the repository root when it has one
    from standins.tensorrt_standin import calls, engine_info, make_standin
except ImportError:  # pragma: no cover
    from tests.standins.tensorrt_standin import calls, engine_info, make_standin

TRT10, TRT11 = "10.3.0", "11.0.0"  # JetPack 6.2's TensorRT; the first TensorRT 11 release
SHAPE = (1, 3, 16, 16)


def _conv_net(width: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU())
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(_conv_net(), torch.randn(SHAPE), tmp_path_factory.mktemp("onnx") / "conv.onnx")


def _quantize(src: Path, dst: Path, **extra_options: bool) -> Path:
    """Explicit Q/DQ int8 with onnxruntime's static quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, extra_options=extra_options)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(dst)).graph.node}
    return dst


@pytest.fixture(scope="module")
def qdq_onnx(conv_onnx: Path) -> Path:
    """Symmetric int8 Q/DQ with float bias: what TensorRT builds."""
    return _quantize(conv_onnx, conv_onnx.with_name("conv.qdq.onnx"),
                     ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False)


def _install(monkeypatch: pytest.MonkeyPatch, version: str, cuda: bool = True):
    trt = make_standin(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "cuda_available", lambda: cuda)  # torch itself stays CPU-only
    return trt


def _backend(precision: str = "fp32", **extra) -> TensorRTBackend:
    return TensorRTBackend(BackendOptions(device="cuda", precision=precision, extra=extra))


# -- no TensorRT, no GPU ---------------------------------------------------------------
def test_module_imports_without_tensorrt() -> None:
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"  # makes any 'import tensorrt' fail
        "import edgedyn.backends.tensorrt as m\n"
        "assert sys.modules['tensorrt'] is None\n"
        "print(m.TensorRTBackend.available(), m.TensorRTBackend.name, m.TensorRTBackend.artifact_suffix)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "tensorrt", ".engine"]


def test_unavailable_without_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert TensorRTBackend.available() is False
    backend = _backend()
    for call in (backend.version, lambda: backend.load(tmp_path / "m.engine", SHAPE),
                 lambda: backend.build(tmp_path / "m.onnx", tmp_path / "m.engine")):
        with pytest.raises(BackendUnavailable) as err:
            call()
        assert str(err.value).startswith(NEEDS) and "\n" not in str(err.value)


def test_unavailable_without_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _install(monkeypatch, TRT11, cuda=False)
    assert TensorRTBackend.available() is False
    assert _backend().version() == TRT11  # the version needs no GPU
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        _backend().load(tmp_path / "m.engine", SHAPE)


# -- API generation ---------------------------------------------------------------------
def test_api_generation_detected_from_version_and_features() -> None:
    api10, api11 = tensorrt_api(make_standin(TRT10)), tensorrt_api(make_standin(TRT11))
    assert (api10.major, api10.weak_typing, api10.memory_v2) == (10, True, True)
    assert (api11.major, api11.weak_typing, api11.memory_v2) == (11, False, True)
    assert api10.builder_flags("int8") == ("INT8", "FP16") and api11.builder_flags("int8") == ()
    # STRONGLY_TYPED is bit 1 in TRT 10.3 and bit 0 in TRT 11.0
    assert api10.network_flags(make_standin(TRT10)) == 0
    assert api11.network_flags(make_standin(TRT11)) == 1
    old = make_standin(TRT10)
    old.__version__ = "8.6.1"
    with pytest.raises(BackendUnavailable, match="8.6.1 is too old"):
        tensorrt_api(old)


def test_standin_is_strict() -> None:
    trt11 = make_standin(TRT11)
    removed = [
        lambda: trt11.BuilderFlag.FP16,
        lambda: trt11.BuilderFlag.INT8,
        lambda: trt11.NetworkDefinitionCreationFlag.EXPLICIT_BATCH,
        lambda: trt11.IInt8EntropyCalibrator2,
        lambda: trt11.IBuilderConfig.int8_calibrator,
        lambda: trt11.ICudaEngine.device_memory_size,
        lambda: trt11.ICudaEngine.create_execution_context_without_device_memory,
    ]
    for access in removed:
        with pytest.raises(AttributeError):
            access()
    trt10 = make_standin(TRT10)
    assert trt10.BuilderFlag.FP16 == 0 and trt10.IInt8EntropyCalibrator2 is not None
    config = trt11.Builder(trt11.Logger()).create_builder_config()
    with pytest.raises(AttributeError):  # TensorRT 8's workspace setting is gone; slots refuse it
        config.max_workspace_size = 1 << 20
    with pytest.raises(AttributeError):  # a TensorRT 10-style fp16 build fails on the 11 stand-in
        config.set_flag(trt11.BuilderFlag.FP16)


# -- build --------------------------------------------------------------------------------
BUILD_CASES = [
    # version, precision, create_network flags, builder flags, strongly typed
    (TRT10, "fp32", 0, [], False),
    (TRT10, "fp16", 0, ["FP16"], False),
    (TRT10, "int8", 0, ["INT8", "FP16"], False),
    (TRT11, "fp32", 1, [], True),
    (TRT11, "fp16", 1, [], True),
    (TRT11, "int8", 1, [], True),
]


@pytest.mark.parametrize("version,precision,net_flags,flags,strongly_typed", BUILD_CASES)
def test_build_sets_precision_the_documented_way(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path, qdq_onnx: Path,
    version: str, precision: str, net_flags: int, flags: list[str], strongly_typed: bool,
) -> None:
    trt = _install(monkeypatch, version)
    source = qdq_onnx if precision == "int8" else conv_onnx
    engine = _backend(precision, workspace_bytes=256 << 20).build(source, tmp_path / "m.engine")

    log = calls(trt)
    assert log.network_flags == [net_flags]
    assert log.builder_flags == [flags]
    assert log.memory_pool_limits == [("WORKSPACE", 256 << 20)]
    assert log.deprecated == []
    info = engine_info(engine.read_bytes())
    assert (info["version"], info["precision"], info["strongly_typed"]) == (version, precision, strongly_typed)
    fp16_onnx = tmp_path / "m.fp16.onnx"
    assert fp16_onnx.is_file() == (version == TRT11 and precision == "fp16")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_trt11_fp16_onnx_is_valid_and_close(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    _install(monkeypatch, TRT11)
    _backend("fp16").build(conv_onnx, tmp_path / "m.engine")
    fp16 = onnx.load(str(tmp_path / "m.fp16.onnx"))
    onnx.checker.check_model(fp16, full_check=True)  # includes topological order
    assert any(t.data_type == TensorProto.FLOAT16 for t in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    ref, out = run_onnxruntime(conv_onnx, x), run_onnxruntime(tmp_path / "m.fp16.onnx", x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_int8_needs_qdq_nodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path, version: str) -> None:
    trt = _install(monkeypatch, version)
    with pytest.raises(EdgedynError) as err:
        _backend("int8").build(conv_onnx, tmp_path / "m.engine")
    message = str(err.value)
    assert message.startswith(str(conv_onnx)) and "QuantizeLinear" in message and "\n" not in message
    assert calls(trt).builds == [] and not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("options,complaint", [
    ({"QuantizeBias": False}, "of type int8; TensorRT needs symmetric"),  # default: asymmetric activations
    ({"ActivationSymmetric": True}, "of type int32"),  # default: int32 bias
])
def test_int8_refuses_qdq_tensorrt_cannot_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path, options: dict, complaint: str,
) -> None:
    trt = _install(monkeypatch, TRT10)
    bad = _quantize(conv_onnx, tmp_path / "bad.qdq.onnx", **options)
    with pytest.raises(EdgedynError) as err:
        _backend("int8").build(bad, tmp_path / "m.engine")
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and complaint in message and "ActivationSymmetric=True" in message
    assert "\n" not in message and calls(trt).network_flags == []


def test_unknown_precision_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    _install(monkeypatch, TRT10)
    with pytest.raises(EdgedynError, match="unknown precision 'bf16'"):
        _backend("bf16").build(conv_onnx, tmp_path / "m.engine")


# -- timing cache -----------------------------------------------------------------------
def test_timing_cache_loaded_reused_and_saved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    trt = _install(monkeypatch, TRT10)
    backend = _backend("fp16")
    backend.build(conv_onnx, tmp_path / "a.engine")
    cache = tmp_path / "timing.cache"
    assert cache.is_file()
    first = cache.read_bytes()
    backend.build(conv_onnx, tmp_path / "b.engine")

    log = calls(trt)
    assert log.timing_cache_inputs == [0, len(first)]  # empty at first, then the saved file
    assert log.timing_cache_attached == [True, True]
    assert log.timing_cache_hits == [0, len(onnx.load(str(conv_onnx)).graph.node)]  # every layer timed once
    assert log.timing_cache_saves == 2


def test_timing_cache_shared_across_directories(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    trt = _install(monkeypatch, TRT11)
    shared = tmp_path / "cache" / "trt11.cache"
    backend = _backend("fp32", timing_cache=str(shared))
    backend.build(conv_onnx, tmp_path / "w4" / "m.engine")
    backend.build(conv_onnx, tmp_path / "w8" / "m.engine")
    assert shared.is_file() and not (tmp_path / "w4" / "timing.cache").exists()
    assert calls(trt).timing_cache_hits == [0, len(onnx.load(str(conv_onnx)).graph.node)]


def test_mismatched_timing_cache_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    _install(monkeypatch, TRT10)
    _backend().build(conv_onnx, tmp_path / "old.engine")  # a TensorRT 10 cache
    trt11 = _install(monkeypatch, TRT11)
    _backend().build(conv_onnx, tmp_path / "new.engine")
    log = calls(trt11)
    assert log.timing_cache_attached == [False, True] and log.timing_cache_hits == [0]
    assert b'"version": "11.0.0"' in (tmp_path / "timing.cache").read_bytes()


# -- errors -----------------------------------------------------------------------------
def _custom_op_onnx(path: Path) -> Path:
    node = helper.make_node("MyCustomOp", ["input"], ["output"], name="custom_0", domain="com.example")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(SHAPE))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_parser_error_is_one_line_naming_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str) -> None:
    _install(monkeypatch, version)
    bad = _custom_op_onnx(tmp_path / "custom.onnx")
    with pytest.raises(EdgedynError) as err:
        _backend().build(bad, tmp_path / "m.engine")
    message = str(err.value)
    assert message.startswith(f"{bad}: TensorRT {version} could not parse the ONNX model")
    assert "MyCustomOp node 'custom_0'" in message and "\n" not in message
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file\n" * 3)
    with pytest.raises(EdgedynError, match=r"garbage\.onnx: TensorRT .* could not parse"):
        _backend().build(garbage, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_build_failure_reports_tensorrt_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    _install(monkeypatch, TRT10)
    # A strongly typed TRT 10 network with the FP16 flag is rejected by the builder.
    monkeypatch.setattr(TrtApi, "network_flags",
                        lambda self, trt: 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    with pytest.raises(EdgedynError) as err:
        _backend("fp16").build(conv_onnx, tmp_path / "m.engine")
    message = str(err.value)
    assert message.startswith(f"{conv_onnx}: TensorRT 10.3.0 could not build a fp16 engine:")
    assert "strongly typed" in message and "\n" not in message


def test_corrupt_or_foreign_engine_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    _install(monkeypatch, TRT10)
    engine = _backend().build(conv_onnx, tmp_path / "m.engine")
    tampered = tmp_path / "tampered.engine"
    blob = bytearray(engine.read_bytes())
    blob[-5] ^= 0x01
    tampered.write_bytes(bytes(blob))
    expected = "engine could not be deserialized (built for another TensorRT version or GPU?)"
    with pytest.raises(EdgedynError) as err:
        _backend().load(tampered, SHAPE)
    assert str(err.value) == f"{tampered}: {expected}"
    _install(monkeypatch, TRT11)  # a TensorRT 10 engine on TensorRT 11
    with pytest.raises(EdgedynError, match=r"m\.engine: engine could not be deserialized"):
        _backend().load(engine, SHAPE)
    with pytest.raises(EdgedynError, match="missing.engine: file not found"):
        _backend().load(tmp_path / "missing.engine", SHAPE)


# -- load -------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_load_reads_engine_io(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path, version: str) -> None:
    trt = _install(monkeypatch, version)
    backend = _backend("fp16")
    runner = backend.load(backend.build(conv_onnx, tmp_path / "m.engine"), SHAPE)
    assert isinstance(runner, TensorRTRunner)
    assert (runner.input_name, runner.output_name) == ("input", "output")
    assert runner.input_shape == SHAPE and runner.output_shape == (1, 8, 16, 16)
    assert runner.input_dtype == np.float32 and runner.output_dtype == np.float32  # fp32 I/O kept
    assert calls(trt).contexts == ["STATIC"]
    differs = r"engine input shape \(1, 3, 16, 16\) differs from the requested \(2, 3, 16, 16\)"
    with pytest.raises(EdgedynError, match=differs):
        backend.load(tmp_path / "m.engine", (2, 3, 16, 16))


def test_prepare_exports_builds_and_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trt = _install(monkeypatch, TRT11)
    runner = _backend("fp16").prepare(_conv_net(4), torch.randn(1, 3, 8, 8), tmp_path)
    assert runner.input_shape == (1, 3, 8, 8) and runner.output_shape == (1, 4, 8, 8)
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "model.fp16.onnx", "model.engine", "timing.cache"}
    assert engine_info(runner.path.read_bytes())["precision"] == "fp16" and calls(trt).builds[0]["strongly_typed"]



def test_prepare_many_exports_in_workers_then_builds_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _install(monkeypatch, TRT10)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    done = []
    runners = _backend("fp16").prepare_many([_conv_net(4), _conv_net(8)], torch.randn(1, 3, 8, 8), dirs,
                                            progress=lambda: done.append(1))
    assert [r.output_shape for r in runners] == [(1, 4, 8, 8), (1, 8, 8, 8)] and len(done) == 2
    assert all((d / "model.engine").is_file() for d in dirs)


def test_block_runner_builds_the_block_and_loads_it_at_its_input_shape(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from edgedyn.blocks import BlockKey

    _install(monkeypatch, TRT10)
    key = BlockKey("conv", 8, 16, 12, 12, 3, 2, 1, act="relu")
    runner = _backend("fp16").block_runner(key, tmp_path / "blocks")  # the profiler's path (base class)
    assert runner.input_shape == (1, 8, 12, 12) and runner.output_shape == (1, 16, 6, 6)
    assert {p.name for p in (tmp_path / "blocks").iterdir()} >= {"block.onnx", "block.engine"}
    assert callable(runner.timed_call)  # what the profiler's interleaved measurement calls


# -- shared activation memory -------------------------------------------------------------
@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_shared_activation_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str) -> None:
    trt = _install(monkeypatch, version)
    backend = _backend()
    small = backend.build(export_onnx(_conv_net(4), torch.randn(1, 3, 8, 8), tmp_path / "s.onnx"), tmp_path / "s.engine")
    large = backend.build(export_onnx(_conv_net(8), torch.randn(SHAPE), tmp_path / "l.onnx"), tmp_path / "l.engine")
    shared = SharedActivationMemory(device="cpu")  # a host buffer stands in for device memory here
    r_small = backend.load(small, (1, 3, 8, 8), shared_memory=shared)
    r_large = backend.load(large, SHAPE, shared_memory=shared)

    assert r_small.device_memory_size < r_large.device_memory_size
    assert shared.size == r_large.device_memory_size
    log = calls(trt)
    assert log.contexts == ["USER_MANAGED", "USER_MANAGED"]
    # small bound first, then the buffer grew for large and both contexts were (re)bound to it
    assert log.device_memory[0][1] == r_small.device_memory_size
    assert log.device_memory[1:] == [(shared.address, shared.size)] * 2
    assert log.deprecated == []  # TRT 10.3 too: device_memory_size_v2 + set_device_memory


def test_shared_memory_uses_v1_api_on_trt_10_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_onnx: Path) -> None:
    trt = _install(monkeypatch, TRT10)
    engine = _backend().build(conv_onnx, tmp_path / "m.engine")
    api = TrtApi(version="10.0.1", major=10, weak_typing=True, memory_v2=False)  # what 10.0 offers
    shared = SharedActivationMemory(device="cpu")
    runner = TensorRTRunner(trt, api, engine, SHAPE, shared)
    assert calls(trt).deprecated == ["ICudaEngine.device_memory_size"]
    assert calls(trt).device_memory == [(shared.address, runner.engine.device_memory_size_v2)]


# -- real TensorRT ---------------------------------------------------------------------------
@pytest.mark.tensorrt
def test_real_tensorrt_builds_and_runs_conv(tmp_path: Path, conv_onnx: Path, qdq_onnx: Path) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    ref = run_onnxruntime(conv_onnx, x)
    shared = SharedActivationMemory()
    runners = []
    for precision, source, tol in [("fp32", conv_onnx, 1e-3), ("fp16", conv_onnx, 3e-2), ("int8", qdq_onnx, 0.2)]:
        backend = _backend(precision)
        engine = backend.build(source, tmp_path / f"{precision}.engine")
        with backend.load(engine, SHAPE) as runner:
            np.testing.assert_allclose(runner.infer(x), ref, atol=tol, rtol=tol)
            times = runner.time(n_warmup=3, n_iters=10)
            assert times.shape == (10,) and np.all(times > 0)
        runners.append(backend.load(engine, SHAPE, shared_memory=shared))
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert shared.size == max(r.device_memory_size for r in runners)
    for runner in runners:  # one at a time on the shared buffer and stream
        with runner:
            assert runner.infer(x).shape == ref.shape
