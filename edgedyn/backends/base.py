"""One interface for every execution backend (onnxruntime, torch, tensorrt).

A :class:`Backend` turns a model into a :class:`Runner`:

- ``prepare(module, example, workdir)`` compiles a ``torch.nn.Module`` for this backend
  (ONNX export + session for onnxruntime, an engine for TensorRT, the module itself for
  torch) and returns a runner; ``prepare_many`` does it for many modules, and
  ``prepare_subnets(net, specs, ...)`` for many sub-nets of one dynamic network (the
  profiler's calibration and validation sub-nets). Backends that compile ONNX derive from
  :class:`OnnxBackend`, which exports once and builds with ``from_onnx(onnx_path)``; its
  ``prepare_subnets`` exports the full network once and derives the sub-nets' graphs.
- ``build(onnx_path, out_dir)`` compiles an ONNX file to the backend's deployable
  artifact (an optimized ``.onnx`` or a ``.engine``); ``load(artifact)`` returns a runner.
  ``edgedyn deploy`` and the runtime selector use these.

Profiling hooks, with defaults for a backend that times blocks on this machine's clock:
``measures`` and ``estimate_ms`` (an analytic backend prices blocks instead of timing
them: roofline), ``default_threads`` (a CPU backend whose thread count the profiler
chooses: ONNX Runtime), ``layout`` (how activations flow between blocks), ``block_runner``,
``overhead_runner``, ``device_info`` and ``sources`` (recorded in the table) and
``default_subsample``. The profiler asks these and names no backend.

Runners follow Polygraphy's template: ``activate`` / ``infer`` / ``deactivate`` and use as
a context manager. ``time(n_warmup, n_iters)`` returns per-call latencies in ms measured
with the backend's proper clock (host clock for CPU, CUDA events for GPUs).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import BackendUnavailable

if TYPE_CHECKING:
    from ..blocks import BlockKey, Layout
    from ..dynamic import DynamicNet, SubnetSpec

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BackendOptions:
    """Settings that change what a backend measures; recorded in every table and manifest."""

    device: str = "cpu"  # cpu | cuda | jetson
    precision: str = "fp32"  # fp32 | fp16 | int8
    threads: int | None = None  # CPU intra-op threads (pinned); None = backend default
    extra: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # extra is informational only
        return hash((self.device, self.precision, self.threads))


class Runner(abc.ABC):
    """A loaded model ready to run one fixed-shape input."""

    input_shape: tuple[int, ...]
    input_dtype: np.dtype = np.dtype(np.float32)

    def __init__(self) -> None:
        self._active = False
        self._last_ms: float | None = None

    # -- life cycle -------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self._active:
            self._activate()
            self._active = True
        return self

    def deactivate(self) -> None:
        if self._active:
            self._deactivate()
            self._active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def _activate(self) -> None:  # noqa: B027  # pragma: no cover - optional hook, empty by default
        pass

    def _deactivate(self) -> None:  # noqa: B027  # pragma: no cover - optional hook, empty by default
        pass

    # -- inference --------------------------------------------------------------------
    def check_input(self, x: np.ndarray) -> None:
        """Raise ValueError (one line) for a wrong shape or dtype."""
        if not isinstance(x, np.ndarray):
            raise ValueError(f"input must be a numpy array, got {type(x).__name__}")
        if tuple(x.shape) != tuple(self.input_shape):
            raise ValueError(f"input shape {tuple(x.shape)} does not match the model's {tuple(self.input_shape)}")
        if x.dtype != self.input_dtype:
            raise ValueError(f"input dtype {x.dtype} does not match the model's {self.input_dtype}")

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one input (checked against the model's shape and dtype) and return the output."""
        self.check_input(x)
        if not self._active:
            self.activate()
        t0 = time.perf_counter()
        out = self._infer(x)
        self._last_ms = (time.perf_counter() - t0) * 1e3
        return out

    def raw_infer(self) -> Callable[[np.ndarray], np.ndarray]:
        """The bare inference call (no input check, no timing) of an activated runner, for a
        caller that checks the input itself, as the runtime selector does on its hot path.
        An inactive runner gives its checked :meth:`infer`, which activates it on first use."""
        return self._infer if self._active else self.infer

    def last_inference_time(self) -> float | None:
        """Wall time in ms of the last :meth:`infer` call, or None."""
        return self._last_ms

    @abc.abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    def timed_call(self) -> float:
        """One timed call (ms) on a fixed input, as the interleaved measurements
        (:mod:`edgedyn.profile.measure`) take them; the default is one :meth:`time` call with
        no warm-up, in the backend's proper clock (runners override it with a cheaper one)."""
        return float(self.time(n_warmup=0, n_iters=1)[0])

    def time(self, n_warmup: int = 10, n_iters: int = 50, x: np.ndarray | None = None) -> np.ndarray:
        """Per-call latency in ms, after ``n_warmup`` untimed calls (default: host clock)."""
        if x is None:
            x = np.random.default_rng(0).standard_normal(self.input_shape).astype(self.input_dtype)
        if not self._active:
            self.activate()
        for _ in range(n_warmup):
            self._infer(x)
        out = np.empty(n_iters)
        for i in range(n_iters):
            t0 = time.perf_counter()
            self._infer(x)
            out[i] = (time.perf_counter() - t0) * 1e3
        return out


