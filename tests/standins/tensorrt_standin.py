"""A strict stand-in for the ``tensorrt`` Python module, in TensorRT 10.3 and 11.0 flavours.

Install it for one test with::

    trt = make_standin("10.3.0")            # or "11.0.0"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    ...
    calls(trt).builder_flags                # what the code under test did

Strict: every public name exposed below exists in the real Python bindings of the flavour
that exposes it, with the real enum values and the real keyword-argument names. Anything
else raises AttributeError: the classes use ``__slots__`` (nothing can be set that the
real class lacks) and the enums are IntEnums holding only the real members. The 11.0
flavour lacks what TensorRT 11 removed: ``BuilderFlag.FP16``/``INT8``/``BF16``/``FP8``/
``INT4``/``OBEY_PRECISION_CONSTRAINTS``/``PREFER_PRECISION_CONSTRAINTS``,
``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``, ``IBuilderConfig.int8_calibrator``,
``IInt8EntropyCalibrator2``, ``ICudaEngine.device_memory_size`` and
``ICudaEngine.create_execution_context_without_device_memory``. It is a subset: members
the real module has but edgedyn does not need are left out.

Sources. Comments give ``file:line`` in the Python bindings of NVIDIA/TensorRT at tag
``v10.3.0`` ("10.3") and at tag ``v11.0`` ("11.0"): ``python/src/infer/pyCore.cpp``
(core), ``pyFoundationalTypes.cpp`` (types), ``pyGraph.cpp`` (graph), ``pyInt8.cpp``
(int8), ``python/src/parsers/pyOnnx.cpp`` (onnx) and
``python/packaging/bindings_wheel/tensorrt/__init__.py`` (init). Enum values come from
``include/NvInfer.h``, ``NvInferRuntime.h`` and ``NvInferRuntimeBase.h`` at the same tags.
The 11.0 removals are also listed at
https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html

Behaviour (not API) is a model, kept close to the documented rules: TRT 11 networks are
always strongly typed; strongly typed networks reject precision builder flags; a weakly
typed network with Q/DQ nodes needs ``BuilderFlag.INT8``; engines and timing caches are
tied to the TensorRT version that made them. ``build_serialized_network`` returns bytes (a
fake engine that embeds its precision; the real call returns ``IHostMemory``, which has
the same buffer protocol) and ``Runtime.deserialize_cuda_engine`` returns None for bytes it
did not make.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.machinery
import json
import weakref
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

ENGINE_MAGIC = b"EDGEDYN-STANDIN-ENGINE\x00"
CACHE_MAGIC = b"EDGEDYN-STANDIN-TIMING\x00"
PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4")

# ONNX operators the fake parser imports (a subset of what TensorRT's parser supports).
SUPPORTED_OPS = frozenset(
    "Add AveragePool BatchNormalization Cast Clip Concat Constant Conv ConvTranspose DequantizeLinear "
    "Div Flatten Gather Gemm GlobalAveragePool HardSigmoid HardSwish Identity MatMul MaxPool Mul Pad "
    "QuantizeLinear ReduceMean Relu Reshape Resize Shape Sigmoid Slice Softmax Split Squeeze Sub Tanh "
    "Transpose Unsqueeze".split()
)
_ONNX_TO_DATATYPE = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
_BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass
class CallLog:
    """What the code under test asked of one stand-in module."""

    network_flags: list[int] = field(default_factory=list)  # create_network(flags) per call
    builder_flags: list[list[str]] = field(default_factory=list)  # BuilderFlag names set, per config
    memory_pool_limits: list[tuple[str, int]] = field(default_factory=list)
    timing_cache_inputs: list[int] = field(default_factory=list)  # len(bytes) given to create_timing_cache
    timing_cache_attached: list[bool] = field(default_factory=list)  # set_timing_cache results
    timing_cache_hits: list[int] = field(default_factory=list)  # per build: layers found in the cache
    timing_cache_saves: int = 0  # ITimingCache.serialize calls
    builds: list[dict[str, Any]] = field(default_factory=list)  # successful builds
    contexts: list[str] = field(default_factory=list)  # allocation strategy per created context
    device_memory: list[tuple[int, int]] = field(default_factory=list)  # (address, size) given to contexts
    executions: int = 0
    deprecated: list[str] = field(default_factory=list)  # deprecated-but-present APIs that were used


_LOGS: weakref.WeakKeyDictionary[ModuleType, CallLog] = weakref.WeakKeyDictionary()


def calls(module: ModuleType) -> CallLog:
    """The call log of a module made by :func:`make_standin`."""
    return _LOGS[module]


def engine_info(blob: bytes) -> dict[str, Any]:
    """Decode a fake engine made by a stand-in (raises ValueError for anything else)."""
    data = bytes(blob)
    if not data.startswith(ENGINE_MAGIC):
        raise ValueError("not a stand-in engine")
    digest, payload = data[len(ENGINE_MAGIC) : len(ENGINE_MAGIC) + 32], data[len(ENGINE_MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("stand-in engine was modified")
    return json.loads(payload)


class _State:
    """Per-module data shared by the flavour's classes (reached through ``cls._state``)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.major = int(version.split(".")[0])
        self.log = CallLog()
        self.enums: dict[str, type[enum.IntEnum]] = {}
        self.classes: dict[str, type] = {}

    def enum(self, name: str) -> Any:
        return self.enums[name]

    def new(self, name: str, *args: Any) -> Any:
        return self.classes[name](*args)


