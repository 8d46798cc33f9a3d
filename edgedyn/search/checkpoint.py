"""The resumable state of a search run, and its checkpoint file.

A checkpoint is written atomically after every epoch and every search step: the weights,
the settings a resumed run must share (``SearchConfig.identity``) and a :class:`RunState`.
Schema 4 (this layout): the state's fields at the top level of the blob, path points, legs
and the selection as plain dicts (``torch.load(weights_only=True)`` reads them back).
"""

from __future__ import annotations

import io
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
        raise ArtifactError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(blob, dict) or blob.get("schema") != CHECKPOINT_SCHEMA:
        raise ArtifactError(f"{path}: field 'schema' is not {CHECKPOINT_SCHEMA!r}")
    if blob.get("config") != identity:
        theirs = blob.get("config") or {}
        diff = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
        raise EdgedynError(f"{path}: cannot resume, the run's settings differ ({', '.join(diff)})")
    try:
        state = RunState.from_blob(blob)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: field 'state' is malformed ({err})") from None
    return blob["state_dict"], state
