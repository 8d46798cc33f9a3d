"""Analytic (roofline) block latency, for planning before the target hardware is at hand.

Nothing runs here: a :class:`RooflineDevice` holds a device's published peaks and a few
stated assumptions, and :func:`block_latency_ms` prices a :class:`BlockKey` with them.
:class:`RooflineBackend` (the backend ``roofline``) offers this to the profiler through the
analytic hooks of :class:`~edgedyn.backends.base.Backend` (``measures`` False, ``estimate_ms``).

The model, per block::

    c' = ceil(c / align[precision]) * align[precision]       (every channel count)
    compute_s = 2 * MACs(c') / (peak[precision] * eff)        (eff = depthwise_efficiency
                                                               for depthwise convs)
    memory_s  = elem_bytes[precision] * (input + output activations + weights)(c')
                / (bandwidth * memory_efficiency)
    latency   = max(compute_s, memory_s) + layer_overhead_s

- **Alignment.** Channel counts that are not a multiple of the precision's alignment
  (8 for fp16, 32 for int8 on tensor cores) are padded up, as TensorRT's vectorized
  formats (CHW8/CHW32, HWC8) do. The padded channels cost compute and bytes, which
  reproduces the latency steps measured on TensorRT (60 channels cost as much as 64).
- **Bytes.** Input activations (two inputs for an ``add``), output activations, the
  residual read of a fused add, and weights (+ bias), each once, at the precision's
  element size (fp32 4, fp16 2, int8 1). Caches are ignored (a small tensor that would
  stay in L2 is charged DRAM bandwidth), so small layers are over-priced slightly; the
  fixed overhead usually dominates them anyway.
- **Compute.** 2 FLOP (or OP) per MAC for conv and linear; pooling, gap and add count one
  op per input element (they are memory-bound). Depthwise convs cannot keep tensor cores
  busy, hence their own, lower efficiency.
- **Overhead.** One fixed cost per fused block (kernel launch, tail effects).

The efficiencies and the overhead are assumptions, stated in each device file; the
peaks and the bandwidth come from the vendor's published figures, with citations in
``sources``. The result is a planning estimate, not a measurement: the search should be
re-run on the measured table once the device is available.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, load_json, require
from ..blocks.key import BlockKey
from ..errors import ArtifactError, BackendUnavailable, EdgedynError
from .base import Backend, BackendOptions, Runner

SCHEMA = "edgedyn.roofline_device/1"
PRECISIONS = ("fp32", "fp16", "int8")
ELEM_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "profiles" / "devices"


@dataclass
class RooflineDevice:
    """Published peaks plus stated assumptions for one device (see the module docstring)."""

    name: str
    peak_ops_per_s: dict[str, float]  # fp32/fp16 in FLOP/s, int8 in OP/s (dense)
    memory_bandwidth_bytes_per_s: float
    layer_overhead_s: float  # assumption: fixed cost per fused block
    compute_efficiency: float = 0.6  # assumption: achievable fraction of peak compute
    depthwise_efficiency: float = 0.15  # assumption: same, for depthwise convs
    memory_efficiency: float = 0.7  # assumption: achievable fraction of peak bandwidth
    channel_alignment: dict[str, int] = field(default_factory=lambda: {"fp32": 1, "fp16": 8, "int8": 32})
    sources: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # derivations, assumptions (free text)

    def __post_init__(self) -> None:
        where = f"roofline device {self.name!r}"
        _check_device(self, where)

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "peak_ops_per_s": dict(self.peak_ops_per_s),
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
            "layer_overhead_s": self.layer_overhead_s,
            "compute_efficiency": self.compute_efficiency,
            "depthwise_efficiency": self.depthwise_efficiency,
            "memory_efficiency": self.memory_efficiency,
            "channel_alignment": dict(self.channel_alignment),
            "sources": list(self.sources),
            "notes": dict(self.notes),
        }

    def save(self, path: str | Path) -> Path:
        """Write this device as ``edgedyn.roofline_device/1`` JSON (atomically)."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> RooflineDevice:
        """Load and validate a device file; errors name the file and the field."""
        path = Path(path)
        obj = load_json(path, SCHEMA)
        return cls.from_json(obj, where=str(path))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "roofline device") -> RooflineDevice:
        num = (int, float)
        name = require(obj, "name", str, where)
        peaks = require(obj, "peak_ops_per_s", dict, where)
        for p in PRECISIONS:
            v = require(peaks, p, num, f"{where}: peak_ops_per_s")
            if v <= 0:
                raise ArtifactError(f"{where}: field 'peak_ops_per_s.{p}' must be > 0")
        align = require(obj, "channel_alignment", dict, where)
        for p in PRECISIONS:
            v = require(align, p, int, f"{where}: channel_alignment")
            if isinstance(v, bool) or v < 1:
                raise ArtifactError(f"{where}: field 'channel_alignment.{p}' must be an integer >= 1")
        values = {}
        for f in ("memory_bandwidth_bytes_per_s", "layer_overhead_s", "compute_efficiency",
                  "depthwise_efficiency", "memory_efficiency"):
            values[f] = float(require(obj, f, num, where))
        sources = require(obj, "sources", list, where)
        for i, s in enumerate(sources):
            if not isinstance(s, dict):
                raise ArtifactError(f"{where}: field 'sources[{i}]' must be an object with 'title' and 'url'")
            require(s, "title", str, f"{where}: sources[{i}]")
            require(s, "url", str, f"{where}: sources[{i}]")
        notes = obj.get("notes", {})
        if not isinstance(notes, dict):
            raise ArtifactError(f"{where}: field 'notes' must be dict, got {type(notes).__name__}")
        try:
            return cls(name=name, peak_ops_per_s={p: float(peaks[p]) for p in PRECISIONS},
                       channel_alignment={p: int(align[p]) for p in PRECISIONS}, sources=list(sources),
                       notes=dict(notes), **values)
        except EdgedynError as err:
            raise ArtifactError(f"{where}: {err}") from None