def _error(logger: Any, state: _State, msg: str) -> None:
    logger.log(state.enum("Severity").ERROR, msg)


# --------------------------------------------------------------------------------------
# Logger. 10.3 core:684-696 / 11.0 core:916-928 (ILogger, ILogger.Severity exported into
# ILogger's scope, ILogger.log); 10.3 core:757-760 / 11.0 core:989-992 (Logger).
# Severity values: NvInferRuntimeBase.h (10.3) / NvInferRuntime.h (11.0).
# --------------------------------------------------------------------------------------
_SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}


class _ILogger:
    def __init__(self) -> None:  # 10.3 core:696, 11.0 core:928 (py::init<>)
        pass

    def log(self, severity: Any, msg: str) -> None:  # 10.3 core:696, 11.0 core:928 (pure virtual)
        raise TypeError("ILogger.log is pure virtual; subclass ILogger and override log")


class _Logger(_ILogger):
    def __init__(self, min_severity: Any = None) -> None:  # 10.3 core:758, 11.0 core:990
        self.min_severity = self.Severity.WARNING if min_severity is None else min_severity  # type: ignore[attr-defined]
        self._messages: list[tuple[Any, str]] = []  # the real Logger prints instead

    def log(self, severity: Any, msg: str) -> None:  # 10.3 core:760, 11.0 core:992
        self._messages.append((severity, msg))


# --------------------------------------------------------------------------------------
# Builder side.
# --------------------------------------------------------------------------------------
class _Builder:
    """10.3 core:1508 / 11.0 core:1773 (Builder(logger))."""

    __slots__ = ("_logger",)
    _state: _State

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def create_network(self, flags: int = 0) -> Any:  # 10.3 core:1510, 11.0 core:1778 ("flags"_a = 0U)
        if not isinstance(flags, int) or isinstance(flags, enum.Enum):
            raise TypeError(f"create_network(): flags must be an int bit mask, got {flags!r}")
        self._state.log.network_flags.append(flags)
        known = sum(1 << int(f) for f in self._state.enum("NetworkDefinitionCreationFlag"))
        if flags & ~known:
            _error(self._logger, self._state, f"create_network: unknown flag bits {flags:#x}")
            return None
        return self._state.new("INetworkDefinition", flags)

    def create_builder_config(self) -> Any:  # 10.3 core:1522, 11.0 core:1787
        self._state.log.builder_flags.append([])
        return self._state.new("IBuilderConfig", len(self._state.log.builder_flags) - 1)

    def build_serialized_network(self, network: Any, config: Any) -> bytes | None:  # 10.3 core:1524, 11.0 core:1789
        state, logger = self._state, self._logger
        if not network._parsed:
            _error(logger, state, "Network must have at least one output")
            return None
        flags = set(state.log.builder_flags[config._index])
        strongly_typed = state.major >= 11 or bool(
            network._flags & (1 << int(state.enum("NetworkDefinitionCreationFlag").STRONGLY_TYPED))
        )
        if strongly_typed:
            bad = sorted(flags & set(PRECISION_FLAGS))
            if bad:
                _error(logger, state, f"BuilderFlag {bad} cannot be used with a strongly typed network")
                return None
            precision = "int8" if network._qdq else "fp16" if network._fp16 else "fp32"
        else:
            if network._qdq and "INT8" not in flags:
                _error(logger, state, "Q/DQ layers in a weakly typed network need BuilderFlag.INT8")
                return None
            precision = "int8" if network._qdq else "fp16" if ("FP16" in flags or network._fp16) else "fp32"
        cache = config._cache
        keys = [f"{op}:{precision}" for op in network._ops]
        state.log.timing_cache_hits.append(sum(k in cache._entries for k in keys) if cache is not None else 0)
        if cache is not None:
            cache._entries.update(keys)
        volume = int(np.prod([d for d in network._inputs[0][1] if d > 0])) if network._inputs else 1
        payload = {
            "version": state.version,
            "precision": precision,
            "strongly_typed": strongly_typed,
            "flags": sorted(flags),
            "workspace": config._pools.get("WORKSPACE"),
            "inputs": network._inputs,
            "outputs": network._outputs,
            "ops": network._ops,
            "device_memory": 256 + volume * len(network._ops) * _BYTES_PER_ELEMENT[precision],
        }
        state.log.builds.append({k: payload[k] for k in ("precision", "strongly_typed", "flags")})
        raw = json.dumps(payload, sort_keys=True).encode()
        return ENGINE_MAGIC + hashlib.sha256(raw).digest() + raw


