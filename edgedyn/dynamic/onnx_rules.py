"""How each ONNX operator carries a channel slice, for :mod:`~edgedyn.dynamic.onnx_derive`.

A sub-net keeps, on the channel axis of each activation, some of the full network's
channels (a :class:`Cut`: the axis and the kept positions). A walk over the full graph in
topological order hands every node the cuts of its inputs; the node's rule checks them,
slices the constants the node reads (weights, biases, per-channel factors, a Reshape's
target shape, a grouped conv's ``group``) and gives its outputs their cuts.

Only the operators below have rules. Any other operator reached by a cut raises
:class:`DeriveError`, so a graph the rules do not cover is never guessed at: the caller
exports that sub-net instead. A conv or linear layer takes its output channels from the
:class:`~edgedyn.dynamic.groups.LayerInfo` of its weight (the same
:func:`~edgedyn.dynamic.slicing.side_width` that :meth:`DynamicNet.extract` uses), and its
input channels must be the ones that layer expects, else :class:`DeriveError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from ..errors import EdgedynError
from .groups import LayerInfo
from .slicing import side_width
from .spec import SubnetSpec


class DeriveError(EdgedynError):
    """A sub-net's ONNX graph cannot be derived from the full one (the caller exports it instead)."""


@dataclass(frozen=True)
class Cut:
    """The channels a sub-net keeps of one tensor: positions ``index`` (ascending) of ``axis``."""

    axis: int
    index: np.ndarray

    def same(self, other: Cut) -> bool:
        return self.axis == other.axis and np.array_equal(self.index, other.index)


def make_cut(axis: int, index: np.ndarray, full: int) -> Cut | None:
    """A cut, or None when it keeps every position of the axis."""
    if len(index) == full and np.array_equal(index, np.arange(full)):
        return None
    return Cut(axis, index)


