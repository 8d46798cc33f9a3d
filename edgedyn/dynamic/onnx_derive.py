"""Sub-nets' ONNX graphs derived from one export of the full network.

Exporting a sub-net (``torch.onnx.export``, dynamo) takes seconds, almost all of it in
Python; the profiler times some 150 whole sub-nets per model. Every sub-net's graph is the
full network's graph with fewer channels, so :class:`SubnetOnnx` exports the full network
once, with the exporter and settings of :mod:`edgedyn.export` (the graph deploy builds:
BatchNorm folded into the convs, zero biases dropped), and derives a sub-net's model by
slicing the initializers: conv and linear weights along their output and input channels
(the channels :meth:`DynamicNet.extract` keeps, from the same
:func:`~edgedyn.dynamic.slicing.side_width`), biases and other per-channel constants, a
grouped conv's ``group``, a Reshape's target shape. The intermediate shapes recorded in the
graph (``value_info``) get the sub-net's channel counts. :mod:`~edgedyn.dynamic.onnx_rules`
says how each operator carries the channel slice; a node no rule covers raises
:class:`DeriveError` and :func:`subnet_onnx_files` exports that sub-net instead.

The derived graph holds the weights the network had when it was exported: derive before
changing them. A sub-net with its own BatchNorm statistics (``DynamicNet.bn_stats``) is
not derived (the exported convs hold the shared statistics folded in), unless the graphs
are only to be timed (``timing_only``): the statistics change the folded values, never the
graph, so its latency is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .onnx_rules import RULES, DeriveError, Walk
from .spec import SubnetSpec

if TYPE_CHECKING:
    import onnx
    import torch

    from .net import DynamicNet

__all__ = ["DeriveError", "SubnetOnnx", "subnet_onnx_each", "subnet_onnx_files"]

T = TypeVar("T")

#: Operators a weight of the network may feed (others raise rather than be guessed at).
_WEIGHT_OPS = ("Conv", "Gemm")
#: Operators walked even where nothing sliced reaches them: they claim their constants at full
#: width, which the exporter may share with a node that slices them (untrained BatchNorms).
_CLAIMS = ("BatchNormalization",)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor of ``model`` (inferred where the exporter left none)."""
    import onnx

    graph = model.graph
    if len(graph.value_info) < len(graph.node) - len(graph.output):
        model = onnx.shape_inference.infer_shapes(model)
        graph = model.graph
    out: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


class SubnetOnnx:
    """The full network's ONNX model (exported once) and the models of its sub-nets derived from it.

    Args:
        net: the dynamic network, at the weights ``model`` was exported with.
        model: ``net.extract(net.full_spec())`` exported by :func:`edgedyn.export.export_proto`.
    """

    def __init__(self, net: DynamicNet, model: onnx.ModelProto, timing_only: bool = False) -> None:
        import onnx

        graph = model.graph
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise DeriveError(f"{node.op_type} node {node.name!r} holds a subgraph")
            if node.domain not in ("", "ai.onnx"):
                raise DeriveError(f"{node.op_type} node {node.name!r} is of domain {node.domain!r}")
        init_names = {t.name for t in graph.initializer}
        if any(i.name in init_names for i in graph.input):
            raise DeriveError("an initializer is also a graph input")
        self.net = net
        self.full = net.full_spec()
        # sub-nets whose BatchNorm statistics are their own (their values, not their graph, differ)
        self.stats = set() if timing_only else set(net.bn_stats)
        self.shapes = _shapes(model)
        self.consts = _constants(graph)
        self.layers = {f"{i.name}.weight": i for i in net.layers.values() if i.kind in ("conv", "linear")}
        self.initializers = list(graph.initializer)
        self.skeleton = onnx.ModelProto()
        self.skeleton.CopyFrom(model)
        del self.skeleton.graph.initializer[:]
        self.weight_users = {n.input[1] for n in graph.node if n.op_type in _WEIGHT_OPS and len(n.input) > 1}

    @classmethod
    def export(cls, net: DynamicNet, example: torch.Tensor, timing_only: bool = False) -> SubnetOnnx:
        """Export ``net``'s full width once (as :mod:`edgedyn.export` exports every sub-net)."""
        from ..export import export_proto

        return cls(net, export_proto(net.extract(net.full_spec()).cpu(), example, where=f"{net.name} (full)"),
                   timing_only)

    def _walk(self, spec: SubnetSpec) -> Walk:
        walk = Walk(spec, self.shapes, self.consts, self.layers)
        for pos, node in enumerate(self.skeleton.graph.node):
            uses_weight = any(i in self.layers for i in node.input)
            if not uses_weight and all(walk.cut(i) is None for i in node.input) and node.op_type not in _CLAIMS:
                continue  # nothing sliced reaches it: unchanged
            rule = RULES.get(node.op_type)
            if rule is None or uses_weight and node.op_type not in _WEIGHT_OPS:
                raise DeriveError(f"{node.op_type} node {node.name!r} reads sliced channels; no rule derives it")
            rule(walk, pos, node)
        return walk

    def derive(self, spec: SubnetSpec, check: bool = False) -> onnx.ModelProto:
        """The ONNX model of sub-net ``spec``; :class:`DeriveError` where it cannot be derived.
        ``check``: and where ONNX's strict shape inference disagrees with a shape it records."""
        from onnx import numpy_helper

        self.net.check_spec(spec)
        if spec != self.full and (spec in self.stats or self.full in self.stats):
            raise DeriveError(f"sub-net {spec} or the full network has BatchNorm statistics of its own")
        walk = self._walk(spec)
        model = type(self.skeleton)()
        model.CopyFrom(self.skeleton)
        graph = model.graph
        for pos, group in walk.groups.items():  # a grouped conv (group > 1) always has the attribute
            next(a for a in graph.node[pos].attribute if a.name == "group").i = group
        for (pos, i), (name, _) in walk.own.items():
            graph.node[pos].input[i] = name
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] in walk.values:
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(walk.values[node.output[0]], node.output[0]))
        for vi in (*graph.value_info, *graph.output):
            dims = vi.type.tensor_type.shape.dim
            cut = walk.cuts.get(vi.name)
            if cut is not None:
                dims[cut.axis].dim_value = len(cut.index)
            elif vi.name in walk.values:  # the exporter records the initializers' shapes too
                for d, n in zip(dims, walk.values[vi.name].shape):
                    d.dim_value = n
        inits = []
        for t in self.initializers:
            value = walk.values.get(t.name)
            if value is None or value is self.consts[t.name]:
                inits.append(t)
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(value), t.name))
        inits += [numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in walk.own.values()]
        if check:
            _check_shapes(model, inits)
        graph.initializer.extend(inits)
        return model

    def write(self, spec: SubnetSpec, path: str | os.PathLike, check: bool = True) -> Path:
        """Derive ``spec``'s model (shapes checked unless ``check`` is False) and write it atomically."""
        from ..artifacts import atomic_write_bytes

        return atomic_write_bytes(path, self.derive(spec, check).SerializeToString())


