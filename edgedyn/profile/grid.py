"""The block grid between timings: which keys to time, the rest interpolated, equivalent ones pooled.

- :func:`subsample_keys`: every ``step``-th width per channel axis (and the ends) is timed;
- :func:`interpolate`: the others are (bi)linear in the channel counts of timed neighbours;
- :func:`share_as_run`: keys that run the same computation share the mean of their timings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
        if all(k.c_in == k.c_out for k in ks):  # one channel axis (pools, adds, norms): every step-th width
            widths = sorted({k.c_in for k in ks})
            keep_1d = {c for i, c in enumerate(widths) if i % step == 0 or i == len(widths) - 1}
            for k in ks:
                (measure if k.c_in in keep_1d else interp).append(k)
            continue
        # blocks sharing a geometry (e.g. a conv after a concat and one before it) each have a product
        # grid of widths; c_in values with the same c_out set form one product, subsampled on its own
        outs: dict[int, set[int]] = {}
        for k in ks:
            outs.setdefault(k.c_in, set()).add(k.c_out)
        products: dict[frozenset[int], list[int]] = {}
        for ci, cos in outs.items():
            products.setdefault(frozenset(cos), []).append(ci)
        keep: set[tuple[int, int]] = set()
        for outs_of, cis in products.items():
            cins, couts = sorted(cis), sorted(outs_of)
            keep_in = {c for i, c in enumerate(cins) if i % step == 0 or i == len(cins) - 1}
            keep_out = {c for i, c in enumerate(couts) if i % step == 0 or i == len(couts) - 1}
            keep |= {(a, b) for a in keep_in for b in keep_out}
        for k in ks:
            (measure if (k.c_in, k.c_out) in keep else interp).append(k)
    return measure, interp


def interpolate(entries: dict[BlockKey, Entry], wanted: list[BlockKey]) -> dict[BlockKey, Entry]:
    """Fill ``wanted`` keys by (bi)linear interpolation over channel counts of measured neighbours."""
    from scipy.interpolate import RegularGridInterpolator

    out: dict[BlockKey, Entry] = {}
    scattered: dict[BlockKey, Callable[[int, int], float]] = {}
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
        if np.isnan(grid).any():  # several blocks share the geometry (e.g. after a concat): one measured cell
            ms = _cell(k, pts)
            if ms is None:  # none near it: linear over the measured points' triangles, else the nearest
                geom = k.with_channels(0, 0)
                if geom not in scattered:
                    scattered[geom] = _scattered(pts)
                ms = scattered[geom](k.c_in, k.c_out)
            out[k] = Entry(ms, "interpolated")
            continue
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


def _scattered(pts: dict[tuple[int, int], float]) -> Callable[[int, int], float]:
    """Piecewise-linear interpolation over the Delaunay triangles of scattered measured points
    (nearest measured point outside their hull, or where they lie on a line)."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    xy = np.array(list(pts), float)
    z = np.array(list(pts.values()), float)
    nearest = NearestNDInterpolator(xy, z)
    try:
        linear = LinearNDInterpolator(xy, z)
    except Exception:  # scipy's QhullError: fewer than 3 points, or all on one line
        return lambda ci, co: float(nearest(ci, co))

    def at(ci: int, co: int) -> float:
        v = float(linear(ci, co))
        return v if np.isfinite(v) else float(nearest(ci, co))

    return at


def _cell(k: BlockKey, pts: dict[tuple[int, int], float], reach: tuple[int, ...] = (6, 24)) -> float | None:
    """Bilinear interpolation in the nearest cell around ``k`` whose four corners were measured
    (None where there is none).

    Cells are sought among the ``reach[0]`` nearest measured widths on each side of ``k`` per
    axis, then ``reach[1]``: a geometry shared by many blocks after concatenations (GoogLeNet's
    1x1 convs) has hundreds of input widths, and every cell of them is 10^8 candidates."""
    cins, couts = sorted({p[0] for p in pts}), sorted({p[1] for p in pts})
    for n in reach:
        los_i = [c for c in reversed(cins) if c <= k.c_in][:n]
        his_i = [c for c in cins if c >= k.c_in][:n]
        los_o = [c for c in reversed(couts) if c <= k.c_out][:n]
        his_o = [c for c in couts if c >= k.c_out][:n]
        cells = sorted(((a, b, c, d) for a in los_i for b in his_i for c in los_o for d in his_o),
                       key=lambda t: (t[1] - t[0]) * max(1, t[3] - t[2]) + (t[3] - t[2]))
        for i0, i1, o0, o1 in cells:
            if all((i, o) in pts for i in (i0, i1) for o in (o0, o1)):
                ti = (k.c_in - i0) / (i1 - i0) if i1 > i0 else 0.0
                to = (k.c_out - o0) / (o1 - o0) if o1 > o0 else 0.0
                low = pts[(i0, o0)] * (1 - to) + pts[(i0, o1)] * to
                high = pts[(i1, o0)] * (1 - to) + pts[(i1, o1)] * to
                return float(low * (1 - ti) + high * ti)
    return None


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