def _check_device(dev: RooflineDevice, where: str) -> None:
    """Value checks shared by the constructor and the loader (one-line errors)."""
    for p in PRECISIONS:
        if p not in dev.peak_ops_per_s or not dev.peak_ops_per_s[p] > 0:
            raise EdgedynError(f"{where}: field 'peak_ops_per_s.{p}' must be > 0")
        if p not in dev.channel_alignment or int(dev.channel_alignment[p]) < 1:
            raise EdgedynError(f"{where}: field 'channel_alignment.{p}' must be an integer >= 1")
    if not dev.memory_bandwidth_bytes_per_s > 0:
        raise EdgedynError(f"{where}: field 'memory_bandwidth_bytes_per_s' must be > 0")
    if not dev.layer_overhead_s >= 0:
        raise EdgedynError(f"{where}: field 'layer_overhead_s' must be >= 0")
    for f in ("compute_efficiency", "depthwise_efficiency", "memory_efficiency"):
        v = getattr(dev, f)
        if not 0 < v <= 1:
            raise EdgedynError(f"{where}: field '{f}' must be in (0, 1], got {v}")


def load_device(name_or_path: str | Path) -> RooflineDevice:
    """Load a device file by path, or by the name of a shipped one (``jetson_agx_orin_64gb``)."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = SHIPPED_DIR / f"{name_or_path}.json"
        if shipped.is_file():
            path = shipped
    return RooflineDevice.load(path)


def shipped_devices() -> list[str]:
    """Names of the device files shipped in ``profiles/devices``."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json")) if SHIPPED_DIR.is_dir() else []


# -- the model --------------------------------------------------------------------------
def _precision(dev: RooflineDevice, key: BlockKey) -> str:
    if key.precision not in PRECISIONS:
        raise EdgedynError(f"roofline device {dev.name!r} has no figures for precision {key.precision!r}")
    return key.precision


def padded_channels(dev: RooflineDevice, precision: str, c: int) -> int:
    """``c`` rounded up to the device's channel alignment for ``precision``."""
    a = int(dev.channel_alignment[precision])
    return int(math.ceil(c / a) * a)


def padded_key(dev: RooflineDevice, key: BlockKey) -> BlockKey:
    """``key`` with both channel counts padded to the alignment of its precision."""
    p = _precision(dev, key)
    return key.with_channels(padded_channels(dev, p, key.c_in), padded_channels(dev, p, key.c_out))


def block_ops(dev: RooflineDevice, key: BlockKey) -> float:
    """Arithmetic work of a block in FLOP (OP for int8), on padded channels."""
    k = padded_key(dev, key)
    if k.op in ("conv", "linear"):
        return 2.0 * k.macs()
    oh, ow = k.out_hw
    if k.op in ("maxpool", "avgpool"):
        return float(k.batch * k.c_in * oh * ow * k.kernel_hw[0] * k.kernel_hw[1])
    return float(k.macs())  # add, gap: one op per input element