class _INetworkDefinition:
    """10.3 graph:823 / 11.0 graph:1040."""

    __slots__ = ("_flags", "_inputs", "_outputs", "_ops", "_qdq", "_fp16", "_parsed")
    _state: _State

    def __init__(self, flags: int) -> None:
        self._flags = flags
        self._inputs: list[list[Any]] = []  # [name, shape, DataType name]
        self._outputs: list[list[Any]] = []
        self._ops: list[str] = []
        self._qdq = False
        self._fp16 = False
        self._parsed = False

    @property
    def num_layers(self) -> int:  # 10.3 graph:825, 11.0 graph:1042
        return len(self._ops)

    @property
    def num_inputs(self) -> int:  # 10.3 graph:826, 11.0 graph:1043
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:  # 10.3 graph:827, 11.0 graph:1044
        return len(self._outputs)


class _IBuilderConfig:
    """10.3 core:1425 / 11.0 core:1700."""

    __slots__ = ("_index", "_pools", "_cache")
    _state: _State

    def __init__(self, index: int) -> None:
        self._index = index
        self._pools: dict[str, int] = {}
        self._cache: Any = None

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:  # 10.3 core:1435, 11.0 core:1704
        if not isinstance(pool, self._state.enum("MemoryPoolType")):
            raise TypeError(f"set_memory_pool_limit(): pool must be a MemoryPoolType, got {pool!r}")
        self._pools[pool.name] = int(pool_size)
        self._state.log.memory_pool_limits.append((pool.name, int(pool_size)))

    def set_flag(self, flag: Any) -> None:  # 10.3 core:1444, 11.0 core:1713
        if not isinstance(flag, self._state.enum("BuilderFlag")):
            raise TypeError(f"set_flag(): flag must be a BuilderFlag, got {flag!r}")
        self._state.log.builder_flags[self._index].append(flag.name)

    def get_flag(self, flag: Any) -> bool:  # 10.3 core:1445, 11.0 core:1714
        return flag.name in self._state.log.builder_flags[self._index]

    def create_timing_cache(self, serialized_timing_cache: bytes) -> Any:  # 10.3 core:1480, 11.0 core:1731
        data = bytes(serialized_timing_cache)
        self._state.log.timing_cache_inputs.append(len(data))
        if not data:
            return self._state.new("ITimingCache", self._state.version, set())
        if not data.startswith(CACHE_MAGIC):
            return None
        body = json.loads(data[len(CACHE_MAGIC) :])
        return self._state.new("ITimingCache", body["version"], set(body["entries"]))

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:  # 10.3 core:1482, 11.0 core:1733
        ok = bool(ignore_mismatch) or cache._version == self._state.version
        self._state.log.timing_cache_attached.append(ok)
        if ok:
            self._cache = cache
        return ok

    def get_timing_cache(self) -> Any:  # 10.3 core:1484, 11.0 core:1736
        return self._cache


