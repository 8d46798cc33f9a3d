"""``edgedyn profile --refit``: re-derive a table from the timings it holds, measuring nothing.

Pools padding-equivalent blocks (:func:`~edgedyn.profile.grid.share_as_run`), fits the
model's calibration again on its stored whole sub-nets and scores its stored validation
sub-nets: what an upgrade of edgedyn's table model needs, without the device (a Jetson) at hand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ArtifactError, EdgedynError
from .fitting import fit_table_calibration, score_validation
from .grid import share_as_run
from .table import LatencyTable, timestamp

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec


def refit_table(net: DynamicNet, path: Path, log: Callable[[str], None]) -> LatencyTable:
    """Refit ``net``'s calibration and validation in the table at ``path`` and save it there."""
    path = Path(path)
    table = LatencyTable.load(path)
    sig = net.arch_signature()
    cal = table.calibration.get(sig)
    if cal is None or len(cal.points) < 2:
        have = sorted(c.model for c in table.calibration.values()) or ["none"]
        raise ArtifactError(f"{path}: field 'calibration' holds no measured sub-nets of {net.name}@"
                            f"{net.input_shape[-1]} with these channel groups (it has: {', '.join(have)}); "
                            "nothing to refit: profile it")
    table.check_model(net)
    pooled = share_as_run(table.entries)
    log(f"{path}: {pooled} blocks pooled with blocks run on the same padded shapes")
    fit_table_calibration(table, net, *_points(net, path, cal.points, "calibration.points"), log)
    val = table.validation.get(sig)
    if val and val.get("points"):
        score_validation(table, net, *_points(net, path, val["points"], "validation.points"), log)
    table.backend["refit"] = timestamp()
    table.save(path)
    return table


def _points(net: DynamicNet, path: Path, rows: list[Any], where: str) -> tuple[list[SubnetSpec], np.ndarray]:
    """The sub-nets and measured latencies stored in ``rows``; one-line errors naming the field."""
    from ..dynamic import SubnetSpec

    specs, ms = [], []
    for i, r in enumerate(rows):
        at = f"{where}[{i}]"
        m = r.get("measured_ms") if isinstance(r, dict) else None
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < float("inf"):
            raise ArtifactError(f"{path}: field '{at}.measured_ms' is {m!r}, expected a latency in ms > 0")
        try:
            sp = SubnetSpec.from_dict(r, at)
            net.check_spec(sp)
        except EdgedynError as err:
            raise ArtifactError(f"{path}: field '{at}': {err}") from None
        specs.append(sp)
        ms.append(float(m))
    return specs, np.array(ms)
