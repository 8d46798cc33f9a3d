"""The block grid between timings: which keys to time, the rest interpolated, equivalent ones pooled.

- :func:`subsample_keys`: every ``step``-th width per channel axis (and the ends) is timed;
- :func:`interpolate`: the others are (bi)linear in the channel counts of timed neighbours;
- :func:`share_as_run`: keys that run the same computation share the mean of their timings.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..blocks import BlockKey, as_run
from ..errors import EdgedynError
from .table import Entry


def subsample_keys(keys: list[BlockKey], step: int) -> tuple[list[BlockKey], list[BlockKey]]:
    """Split keys into (measure, interpolate): every ``step``-th width per axis plus the ends."""
    if step <= 1:
        return list(keys), []
    by_geom: dict[BlockKey, list[BlockKey]] = {}
    for k in keys:
        by_geom.setdefault(k.with_channels(0, 0), []).append(k)
    measure: list[BlockKey] = []
    interp: list[BlockKey] = []
    for ks in by_geom.values():
        cins, couts = sorted({k.c_in for k in ks}), sorted({k.c_out for k in ks})
        keep_in = {c for i, c in enumerate(cins) if i % step == 0 or i == len(cins) - 1}
        keep_out = {c for i, c in enumerate(couts) if i % step == 0 or i == len(couts) - 1}
        for k in ks:
            (measure if k.c_in in keep_in and k.c_out in keep_out else interp).append(k)
    return measure, interp


def interpolate(entries: dict[BlockKey, Entry], wanted: list[BlockKey]) -> dict[BlockKey, Entry]:
    """Fill ``wanted`` keys by (bi)linear interpolation over channel counts of measured neighbours."""
    from scipy.interpolate import RegularGridInterpolator

    out: dict[BlockKey, Entry] = {}
    by_geom: dict[BlockKey, dict[tuple[int, int], float]] = {}
    for k, e in entries.items():
        if e.source == "measured":
            by_geom.setdefault(k.with_channels(0, 0), {})[(k.c_in, k.c_out)] = e.ms
    for k in wanted:
        pts = by_geom.get(k.with_channels(0, 0))
        if not pts:
            raise EdgedynError(f"cannot interpolate block {k.to_str()}: nothing measured with its geometry")
        if all(ci == co for ci, co in pts):  # pools, adds, depthwise: one channel axis
            xs = sorted(p[0] for p in pts)
            out[k] = Entry(float(np.interp(k.c_in, xs, [pts[(x, x)] for x in xs])), "interpolated")
            continue
        cins, couts = sorted({p[0] for p in pts}), sorted({p[1] for p in pts})
        grid = np.array([[pts.get((ci, co), np.nan) for co in couts] for ci in cins])
        if np.isnan(grid).any():
            raise EdgedynError(f"cannot interpolate block {k.to_str()}: its measured grid is incomplete")
        axes, values, point = [], grid, []
        if len(cins) > 1:
            axes.append(np.array(cins, float))
            point.append(k.c_in)
        else:
            values = values[0]
        if len(couts) > 1:
            axes.append(np.array(couts, float))
            point.append(k.c_out)
        else:
            values = values[..., 0] if values.ndim > 1 else values
        ms = float(RegularGridInterpolator(axes, values)(np.array([point]))[0]) if axes else float(values)
        out[k] = Entry(ms, "interpolated")
    return out


def share_as_run(entries: dict[BlockKey, Entry]) -> int:
    """Give measured keys that run the same computation (:func:`~edgedyn.blocks.layout.as_run`)
    the mean of their timings; returns how many entries were pooled.

    Their timings differ only by noise: a cold call of a 5-50 us block moves by several
    microseconds with its neighbours in the pool, and on resnet20 that noise had put
    16 -> 16-channel convs below the call's fixed cost (entries of 0 us) while 16 -> 8 read
    8 us more. Pooling removes noise that the search would otherwise exploit. Idempotent.
    """
    groups: dict[BlockKey, list[BlockKey]] = {}
    for k, e in entries.items():
        if e.source == "measured":
            groups.setdefault(as_run(k), []).append(k)
    pooled = 0
    for ks in groups.values():
        if len(ks) < 2:
            continue
        ms = float(np.mean([entries[k].ms for k in ks]))
        for k in ks:  # each keeps its own spread (p10 / p90: its lowest and highest pass)
            entries[k] = dataclasses.replace(entries[k], ms=ms)
        pooled += len(ks)
    return pooled