class _IBuilderConfig10Only:
    __slots__ = ()
    _state: _State

    @property
    def int8_calibrator(self) -> Any:  # 10.3 core:1428 (deprecated 10.1); removed in 11.0
        self._state.log.deprecated.append("IBuilderConfig.int8_calibrator")
        return None

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator: Any) -> None:
        self._state.log.deprecated.append("IBuilderConfig.int8_calibrator")


class _ITimingCache:
    """10.3 core:1419 / 11.0 core:1678."""

    __slots__ = ("_version", "_entries")
    _state: _State

    def __init__(self, version: str, entries: set[str]) -> None:
        self._version = version
        self._entries = entries

    def serialize(self) -> bytes:  # 10.3 core:1420, 11.0 core:1679 (returns IHostMemory)
        self._state.log.timing_cache_saves += 1
        body = {"version": self._version, "entries": sorted(self._entries)}
        return CACHE_MAGIC + json.dumps(body).encode()

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:  # 10.3 core:1421, 11.0 core:1681
        if not ignore_mismatch and input_cache._version != self._version:
            return False
        self._entries.update(input_cache._entries)
        return True

    def reset(self) -> bool:  # 10.3 core:1422, 11.0 core:1683
        self._entries.clear()
        return True


class _ParserError:
    """10.3 onnx:172 / 11.0 onnx:240."""

    __slots__ = ("_code", "_desc", "_node", "_node_name", "_node_operator")
    _state: _State

    def __init__(self, code: Any, desc: str, node: int = -1, node_name: str = "", node_operator: str = "") -> None:
        self._code, self._desc, self._node = code, desc, node
        self._node_name, self._node_operator = node_name, node_operator

    def code(self) -> Any:  # 10.3 onnx:173, 11.0 onnx:241
        return self._code

    def desc(self) -> str:  # 10.3 onnx:174, 11.0 onnx:242
        return self._desc

    def node(self) -> int:  # 10.3 onnx:178, 11.0 onnx:246
        return self._node

    def node_name(self) -> str:  # 10.3 onnx:179, 11.0 onnx:247
        return self._node_name

    def node_operator(self) -> str:  # 10.3 onnx:180, 11.0 onnx:248
        return self._node_operator


class _OnnxParser:
    """10.3 onnx:121 / 11.0 onnx:174 (OnnxParser(network, logger))."""

    __slots__ = ("_network", "_logger", "_errors")
    _state: _State

    def __init__(self, network: Any, logger: Any) -> None:
        self._network, self._logger = network, logger
        self._errors: list[Any] = []

    @property
    def num_errors(self) -> int:  # 10.3 onnx:137, 11.0 onnx:190
        return len(self._errors)

    def get_error(self, index: int) -> Any:  # 10.3 onnx:138, 11.0 onnx:191
        return self._errors[index]

    def clear_errors(self) -> None:  # 10.3 onnx:139, 11.0 onnx:192
        self._errors.clear()

    def parse_from_file(self, model: str) -> bool:  # 10.3 onnx:128, 11.0 onnx:182 (std::string path)
        if not isinstance(model, str):
            raise TypeError(f"parse_from_file(): model must be a str path, got {type(model).__name__}")
        import onnx

        codes = self._state.enum("ErrorCode")
        try:
            proto = onnx.load(model)
        except Exception:
            self._fail(codes.MODEL_DESERIALIZE_FAILED, f"Failed to parse ONNX model from file: {model}")
            return False
        graph = proto.graph
        for i, node in enumerate(graph.node):
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                # message modelled on onnx-tensorrt's ModelImporter
                self._fail(codes.UNSUPPORTED_NODE, f"No importer registered for op: {node.op_type}", i, node.name, node.op_type)
        if self._errors:
            return False
        initialized = {t.name for t in graph.initializer}
        net = self._network
        net._inputs = [_tensor_info(v) for v in graph.input if v.name not in initialized]
        net._outputs = [_tensor_info(v) for v in graph.output]
        net._ops = [n.op_type for n in graph.node]
        net._qdq = any(op in ("QuantizeLinear", "DequantizeLinear") for op in net._ops)
        net._fp16 = any(t.data_type == 10 for t in graph.initializer) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == 10 for a in n.attribute) for n in graph.node
        )
        net._parsed = True
        return True

    def _fail(self, code: Any, desc: str, node: int = -1, name: str = "", op: str = "") -> None:
        self._errors.append(self._state.new("ParserError", code, desc, node, name, op))
        _error(self._logger, self._state, desc)