class Backend(abc.ABC):
    """Factory of runners for one execution engine."""

    name: ClassVar[str]
    artifact_suffix: ClassVar[str]
    #: False for an analytic backend: it times nothing, the profiler prices every block
    #: with :meth:`estimate_ms` and marks the table as not measured on hardware.
    measures: ClassVar[bool] = True
    #: When profiling, measure every N-th channel width per axis and interpolate the rest
    #: (more than 1 where each block is slow to build: TensorRT).
    default_subsample: ClassVar[int] = 1
    #: True when an artifact loads only on the runtime version that built it (TensorRT
    #: engines): the selector refuses a bundle built by another version.
    artifacts_bound_to_version: ClassVar[bool] = False
    #: Where the runners of a bundle deployed for a ``kind`` device (cpu, cuda, jetson)
    #: run: ``None`` follows the kind (cpu stays cpu, cuda and jetson run on cuda).
    serving_device: ClassVar[str | None] = None

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()

    @classmethod
    @abc.abstractmethod
    def available(cls) -> bool:
        """True when the backend's libraries (and device) are present."""

    @abc.abstractmethod
    def version(self) -> str:
        """Version string of the underlying runtime, recorded in artifacts."""

    @abc.abstractmethod
    def prepare(self, module: Any, example: Any, workdir: Path) -> Runner:
        """Compile a torch module for this backend and return a runner for ``example``'s shape."""

    def prepare_many(self, modules: Sequence[Any], example: Any, workdirs: Sequence[Path],
                     progress: Callable[[], None] | None = None) -> list[Runner]:
        """:meth:`prepare` for many modules (one workdir each; ``progress`` is called after each)."""
        out = []
        for m, wd in zip(modules, workdirs):
            out.append(self.prepare(m, example, wd))
            if progress is not None:
                progress()
        return out

    def prepare_subnets(self, net: DynamicNet, specs: Sequence[SubnetSpec], example: Any, workdirs: Sequence[Path],
                        progress: Callable[[], None] | None = None,
                        log: Callable[[str], None] | None = None) -> list[Runner]:
        """Runners for whole sub-nets of ``net``, to be timed (the profiler's calibration and
        validation, the probes of re-check and deploy), one workdir each. Default:
        :meth:`prepare_many` on each extracted sub-net; :class:`OnnxBackend` derives their ONNX
        graphs from one export instead, with the shared BatchNorm statistics where a sub-net has
        its own (values that change no latency). ``log`` gets one-line notes."""
        return self.prepare_many([net.extract(s) for s in specs], example, workdirs, progress=progress)

    @abc.abstractmethod
    def build(self, onnx_path: Path, out_path: Path) -> Path:
        """Compile an ONNX model to this backend's deployable artifact at ``out_path``."""

    @abc.abstractmethod
    def load(self, artifact: Path, input_shape: tuple[int, ...]) -> Runner:
        """Load a built artifact for repeated inference."""

    def load_for_serving(self, artifacts: Sequence[Path], input_shape: tuple[int, ...]) -> tuple[list[Runner], Any]:
        """Load a bundle's artifacts to serve requests from many threads: the runners, activated,
        and what they share (None: nothing, they may run concurrently; otherwise the caller runs
        one at a time). TensorRT overrides this: its runners share one activation buffer."""
        return [self.load(Path(a), input_shape).activate() for a in artifacts], None

    def block_runner(self, key: BlockKey, workdir: Path) -> Runner:
        """A runner for one latency-table block (:class:`~edgedyn.blocks.BlockKey`).

        The default writes the block as ONNX and goes through :meth:`build` and
        :meth:`load`, as deploy does; backends with a faster path override it.
        """
        import onnx

        from ..blocks.models import block_onnx

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        onnx_path = workdir / "block.onnx"
        model = block_onnx(key)
        onnx.save(model, str(onnx_path))
        artifact = self.build(onnx_path, workdir / f"block{self.artifact_suffix}")
        shape = tuple(int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim)
        return self.load(artifact, shape)

    def layout(self) -> Layout:
        """How this backend lays activations out between blocks (:class:`~edgedyn.blocks.Layout`)."""
        from ..blocks.layout import PLAIN

        return PLAIN

    def default_threads(self) -> int | None:
        """The CPU intra-op thread count this backend runs with when none is asked for, or
        None where it has no thread count to choose (the default). A backend that returns
        one gets its count chosen by timing when profiled (:mod:`edgedyn.profile.threads`),
        and the table records it."""
        return None

    def estimate_ms(self, key: BlockKey) -> float:
        """An analytic backend's latency of one block in ms (``measures`` False); a backend
        that measures has no estimate."""
        raise BackendUnavailable(f"backend {self.name!r} measures blocks; it has no analytic estimate")

    def sources(self) -> list[dict[str, Any]]:
        """Where an analytic backend's figures come from (``{"title", "url"}`` each), for its tables."""
        return []

    def overhead_runner(self) -> Runner | None:
        """A runner for a model that does (almost) nothing: the fixed cost of one call, which
        every block measurement includes once and a whole sub-net pays once. None: not measured."""
        return None

    def device_info(self) -> dict[str, Any]:
        """Facts about the device this backend runs on (CPU model, GPU name, driver, ...)."""
        from ..device import device_info

        return device_info(self.options.device)


