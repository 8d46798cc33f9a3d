"""What one profile run is asked to do (:class:`ProfileConfig`), with its defaults resolved."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..backends import DEVICE_DEFAULTS, backend_class
from ..errors import EdgedynError

#: Device kind -> the (backend, precision) it gets by default (kept under its old name).
DEVICE_BACKEND_DEFAULTS = DEVICE_DEFAULTS


@dataclass
class ProfileConfig:
    model: str
    out: Path
    input_size: int | None = None
    num_classes: int | None = None
    device: str = "cpu"
    backend: str | None = None  # default follows the device
    precision: str | None = None
    batch: int = 1
    threads: int | None = None
    channel_groups: int = 8
    group_size: int | None = None
    min_groups: int = 1
    subsample: int | None = None  # measure every N-th width per axis; default: the backend's (tensorrt 2)
    calibrate: int = 144  # whole sub-nets: enough for per-block corrections (calibration.py)
    validate: int = 0
    probes: int = 12  # reference sub-nets stored for edgedyn recheck (states.DEFAULT_PROBES); 0: none
    roofline_device: Path | None = None
    resume: bool = False
    merge: bool = False
    overwrite: bool = False  # a fresh profile may replace an existing <out>.partial.json
    chunk: int = 512  # blocks timed together: a large pool leaves each block as cold as in a network
    passes: int = 3  # each block is timed in this many differently shuffled pools
    thorough: bool = False  # about twice the calls per block and per whole sub-net (measure.py)

    def resolved(self) -> ProfileConfig:
        """A copy with the device's default backend and precision, and the backend's default
        subsample, filled in; one-line errors for values no profile can use."""
        if self.device not in DEVICE_DEFAULTS:
            raise EdgedynError(f"unknown device {self.device!r}; choose cpu, cuda or jetson")
        backend, precision = DEVICE_DEFAULTS[self.device]
        cfg = ProfileConfig(**{**asdict(self), "out": Path(self.out)})
        cfg.backend = self.backend or backend
        cfg.precision = self.precision or precision
        if cfg.subsample is None:
            cfg.subsample = backend_class(cfg.backend).default_subsample
        if cfg.batch < 1 or cfg.subsample < 1 or cfg.calibrate < 0 or cfg.validate < 0 or cfg.passes < 1:
            raise EdgedynError("batch, subsample and passes must be >= 1; calibrate and validate >= 0")
        if cfg.probes != 0 and not 2 <= cfg.probes <= 64:
            raise EdgedynError(f"probes must be 0 (none) or 2 to 64, got {cfg.probes}")
        if cfg.threads is not None and cfg.threads < 1:
            raise EdgedynError(f"threads must be >= 1, got {cfg.threads}")
        if cfg.resume and cfg.overwrite:
            raise EdgedynError("give --resume or --overwrite, not both")
        return cfg

    @property
    def backend_name(self) -> str:
        """The backend (resolved configs always have one)."""
        if self.backend is None:
            raise EdgedynError("the profile's backend is not resolved yet (ProfileConfig.resolved())")
        return self.backend

    @property
    def precision_name(self) -> str:
        """The precision (resolved configs always have one)."""
        if self.precision is None:
            raise EdgedynError("the profile's precision is not resolved yet (ProfileConfig.resolved())")
        return self.precision

    @property
    def partial_path(self) -> Path:
        out = Path(self.out)
        return out.with_name(out.name + ".partial.json")

    def check_paths(self) -> None:
        """Refuse, before anything is measured or written, an ``out`` that cannot be written,
        one that holds something other than a latency table (unless ``overwrite``), and a
        fresh profile that would overwrite an interrupted one's progress."""
        out = Path(self.out)
        if out.is_dir():
            raise EdgedynError(f"{out}: is a folder; --out must be a table file (JSON)")
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise EdgedynError(f"{out}: {parent} is a file, not a folder; choose another --out")
                break
        from ..artifacts import refuse_foreign
        from .table import TABLE_SCHEMA

        refuse_foreign(out, TABLE_SCHEMA, allow=self.overwrite, hint="; choose another --out, or pass --overwrite "
                       "to replace it")
        partial = self.partial_path
        if partial.exists() and not self.resume and not self.overwrite:
            raise EdgedynError(f"{partial}: an interrupted profile's progress is there; continue it with "
                               "--resume or discard it with --overwrite")
