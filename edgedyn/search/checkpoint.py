"""The resumable state of a search run, and its checkpoint file.

A checkpoint is written atomically after every epoch and every search step: the weights,
the settings a resumed run must share (``SearchConfig.identity``) and a :class:`RunState`.
Schema 4 (this layout): the state's fields at the top level of the blob, path points, legs
and the selection as plain dicts (``torch.load(weights_only=True)`` reads them back).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import atomic_write_bytes
from ..errors import ArtifactError, EdgedynError
from .progressive import PathPoint

CHECKPOINT_SCHEMA = "edgedyn.search_checkpoint/4"
#: Every phase a run can have, in order. A unit of phase P draws its random streams from
#: (seed, index of P here, unit), so this order is part of every result: append, never reorder.
PHASES = ("pretrain", "rank", "supernet", "search", "train", "final")


@dataclass
class Leg:
    """One leg of autoslim's search: slimmed (or grown) above ``floor`` to ``limit``; the
    indices of its points on the path."""

    floor: list[int]
    budget: str
    limit: float
    points: list[int] = field(default_factory=list)
    done: bool = False

    def to_result(self) -> dict[str, Any]:
        return {"budget": self.budget, "floor": self.floor, "points": self.points}


@dataclass
class Selected:
    """A budget's pick, kept once re-selection made it (a resumed run makes the same picks)."""

    budget: str
    point: PathPoint
    before_train: dict[str, float] | None = None  # autoslim's diagnostic: accuracies on the one-shot weights

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"budget": self.budget, "point": self.point.to_dict()}
        if self.before_train is not None:
            d["before_train"] = self.before_train
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selected:
        return cls(d["budget"], PathPoint.from_dict(d["point"]), d.get("before_train"))


@dataclass
class RunState:
    """Where a run is: the phase and the units of it done, and what the phases produced."""

    phase: str = PHASES[0]
    index: int = 0
    optimizer: dict[str, Any] | None = None  # the running phase's optimizer state
    alphas: list[torch.Tensor] | None = None  # the noise ranking's trainable scales
    path: list[PathPoint] = field(default_factory=list)  # every point the search recorded
    steps: list[dict[str, Any]] = field(default_factory=list)  # every search step's record
    selection: list[Selected] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    legs: list[Leg] = field(default_factory=list)

    def add_point(self, point: PathPoint) -> PathPoint:
        """Record ``point`` as the checkpoint keeps it (so a resumed run holds the same values); returns it."""
        point = PathPoint.from_dict(point.to_dict())
        self.path.append(point)
        return point

    def to_blob(self) -> dict[str, Any]:
        return {"phase": self.phase, "index": self.index, "optimizer": self.optimizer, "alphas": self.alphas,
                "path": [p.to_dict() for p in self.path], "steps": self.steps,
                "selection": None if self.selection is None else [s.to_dict() for s in self.selection],
                "timings": self.timings, "legs": [asdict(g) for g in self.legs]}

    @classmethod
    def from_blob(cls, blob: dict[str, Any]) -> RunState:
        sel = blob.get("selection")
        return cls(phase=blob["phase"], index=int(blob["index"]), optimizer=blob.get("optimizer"),
                   alphas=blob.get("alphas"), path=[PathPoint.from_dict(d) for d in blob.get("path") or []],
                   steps=list(blob.get("steps") or []),
                   selection=None if sel is None else [Selected.from_dict(d) for d in sel],
                   timings=dict(blob.get("timings") or {}), legs=[Leg(**g) for g in blob.get("legs") or []])