class OnnxBackend(Backend):
    """A backend that compiles ONNX (ONNX Runtime, TensorRT): :meth:`prepare` exports the
    module, then :meth:`from_onnx` builds a runner from the file; :meth:`prepare_many`
    exports in parallel processes (the exporter takes 1-2 s per small network);
    :meth:`prepare_subnets` exports the full network once and derives its sub-nets' graphs
    (:mod:`edgedyn.dynamic.onnx_derive`)."""

    def check_ready(self) -> None:
        """Raise :class:`~edgedyn.errors.BackendUnavailable` when nothing can be built here;
        called before the (slow) exports. Default: nothing to check."""

    @abc.abstractmethod
    def from_onnx(self, onnx_path: Path, example: Any) -> Runner:
        """A runner for an exported ONNX file (artifacts are built next to the file)."""

    def prepare(self, module: Any, example: Any, workdir: Path) -> Runner:
        from ..export import export_onnx

        self.check_ready()
        return self.from_onnx(export_onnx(module, example, Path(workdir) / "model.onnx"), example)

    def prepare_many(self, modules: Sequence[Any], example: Any, workdirs: Sequence[Path],
                     progress: Callable[[], None] | None = None) -> list[Runner]:
        from ..export import export_many

        self.check_ready()
        paths = export_many([(m, example, Path(wd) / "model.onnx") for m, wd in zip(modules, workdirs)],
                            progress=progress)
        return [self.from_onnx(p, example) for p in paths]

    def from_onnx_model(self, model: Any, example: Any, workdir: Path) -> Runner:
        """A runner for an ONNX ``ModelProto`` held in memory. Default: written to
        ``workdir/model.onnx``, then :meth:`from_onnx`; backends that load from memory override it."""
        from ..artifacts import atomic_write_bytes

        return self.from_onnx(atomic_write_bytes(Path(workdir) / "model.onnx", model.SerializeToString()), example)

    def prepare_subnets(self, net: DynamicNet, specs: Sequence[SubnetSpec], example: Any, workdirs: Sequence[Path],
                        progress: Callable[[], None] | None = None,
                        log: Callable[[str], None] | None = None) -> list[Runner]:
        """The sub-nets' ONNX graphs derived from one export of the full network, each loaded by
        :meth:`from_onnx_model` as it is derived (a sub-net whose graph cannot be derived is
        exported on its own, ``log`` says why, and it goes through :meth:`from_onnx`)."""
        from ..dynamic.onnx_derive import subnet_onnx_each

        self.check_ready()

        def load(i: int, model: Any) -> Runner:
            runner = self.from_onnx_model(model, example, Path(workdirs[i]))
            if progress is not None:
                progress()
            return runner

        out = subnet_onnx_each(net, specs, example, [Path(wd) / "model.onnx" for wd in workdirs], load, log=log,
                               timing_only=True)
        runners = []
        for r in out:
            if isinstance(r, Path):
                r = self.from_onnx(r, example)
                if progress is not None:
                    progress()
            runners.append(r)
        return runners