def _tensor_info(value: Any) -> list[Any]:
    tensor_type = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return [value.name, shape, _ONNX_TO_DATATYPE.get(tensor_type.elem_type, "FLOAT")]


# --------------------------------------------------------------------------------------
# Runtime side.
# --------------------------------------------------------------------------------------
class _Runtime:
    """10.3 core:1537 / 11.0 core:1824 (Runtime(logger))."""

    __slots__ = ("_logger",)
    _state: _State

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:  # 10.3 core:1539, 11.0 core:1829
        try:
            info = engine_info(bytes(serialized_engine))
        except (ValueError, json.JSONDecodeError) as err:
            _error(self._logger, self._state, f"Deserialization failed: {err}")
            return None
        if info["version"] != self._state.version:
            _error(self._logger, self._state, f"engine plan built by TensorRT {info['version']}, runtime is {self._state.version}")
            return None
        return self._state.new("ICudaEngine", info, self._logger)


class _ICudaEngine:
    """10.3 core:1154 / 11.0 core:1407."""

    __slots__ = ("_info", "_logger", "_io")
    _state: _State

    def __init__(self, info: dict[str, Any], logger: Any) -> None:
        self._info, self._logger = info, logger
        modes = self._state.enum("TensorIOMode")
        self._io = {n: (modes.INPUT, s, d) for n, s, d in info["inputs"]}
        self._io.update({n: (modes.OUTPUT, s, d) for n, s, d in info["outputs"]})

    @property
    def num_io_tensors(self) -> int:  # 10.3 core:1187, 11.0 core:1427
        return len(self._io)

    @property
    def num_layers(self) -> int:  # 10.3 core:1159, 11.0 core:1409
        return len(self._info["ops"])

    @property
    def device_memory_size_v2(self) -> int:  # 10.3 core:1181, 11.0 core:1421
        return int(self._info["device_memory"])

    def get_tensor_name(self, index: int) -> str:  # 10.3 core:1188, 11.0 core:1428
        return list(self._io)[index]

    def get_tensor_mode(self, name: str) -> Any:  # 10.3 core:1189, 11.0 core:1429
        return self._io[name][0] if name in self._io else self._state.enum("TensorIOMode").NONE

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:  # 10.3 core:1191, 11.0 core:1431 (returns Dims)
        return tuple(self._io[name][1])

    def get_tensor_dtype(self, name: str) -> Any:  # 10.3 core:1192, 11.0 core:1432
        return getattr(self._state.enum("DataType"), self._io[name][2])

    def create_execution_context(self, strategy: Any = None) -> Any:  # 10.3 core:1165, 11.0 core:1415
        strategies = self._state.enum("ExecutionContextAllocationStrategy")
        strategy = strategies.STATIC if strategy is None else strategy
        if not isinstance(strategy, strategies):
            raise TypeError(f"create_execution_context(): strategy must be an ExecutionContextAllocationStrategy, got {strategy!r}")
        self._state.log.contexts.append(strategy.name)
        return self._state.new("IExecutionContext", self, strategy)


class _ICudaEngine10Only:
    __slots__ = ()
    _state: _State

    @property
    def device_memory_size(self) -> int:  # 10.3 core:1178 (deprecated 10.1); removed in 11.0
        self._state.log.deprecated.append("ICudaEngine.device_memory_size")
        return int(self._info["device_memory"])  # type: ignore[attr-defined]

    def create_execution_context_without_device_memory(self) -> Any:  # 10.3 core:1168 (deprecated 10.0); removed in 11.0
        self._state.log.deprecated.append("ICudaEngine.create_execution_context_without_device_memory")
        self._state.log.contexts.append("WITHOUT_DEVICE_MEMORY")
        return self._state.new("IExecutionContext", self, self._state.enum("ExecutionContextAllocationStrategy").USER_MANAGED)