def take(a: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``a`` at positions ``index`` of ``axis``: ``a`` itself when that is all of them."""
    if len(index) == a.shape[axis] and np.array_equal(index, np.arange(len(index))):
        return a
    if np.array_equal(index, np.arange(len(index))):  # a prefix: a basic slice, one copy
        return np.ascontiguousarray(a[(slice(None),) * axis + (slice(len(index)),)])
    return np.take(a, index, axis=axis)


def expand_index(index: np.ndarray, per: int) -> np.ndarray:
    """Positions after flattening a channel axis with ``per`` elements per channel."""
    return (index[:, None] * per + np.arange(per)).ravel()


@dataclass
class Walk:
    """One derivation: the full graph's facts, the cuts found so far and the changes to make."""

    spec: SubnetSpec
    shapes: dict[str, tuple[int, ...]]  # full shapes
    consts: dict[str, np.ndarray]  # full values of initializers and Constant outputs
    layers: dict[str, LayerInfo]  # weight name -> the layer it belongs to
    cuts: dict[str, Cut] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # constant name -> new value
    groups: dict[int, int] = field(default_factory=dict)  # node position -> new ``group``
    #: (node position, input index) -> a constant of its own, where the exporter gave several
    #: nodes one constant (an untrained network's BatchNorm weights, all ones) and they slice it apart
    own: dict[tuple[int, int], tuple[str, np.ndarray]] = field(default_factory=dict)

    def cut(self, name: str) -> Cut | None:
        return self.cuts.get(name) if name else None

    def shape(self, name: str, node: Any) -> tuple[int, ...]:
        if name not in self.shapes:
            raise DeriveError(f"{node.op_type} node {node.name!r}: no static shape for {name!r}")
        return self.shapes[name]

    def const(self, name: str, node: Any) -> np.ndarray:
        """The full network's value of a constant (never a slicing another node made)."""
        if name not in self.consts:
            raise DeriveError(f"{node.op_type} node {node.name!r}: input {name!r} is not a constant")
        return self.consts[name]

    def set_value(self, name: str, value: np.ndarray, node: Any) -> None:
        """Give constant ``name`` a new value (one value per constant, whoever reads it)."""
        if not self.try_value(name, value):
            raise DeriveError(f"{node.op_type} node {node.name!r}: constant {name!r} is read with two slicings")

    def try_value(self, name: str, value: np.ndarray) -> bool:
        """:meth:`set_value` where no other reader gave ``name`` another value; False otherwise."""
        old = self.values.get(name)
        if old is not None and not (old.shape == value.shape and np.array_equal(old, value)):
            return False
        self.values[name] = value
        return True

    def set_out(self, name: str, cut: Cut | None) -> None:
        if cut is not None and name:
            self.cuts[name] = cut


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _refuse(node: Any, why: str) -> DeriveError:
    return DeriveError(f"{node.op_type} node {node.name!r}: {why}")


def _side(w: Walk, info: LayerInfo, side: str) -> np.ndarray:
    """The positions a layer keeps on one side, as :meth:`DynamicNet.extract` selects them."""
    if side == "in":
        width, index = side_width(w.spec, info.in_group, info.in_parts, info.in_channels // info.expand, info.expand)
        width *= info.expand
    else:
        width, index = side_width(w.spec, info.out_group, info.out_parts, info.out_channels)
    return np.arange(width) if index is None else index.numpy()


def _layer(w: Walk, node: Any, kind: str) -> LayerInfo:
    info = w.layers.get(node.input[1])
    if info is None or info.kind != kind:
        raise _refuse(node, f"weight {node.input[1]!r} is no {kind} layer of the network")
    return info


def _check_input(w: Walk, node: Any, axis: int, expected: np.ndarray, full: int) -> None:
    got = w.cut(node.input[0])
    have = np.arange(full) if got is None else got.index
    if (got is not None and got.axis != axis) or not np.array_equal(have, expected):
        raise _refuse(node, f"its input keeps other channels than layer {w.layers[node.input[1]].name!r} expects")


def _bias(w: Walk, node: Any, pos: int, out: np.ndarray, full: int) -> None:
    if len(node.input) > pos and node.input[pos]:
        name = node.input[pos]
        b = w.const(name, node)
        if b.shape == (full,):
            w.set_value(name, take(b, out, 0), node)
        elif b.size != 1:
            raise _refuse(node, f"bias {name!r} of shape {b.shape} is not per output channel")


def conv(w: Walk, pos: int, node: Any) -> None:
    info = _layer(w, node, "conv")
    weight = w.const(node.input[1], node)
    c_out, per_in = weight.shape[0], weight.shape[1]
    group = int(_attr(node, "group", 1))
    out = _side(w, info, "out")
    if group == 1:
        inn = _side(w, info, "in")
        _check_input(w, node, 1, inn, per_in)
        w.set_value(node.input[1], take(take(weight, out, 0), inn, 1), node)
    else:  # grouped / depthwise: a prefix of whole conv groups, the group count shrinks
        per_out = c_out // group
        if not np.array_equal(out, np.arange(len(out))) or len(out) % per_out:
            raise _refuse(node, "a grouped conv keeps a prefix of whole conv groups only")
        new_group = len(out) // per_out
        _check_input(w, node, 1, np.arange(new_group * per_in), group * per_in)
        w.set_value(node.input[1], take(weight, out, 0), node)
        if new_group != group:
            w.groups[pos] = new_group
    _bias(w, node, 2, out, c_out)
    w.set_out(node.output[0], make_cut(1, out, c_out))


def gemm(w: Walk, pos: int, node: Any) -> None:
    if int(_attr(node, "transA", 0)):
        raise _refuse(node, "transA is not supported")
    info = _layer(w, node, "linear")
    weight = w.const(node.input[1], node)
    trans_b = int(_attr(node, "transB", 0))
    c_out, c_in = weight.shape if trans_b else weight.shape[::-1]
    out, inn = _side(w, info, "out"), _side(w, info, "in")
    _check_input(w, node, 1, inn, c_in)
    rows, cols = (out, inn) if trans_b else (inn, out)
    w.set_value(node.input[1], take(take(weight, rows, 0), cols, 1), node)
    _bias(w, node, 2, out, c_out)
    w.set_out(node.output[0], make_cut(1, out, c_out))


def batchnorm(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is not None and cut.axis != 1:
        raise _refuse(node, "its input is sliced off the channel axis")
    for i, name in enumerate(node.input[1:5], start=1):
        full = w.const(name, node)
        value = full if cut is None else take(full, cut.index, 0)
        if not w.try_value(name, value):  # shared with a node that slices it otherwise: a copy of its own
            w.own[(pos, i)] = (f"{name}.edgedyn{pos}", value)
    w.set_out(node.output[0], cut)


def same(w: Walk, pos: int, node: Any) -> None:
    """Elementwise on one activation (extra inputs are scalars): the output keeps its cut."""
    cut = w.cut(node.input[0])
    if any(w.cut(i) is not None for i in node.input[1:]):
        raise _refuse(node, "a sliced tensor as a parameter")
    for out in node.output[:1]:
        w.set_out(out, cut)


def pool(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is not None and cut.axis != 1:
        raise _refuse(node, "its input is sliced off the channel axis")
    if len(node.output) > 1 and node.output[1]:
        raise _refuse(node, "its indices output counts positions across the channels")
    w.set_out(node.output[0], cut)


def broadcast(w: Walk, pos: int, node: Any) -> None:
    """Elementwise on several inputs with numpy broadcasting (Add, Mul, ...)."""
    out_shape = w.shape(node.output[0], node)
    rank = len(out_shape)
    cuts = [(i, c) for i, c in ((i, w.cut(i)) for i in node.input) if c is not None]
    if not cuts:
        return
    first = cuts[0][1]
    axis = first.axis + rank - len(w.shape(cuts[0][0], node))
    for name, c in cuts[1:]:
        if c.axis + rank - len(w.shape(name, node)) != axis or not np.array_equal(c.index, first.index):
            raise _refuse(node, "its inputs keep different channels")
    for name in node.input:
        if w.cut(name) is not None:
            continue
        shape = w.shape(name, node) if name in w.shapes else w.const(name, node).shape
        k = axis - (rank - len(shape))
        if k < 0 or shape[k] == 1:
            continue  # broadcast along the sliced axis
        if name not in w.consts:
            raise _refuse(node, f"input {name!r} is not sliced where the others are")
        w.set_value(name, take(w.const(name, node), first.index, k), node)
    w.set_out(node.output[0], Cut(axis, first.index))


def concat(w: Walk, pos: int, node: Any) -> None:
    rank = len(w.shape(node.output[0], node))
    axis = int(_attr(node, "axis")) % rank
    cuts = [w.cut(i) for i in node.input]
    if all(c is None for c in cuts):
        return
    if any(c is not None and c.axis == axis for c in cuts):  # channels concatenated: offsets
        if any(c is not None and c.axis != axis for c in cuts):
            raise _refuse(node, "inputs sliced on different axes")
        pieces, offset = [], 0
        for name, c in zip(node.input, cuts):
            full = w.shape(name, node)[axis]
            pieces.append(offset + (np.arange(full) if c is None else c.index))
            offset += full
        w.set_out(node.output[0], make_cut(axis, np.concatenate(pieces), offset))
        return
    first = cuts[0]
    if first is None or any(c is None or not c.same(first) for c in cuts):
        raise _refuse(node, "its inputs keep different channels")
    w.set_out(node.output[0], first)


def transpose(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is not None:
        rank = len(w.shape(node.input[0], node))
        perm = list(_attr(node, "perm", range(rank - 1, -1, -1)))
        w.set_out(node.output[0], Cut(perm.index(cut.axis), cut.index))


def _axes(w: Walk, node: Any, rank: int) -> list[int] | None:
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = w.const(node.input[1], node).tolist()
    return None if axes is None else sorted(int(a) % rank for a in axes)


def reduce(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is None:
        return
    rank = len(w.shape(node.input[0], node))
    axes = _axes(w, node, rank)
    if not axes:
        if int(_attr(node, "noop_with_empty_axes", 0)):
            w.set_out(node.output[0], cut)
            return
        axes = list(range(rank))
    if cut.axis in axes:
        raise _refuse(node, "it reduces over the sliced channel axis")
    keep = int(_attr(node, "keepdims", 1))
    w.set_out(node.output[0], Cut(cut.axis - (0 if keep else sum(a < cut.axis for a in axes)), cut.index))


def squeeze(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is None:
        return
    shape = w.shape(node.input[0], node)
    axes = _axes(w, node, len(shape)) or [i for i, d in enumerate(shape) if d == 1]
    if cut.axis in axes:
        raise _refuse(node, "it squeezes the sliced channel axis")
    w.set_out(node.output[0], Cut(cut.axis - sum(a < cut.axis for a in axes), cut.index))


def unsqueeze(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is None:
        return
    axes = _axes(w, node, len(w.shape(node.output[0], node))) or []
    axis = cut.axis
    for a in axes:  # ascending output positions: each one before the axis moves it right
        if a <= axis:
            axis += 1
    w.set_out(node.output[0], Cut(axis, cut.index))


def _reshaped(node: Any, cut: Cut, src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[Cut, int]:
    """The cut after reshaping ``src`` to ``dst`` and the output axis whose size changes."""
    a = cut.axis
    if dst[:a] == src[:a] and len(dst) == a + 1 and dst[a] == prod(src[a:]):  # flattened from the axis on
        return Cut(a, expand_index(cut.index, prod(src[a + 1:]))), a
    if dst[:a + 1] == src[:a + 1] and prod(dst[a + 1:]) == prod(src[a + 1:]):  # only the dims after it change
        return cut, a
    raise _refuse(node, f"a reshape of {list(src)} to {list(dst)} that moves the sliced channel axis")


def reshape(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is None:
        return
    new, axis = _reshaped(node, cut, w.shape(node.input[0], node), w.shape(node.output[0], node))
    target = w.const(node.input[1], node)
    if target[axis] > 0:
        target = target.copy()
        target[axis] = len(new.index)
        w.set_value(node.input[1], target, node)
    w.set_out(node.output[0], new)


def flatten(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is None:
        return
    src = w.shape(node.input[0], node)
    axis = int(_attr(node, "axis", 1))
    axis += len(src) if axis < 0 else 0
    if cut.axis < axis or prod(src[axis:cut.axis]) != 1:
        raise _refuse(node, "it flattens the sliced channel axis into the leading dims")
    w.set_out(node.output[0], Cut(1, expand_index(cut.index, prod(src[cut.axis + 1:]))))


def gather_nd(w: Walk, pos: int, node: Any) -> None:
    cut = w.cut(node.input[0])
    if cut is None:
        return
    indices = w.const(node.input[1], node)
    k = indices.shape[-1]
    if int(_attr(node, "batch_dims", 0)) or cut.axis < k or w.cut(node.input[1]) is not None:
        raise _refuse(node, "it gathers along the sliced channel axis")
    w.set_out(node.output[0], Cut(indices.ndim - 1 + cut.axis - k, cut.index))


Rule = Callable[[Walk, int, Any], None]
_UNARY = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu",
          "Erf", "Identity", "Dropout", "Softplus", "Softsign", "Mish", "Sqrt", "Neg", "Abs", "Exp", "Log", "Reciprocal",
          "Cast", "Floor", "Ceil", "Round", "Sign")
_POOL = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
_BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu")
_REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare")
RULES: dict[str, Rule] = {
    "Conv": conv, "Gemm": gemm, "BatchNormalization": batchnorm, "Concat": concat, "Transpose": transpose,
    "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Reshape": reshape, "Flatten": flatten, "GatherND": gather_nd,
    **dict.fromkeys(_UNARY, same), **dict.fromkeys(_POOL, pool), **dict.fromkeys(_BROADCAST, broadcast),
    **dict.fromkeys(_REDUCE, reduce),
}
