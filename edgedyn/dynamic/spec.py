"""SubnetSpec: the one sub-net description used everywhere (tables, search, manifest, selector)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError


@dataclass(frozen=True, order=True)
class SubnetSpec:
    """A sub-net: one active width (channel count) per coupling group, in group order.

    Frozen and hashable, so it keys latency tables, engine caches, manifests and the
    runtime selector alike. A spec carries no model; :meth:`DynamicNet.check_spec`
    validates it against one.
    """

    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        if not widths:
            raise SpecError("spec has no widths")
        for i, w in enumerate(widths):
            if isinstance(w, bool) or not isinstance(w, int):
                raise SpecError(f"spec width {i} is {w!r}, expected an integer channel count")
        object.__setattr__(self, "widths", widths)

    def __len__(self) -> int:
        return len(self.widths)

    def __getitem__(self, group: int) -> int:
        return self.widths[group]

    def replace(self, group: int, width: int) -> SubnetSpec:
        """A copy with group ``group`` set to ``width``."""
        w = list(self.widths)
        w[group] = width
        return SubnetSpec(tuple(w))

    def contains(self, other: SubnetSpec) -> bool:
        """True when ``other`` is nested in this spec (every width <=)."""
        return len(other) == len(self) and all(o <= s for o, s in zip(other.widths, self.widths))

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"widths": list(self.widths)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, obj: Any, where: str = "spec") -> SubnetSpec:
        """Parse ``{"widths": [...]}`` (or a bare list); one-line SpecError naming ``where``."""
        if isinstance(obj, dict):
            if "widths" not in obj:
                raise SpecError(f"{where}: field 'widths' is missing")
            obj = obj["widths"]
        if not isinstance(obj, (list, tuple)):
            raise SpecError(f"{where}: 'widths' must be a list of integers")
        try:
            return cls(tuple(obj))
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "spec") -> SubnetSpec:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{where}: not valid JSON ({err.msg} at char {err.pos})") from None
        return cls.from_dict(obj, where)

    @classmethod
    def of(cls, widths: Iterable[int]) -> SubnetSpec:
        return cls(tuple(int(w) for w in widths))

    def __str__(self) -> str:
        return "[" + ",".join(map(str, self.widths)) + "]"