def save_checkpoint(path: Path, identity: dict[str, Any], state_dict: dict[str, torch.Tensor], state: RunState) -> None:
    """Write the checkpoint atomically."""
    blob = {"schema": CHECKPOINT_SCHEMA, "config": identity,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **state.to_blob()}
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, identity: dict[str, Any]) -> tuple[dict[str, torch.Tensor], RunState] | None:
    """The weights and state of ``path`` (None when there is none); one-line errors for a bad
    file or for settings that differ from ``identity``."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(f"{path}: not a readable checkpoint ({_first_line(err)[:120]})") from None
    if not isinstance(blob, dict) or blob.get("schema") != CHECKPOINT_SCHEMA:
        raise ArtifactError(f"{path}: field 'schema' is not {CHECKPOINT_SCHEMA!r}")
    config = blob.get("config")
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: field 'config' must be an object, got {type(config).__name__}")
    if config != identity:
        diff = sorted(str(k) for k in set(config) | set(identity) if config.get(k) != identity.get(k))
        raise EdgedynError(f"{path}: cannot resume, the run's settings differ ({', '.join(diff)[:200]})")
    try:
        state = RunState.from_blob(blob)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, EdgedynError) as err:
        raise ArtifactError(f"{path}: field 'state' is malformed ({_first_line(err)})") from None
    if state.phase not in PHASES:
        raise ArtifactError(f"{path}: field 'phase' is {str(state.phase)[:40]!r}, not one of {', '.join(PHASES)}")
    if state.index < 0:
        raise ArtifactError(f"{path}: field 'index' is {state.index}, must be >= 0")
    if state.alphas is not None and not (isinstance(state.alphas, list)
                                         and all(isinstance(a, torch.Tensor) for a in state.alphas)):
        raise ArtifactError(f"{path}: field 'alphas' must be a list of tensors")
    if state.optimizer is not None and not isinstance(state.optimizer, dict):
        raise ArtifactError(f"{path}: field 'optimizer' must be an optimizer's state (a dict)")
    if "state_dict" not in blob:
        raise ArtifactError(f"{path}: field 'state_dict' is missing")
    return blob["state_dict"], state


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:160]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def check_tensors(path: Path, field: str, got: Any, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``got`` holds exactly ``expected``'s tensors, each of its shape; a one-line
    :class:`ArtifactError` naming the file and the tensor (``field.key``) otherwise."""
    if not isinstance(got, dict):
        raise ArtifactError(f"{path}: field {field!r} must be a dict of tensors, got {type(got).__name__}")
    for key, want in expected.items():
        if key not in got:
            raise ArtifactError(f"{path}: tensor '{field}.{key}' is missing")
        have = got[key]
        if not isinstance(have, torch.Tensor):
            raise ArtifactError(f"{path}: '{field}.{key}' is a {type(have).__name__}, not a tensor")
        if have.shape != want.shape:
            raise ArtifactError(f"{path}: tensor '{field}.{key}' has shape {_shape(have)}, the model's is "
                                f"{_shape(want)}")
    extra = [str(k)[:80] for k in got if k not in expected]
    if extra:
        raise ArtifactError(f"{path}: tensor '{field}.{extra[0]}' is not one of the model's "
                            f"({len(extra)} unexpected)")
    return got


def check_saved_list(path: Path, field: str, saved: Sequence[Any], like: Sequence[torch.Tensor]) -> None:
    """``saved`` (a checkpoint's list of tensors, e.g. the ranking's scales) matches ``like``
    tensor for tensor, in count and shape; one-line ArtifactError otherwise."""
    if len(saved) != len(like):
        raise ArtifactError(f"{path}: field {field!r} holds {len(saved)} tensors, this run has {len(like)}")
    for i, (have, want) in enumerate(zip(saved, like)):
        if not isinstance(have, torch.Tensor) or have.shape != want.shape:
            got = _shape(have) if isinstance(have, torch.Tensor) else type(have).__name__
            raise ArtifactError(f"{path}: tensor '{field}[{i}]' is {got}, expected shape {_shape(want)}")


def check_optimizer(path: Path, opt: torch.optim.Optimizer) -> None:
    """After ``opt.load_state_dict(saved)``: every per-parameter state tensor fits its parameter."""
    for g, group in enumerate(opt.param_groups):
        for i, p in enumerate(group["params"]):
            for name, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ArtifactError(f"{path}: tensor 'optimizer.state.{name}' of parameter {i} in group {g} "
                                        f"has shape {_shape(value)}, the parameter's is {_shape(p)}")