class _IExecutionContext:
    """10.3 core:1031 / 11.0 core:1283."""

    __slots__ = ("_engine", "_strategy", "_addresses", "_memory")
    _state: _State

    def __init__(self, engine: Any, strategy: Any) -> None:
        self._engine, self._strategy = engine, strategy
        self._addresses: dict[str, int] = {}
        self._memory: tuple[int, int] | None = None

    @property
    def engine(self) -> Any:  # 10.3 core:1037, 11.0 core:1289
        return self._engine

    def _set_memory(self, memory: int, size: int) -> None:
        self._memory = (int(memory), int(size))
        self._state.log.device_memory.append(self._memory)

    def set_device_memory(self, memory: int, size: int) -> None:  # 10.3 core:1042, 11.0 core:1294
        self._set_memory(memory, size)

    def _write_device_memory(self, memory: int) -> None:
        self._set_memory(memory, self._engine.device_memory_size_v2)

    # write-only property: 10.3 core:1041, 11.0 core:1293 (nullptr getter)
    device_memory = property(None, _write_device_memory)

    def set_tensor_address(self, name: str, memory: int) -> bool:  # 10.3 core:1057, 11.0 core:1309
        if not isinstance(memory, int):
            raise TypeError(f"set_tensor_address(): memory must be an int address, got {type(memory).__name__}")
        if name not in self._engine._io:
            _error(self._engine._logger, self._state, f"set_tensor_address: unknown tensor {name!r}")
            return False
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:  # 10.3 core:1074, 11.0 core:1326
        if not isinstance(stream_handle, int):
            raise TypeError(f"execute_async_v3(): stream_handle must be an int, got {type(stream_handle).__name__}")
        logger = self._engine._logger
        missing = sorted(set(self._engine._io) - set(self._addresses))
        if missing:
            _error(logger, self._state, f"execute_async_v3: no address set for {missing}")
            return False
        user_managed = self._strategy == self._state.enum("ExecutionContextAllocationStrategy").USER_MANAGED
        if user_managed and (self._memory is None or self._memory[1] < self._engine.device_memory_size_v2):
            _error(logger, self._state, "execute_async_v3: user-managed device memory missing or too small")
            return False
        self._state.log.executions += 1
        return True


class _IInt8EntropyCalibrator2:
    """10.3 int8:331 (deprecated 10.1); removed in 11.0 (pyInt8.cpp is gone at tag v11.0)."""

    def __init__(self) -> None:
        pass

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names: list[str]) -> list[int] | None:
        return None

    def read_calibration_cache(self) -> bytes | None:
        return None

    def write_calibration_cache(self, cache: bytes) -> None:
        return None


# --------------------------------------------------------------------------------------
# Enums (name -> value), per flavour.
# --------------------------------------------------------------------------------------
_ENUMS_COMMON: dict[str, dict[str, int]] = {
    # 10.3 core:1102-1107 / 11.0 core:1263-1268; NvInferRuntime.h
    "ExecutionContextAllocationStrategy": {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2},
    # 10.3 core:1370-1371 / 11.0 core:1618-1619 (WORKSPACE only; the DLA/tactic pools are left out)
    "MemoryPoolType": {"WORKSPACE": 0},
    # 10.3 core:1149-1152 / 11.0 core:1398-1401; NvInferRuntimeBase.h
    "TensorIOMode": {"NONE": 0, "INPUT": 1, "OUTPUT": 2},
    # types:179-187 at both tags (subset); NvInferRuntimeBase.h
    "DataType": {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "INT64": 8},
    # 10.3 onnx:153-162 / 11.0 onnx:221-230 (subset, declaration order)
    "ErrorCode": {"SUCCESS": 0, "INTERNAL_ERROR": 1, "MODEL_DESERIALIZE_FAILED": 3, "INVALID_GRAPH": 5, "UNSUPPORTED_NODE": 8},
}
_ENUMS_10: dict[str, dict[str, int]] = {
    # 10.3 core:1337-1365; NvInfer.h (BuilderFlag)
    "BuilderFlag": {
        "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
        "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
        "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14,
        "FP8": 15, "ERROR_ON_TIMING_CACHE_MISS": 16, "BF16": 17, "DISABLE_COMPILATION_CACHE": 18, "STRIP_PLAN": 19,
        "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21, "INT4": 22, "REFIT_INDIVIDUAL": 23,
    },
    # 10.3 core:1500-1504; NvInfer.h (EXPLICIT_BATCH deprecated, = 0; STRONGLY_TYPED = 1)
    "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
}
_ENUMS_11: dict[str, dict[str, int]] = {
    # 11.0 core:1592-1616; NvInfer.h (no FP16/INT8/BF16/FP8/INT4/precision-constraint flags)
    "BuilderFlag": {
        "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7,
        "VERSION_COMPATIBLE": 12, "EXCLUDE_LEAN_RUNTIME": 13, "ERROR_ON_TIMING_CACHE_MISS": 15,
        "DISABLE_COMPILATION_CACHE": 17, "STRIP_PLAN": 18, "REFIT_IDENTICAL": 19, "WEIGHT_STREAMING": 20,
        "REFIT_INDIVIDUAL": 22, "STRICT_NANS": 23, "MONITOR_MEMORY": 24, "EDITABLE_TIMING_CACHE": 26,
        "DISTRIBUTIVE_INDEPENDENCE": 27,
    },
    # 11.0 core:1762-1768; NvInfer.h (STRONGLY_TYPED deprecated and ignored, = 0; no EXPLICIT_BATCH)
    "NetworkDefinitionCreationFlag": {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
}

# Module-level DataType aliases: types:193-200 (10.3) / types:194-201 (11.0), subset.
_DTYPE_ALIASES = {
    "float32": "FLOAT", "float16": "HALF", "int8": "INT8", "int32": "INT32", "int64": "INT64", "bool": "BOOL",
    "uint8": "UINT8",
}
_NUMPY = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "UINT8": np.uint8,
}