def _check_shapes(model: onnx.ModelProto, initializers: Sequence[onnx.TensorProto]) -> None:
    """Raise :class:`DeriveError` unless ONNX's strict shape inference agrees with every shape
    ``model`` (no initializers yet) records. Cheap: large initializers go in as shapes only."""
    import onnx

    light = onnx.ModelProto()
    light.CopyFrom(model)
    for t in initializers:
        if int(np.prod(t.dims)) > 64:
            light.graph.initializer.append(onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims))
        else:
            light.graph.initializer.append(t)
    try:
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except Exception as err:  # onnx raises InferenceError, ValidationError and others
        first = str(err).strip().splitlines()[0][:200]
        raise DeriveError(f"the derived graph's shapes do not check ({first})") from None


def subnet_onnx_files(net: DynamicNet, specs: Sequence[SubnetSpec], example: torch.Tensor,
                      paths: Sequence[str | os.PathLike], log: Callable[[str], None] | None = None,
                      timing_only: bool = False) -> list[Path]:
    """Write the ONNX model of each spec to its path: derived from one export of the full network,
    exported one by one (:func:`edgedyn.export.export_many`) for any that cannot be derived
    (``log`` gets one line saying why). ``timing_only``: the models are only timed, so sub-nets
    with BatchNorm statistics of their own are derived too (see the module's note)."""
    from ..artifacts import atomic_write_bytes

    def write(i: int, model: onnx.ModelProto) -> Path:
        return atomic_write_bytes(paths[i], model.SerializeToString())

    return [Path(p) for p in subnet_onnx_each(net, specs, example, paths, write, log, timing_only)]


def subnet_onnx_each(net: DynamicNet, specs: Sequence[SubnetSpec], example: torch.Tensor,
                     paths: Sequence[str | os.PathLike], use: Callable[[int, onnx.ModelProto], T],
                     log: Callable[[str], None] | None = None, timing_only: bool = False) -> list[T | Path]:
    """Each spec's ONNX model, in spec order: ``use(i, model)`` for those derived from one export
    of the full network, one model in memory at a time (nothing is written unless ``use``
    writes it); the path for any exported one by one to ``paths[i]`` (``log`` says why)."""
    from ..export import export_many

    out: list[T | Path | None] = [None] * len(specs)
    reason = ""
    try:
        derived = SubnetOnnx.export(net, example, timing_only)
    except DeriveError as err:
        reason = str(err)
    else:
        for i, spec in enumerate(specs):
            try:
                model = derived.derive(spec, check=True)
            except DeriveError as err:
                reason = reason or str(err)
                continue
            out[i] = use(i, model)
            del model
    todo = [i for i, p in enumerate(out) if p is None]
    if todo:
        if log is not None:
            log(f"{net.name}: {len(todo)} of {len(specs)} sub-nets exported one by one, "
                f"their ONNX cannot be derived from the full network's ({reason})")
        exported = export_many([(net.extract(specs[i]).cpu(), example, paths[i]) for i in todo])
        for i, p in zip(todo, exported):
            out[i] = Path(p)
    return [p for p in out if p is not None]