def block_bytes(dev: RooflineDevice, key: BlockKey) -> float:
    """DRAM traffic of a block in bytes: activations in and out, residual, weights (padded)."""
    k = padded_key(dev, key)
    oh, ow = k.out_hw
    n_in = k.batch * k.c_in * k.in_h * k.in_w  # linear: in_h x in_w positions (1 x 1 after a flatten)
    n_out = k.batch * k.c_out * oh * ow
    weights = 0
    if k.op == "conv":
        weights = k.kernel_hw[0] * k.kernel_hw[1] * k.in_per_group * k.c_out + k.c_out
    elif k.op == "linear":
        weights = k.c_in * k.c_out + k.c_out
    elif k.op in ("layernorm", "layernorm2d", "affine"):
        weights = 2 * k.c_in
    elems = n_in + n_out + weights
    if k.op in ("add", "mul"):
        elems += n_in  # the second operand
    elif k.op == "scale":
        elems += k.batch * k.c_in  # one factor per channel
    if k.residual:
        elems += n_out  # the fused residual is read once
    return float(elems * ELEM_BYTES[k.precision])


def block_breakdown(dev: RooflineDevice, key: BlockKey) -> dict[str, Any]:
    """Compute time, memory time and overhead of a block, in seconds, and which bound it is."""
    p = _precision(dev, key)
    eff = dev.depthwise_efficiency if (key.op == "conv" and key.depthwise) else dev.compute_efficiency
    compute_s = block_ops(dev, key) / (dev.peak_ops_per_s[p] * eff)
    memory_s = block_bytes(dev, key) / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)
    return {"compute_s": compute_s, "memory_s": memory_s, "overhead_s": dev.layer_overhead_s,
            "bound": "compute" if compute_s >= memory_s else "memory"}


def block_latency_ms(dev: RooflineDevice, key: BlockKey) -> float:
    """Roofline latency of one fused block in ms: max(compute, memory) + overhead."""
    b = block_breakdown(dev, key)
    return (max(b["compute_s"], b["memory_s"]) + b["overhead_s"]) * 1e3


def predict_keys(dev: RooflineDevice, keys: Iterable[BlockKey]) -> dict[BlockKey, float]:
    """Roofline latency in ms of every distinct key (a table one can plan with)."""
    return {k: block_latency_ms(dev, k) for k in dict.fromkeys(keys)}


# -- the backend --------------------------------------------------------------------------
DEFAULT_DEVICE = "jetson_agx_orin_64gb"


class RooflineBackend(Backend):
    """The analytic backend: every block priced by :func:`block_latency_ms`; nothing runs.

    ``BackendOptions.extra["roofline_device"]``: the device file (default: the shipped
    Jetson AGX Orin 64GB). The profiler writes its tables unmeasured (``measures``).
    """

    name = "roofline"
    artifact_suffix = ".json"
    measures = False

    def __init__(self, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self._device: RooflineDevice | None = None

    @classmethod
    def available(cls) -> bool:
        return True

    def version(self) -> str:
        return "1"

    @property
    def device(self) -> RooflineDevice:
        """The device file, loaded (and checked) on first use."""
        if self._device is None:
            self._device = RooflineDevice.load(self.options.extra.get("roofline_device")
                                               or SHIPPED_DIR / f"{DEFAULT_DEVICE}.json")
        return self._device

    def device_info(self) -> dict[str, Any]:
        dev, kind = self.device, self.options.device
        return {"kind": kind, "name": dev.name, "fingerprint": f"{kind}:{dev.name}", "roofline": dev.to_json()}

    def estimate_ms(self, key: BlockKey) -> float:
        return block_latency_ms(self.device, key)

    def sources(self) -> list[dict[str, Any]]:
        return list(self.device.sources)

    def _runs_nothing(self) -> BackendUnavailable:
        return BackendUnavailable("the roofline backend estimates latencies for a profile; it runs no model "
                                  "(deploy with onnxruntime or tensorrt)")

    def prepare(self, module: Any, example: Any, workdir: Path) -> Runner:
        raise self._runs_nothing()

    def build(self, onnx_path: Path, out_path: Path) -> Path:
        raise self._runs_nothing()

    def load(self, artifact: Path, input_shape: tuple[int, ...] | None) -> Runner:
        raise self._runs_nothing()

    def block_runner(self, key: BlockKey, workdir: Path) -> Runner:
        raise self._runs_nothing()