def make_standin(version: str) -> ModuleType:
    """A fresh fake ``tensorrt`` module: the 10.3 API for "10.x", the 11.0 API for "11.x"."""
    state = _State(version)
    if state.major not in (10, 11):
        raise ValueError(f"stand-in flavours are TensorRT 10 (10.3 API) and 11 (11.0 API), not {version}")
    module = ModuleType("tensorrt", f"Strict stand-in for TensorRT {version} (tests only)")
    module.__version__ = version  # type: ignore[attr-defined]  # init:77 (10.3), init:98 (11.0)
    # an imported module has a spec; importlib.util.find_spec("tensorrt") (torchvision's import
    # probes it) raises ValueError for a module in sys.modules without one
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    for name, members in {**_ENUMS_COMMON, **(_ENUMS_10 if state.major == 10 else _ENUMS_11)}.items():
        state.enums[name] = enum.IntEnum(name, members)  # type: ignore[assignment]
        setattr(module, name, state.enums[name])
    severity = enum.IntEnum("Severity", _SEVERITY)
    state.enums["Severity"] = severity  # type: ignore[assignment]

    def bind(name: str, *bases: type, slots: bool = True) -> type:
        attrs: dict[str, Any] = {"_state": state, "__module__": "tensorrt", "__qualname__": name}
        if slots:
            attrs["__slots__"] = ()
        cls = type(name, bases, attrs)
        state.classes[name] = cls
        setattr(module, name, cls)
        return cls

    ten = state.major == 10
    logger_attrs = {"Severity": severity, **{m.name: m for m in severity}}  # export_values()
    ilogger = bind("ILogger", _ILogger, slots=False)
    for key, value in logger_attrs.items():
        setattr(ilogger, key, value)
    bind("Logger", _Logger, ilogger, slots=False)
    bind("Builder", _Builder)
    bind("INetworkDefinition", _INetworkDefinition)
    bind("IBuilderConfig", *((_IBuilderConfig10Only,) if ten else ()), _IBuilderConfig)
    bind("ITimingCache", _ITimingCache)
    bind("OnnxParser", _OnnxParser)
    bind("ParserError", _ParserError)
    bind("Runtime", _Runtime)
    bind("ICudaEngine", *((_ICudaEngine10Only,) if ten else ()), _ICudaEngine)
    bind("IExecutionContext", _IExecutionContext)
    if ten:
        bind("IInt8EntropyCalibrator2", _IInt8EntropyCalibrator2, slots=False)

    datatype = state.enums["DataType"]
    for alias, member in _DTYPE_ALIASES.items():
        setattr(module, alias, getattr(datatype, member))

    def nptype(trt_type: Any) -> type:  # init:151 (10.3), init:172 (11.0)
        if isinstance(trt_type, datatype) and trt_type.name in _NUMPY:
            return _NUMPY[trt_type.name]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    module.nptype = nptype  # type: ignore[attr-defined]
    _LOGS[module] = state.log
    return module
