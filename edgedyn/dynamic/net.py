"""DynamicNet: a real model made width-dynamic over its coupling groups."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ArtifactError, SpecError
from .groups import CouplingGroup, LayerInfo, find_groups
from .layers import DYNAMIC_TYPES, ChannelSliced, DynamicBatchNorm2d, make_static
from .slicing import apply_spec, layer_macs, layer_params, make_layer_dynamic, module_of, permute_member, whole_units
from .spec import SubnetSpec
from .verify import freeze_unfollowed
from .weights import WEIGHTS_SCHEMA, check_state_dict, load_weights_file, read_torch_file, state_dict_from_checkpoint

if TYPE_CHECKING:
    from ..models import ModelRef

__all__ = ["WEIGHTS_SCHEMA", "DynamicNet", "load_weights_file", "read_torch_file"]


class DynamicNet(nn.Module):
    """A model whose coupling groups can each run at any width of their channel grid.

    ``set_subnet(spec)`` makes every layer compute on a prefix slice of its weights, so
    a narrower sub-net really computes less. ``extract(spec)`` returns the same sub-net
    as a plain dense model. BatchNorm statistics can be recalibrated and kept per sub-net.

    Args:
        model: a supported CNN (its classifier's output is never slimmed). It is copied.
        example_input: a tensor of the input shape used to trace coupling groups.
        channel_groups: split every coupling group into this many equal channel groups.
        group_size: instead, an absolute hardware-aligned step (8, 16, 32 channels).
        min_groups: each group's floor, in channel groups (never zero).
        grid_block: also every multiple of this many channels above a group's floor (a
            block-aware grid; None: the grid alone). Recorded in :meth:`config` only when set.
        name: the registry name, when built by :meth:`from_name`.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        channel_groups: int = 8,
        group_size: int | None = None,
        min_groups: int = 1,
        grid_block: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        groups, layers, classifier = find_groups(model, example_input, channel_groups, group_size, min_groups,
                                                 grid_block)
        self.model = model
        self.groups: list[CouplingGroup] = groups
        self.layers: dict[str, LayerInfo] = layers
        self.classifier = classifier
        self.input_shape = tuple(example_input.shape)
        self.name = name or type(model).__name__.lower()
        self.num_classes = layers[classifier].out_channels
        self._options: dict[str, Any] = {"channel_groups": channel_groups, "group_size": group_size,
                                         "min_groups": min_groups}
        if grid_block is not None:  # only when set: every other network's config is as before
            self._options["grid_block"] = grid_block
        self._modules_by_name = dict(model.named_modules())
        self.model_ref: ModelRef | None = None  # set by from_name
        for info in layers.values():
            make_layer_dynamic(self._modules_by_name, info)
        self.groups = freeze_unfollowed(model, groups, layers, example_input)
        self.bn_stats: dict[SubnetSpec, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._active = self.full_spec()
        self.set_subnet(self._active)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_name(
        cls,
        name: str | ModelRef,
        num_classes: int | None = None,
        input_size: int | None = None,
        **options: Any,
    ) -> DynamicNet:
        """Build a model, untrained, from a reference: a torchvision classification model or
        ``resnet20`` / ``resnet56`` by name, or ``path/to/file.py:function`` /
        ``package.module:function`` (see :func:`edgedyn.models.resolve_model`)."""
        from ..models import resolve_model

        ref = resolve_model(name)
        size = input_size or ref.default_input_size
        if size < ref.min_input_size:
            raise SpecError(f"model {ref.ref!r} needs an input size >= {ref.min_input_size}, got {size}")
        model = ref.build(num_classes, size)
        net = cls(model, torch.zeros(1, 3, size, size), name=ref.ref, **options)
        net.model_ref = ref
        return net

    from_ref = from_name

    def config(self) -> dict[str, Any]:
        """What :meth:`from_name` needs to rebuild this network (JSON-able).

        A factory reference adds ``model_sha256``, the hash of its source file.
        """
        cfg = {"model": self.name, "num_classes": self.num_classes, "input_size": self.input_shape[-1],
               **self._options}
        if self.model_ref is not None and self.model_ref.source_sha256 is not None:
            cfg["model_sha256"] = self.model_ref.source_sha256
        return cfg

    def signature(self) -> str:
        """A short hash of the architecture and channel grids; artifacts record it."""
        desc = [(g.channels, g.grid, g.floor, [(m.layer, m.side, m.expand) for m in g.members]) for g in self.groups]
        blob = json.dumps([self.name, self.input_shape, self.num_classes, desc]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def arch_signature(self) -> str:
        """A short hash of the architecture and input shape only (not the channel grid).

        Whole-network calibrations depend on the layers, not on which widths a search may
        choose, so latency tables key them by this.
        """
        layers = sorted((i.name, i.kind, i.in_channels, i.out_channels, i.in_hw, i.out_hw, i.in_group is None,
                         i.out_group is None) for i in self.layers.values())
        coupling = sorted(tuple(sorted((m.layer, m.side) for m in g.members)) for g in self.groups)
        blob = json.dumps([self.name, self.input_shape, layers, coupling]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- specs ------------------------------------------------------------------------
    def full_spec(self) -> SubnetSpec:
        return SubnetSpec(tuple(g.channels for g in self.groups))

    def min_spec(self) -> SubnetSpec:
        return SubnetSpec(tuple(g.floor for g in self.groups))

    def random_spec(self, seed: int | None = None, floor_p: float = 0.0) -> SubnetSpec:
        """A random valid spec: each group independently at its floor with probability
        ``floor_p``, else uniformly over its grid (``floor_p=0``: uniform everywhere)."""
        if not 0.0 <= floor_p <= 1.0:
            raise SpecError(f"floor_p must be in [0, 1], got {floor_p}")
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        widths = []
        for g in self.groups:
            choices = g.widths_from()
            if floor_p > 0.0 and float(torch.rand(1, generator=gen)) < floor_p:
                widths.append(choices[0])
                continue
            widths.append(choices[int(torch.randint(len(choices), (1,), generator=gen))])
        return SubnetSpec(tuple(widths))

    def uniform_spec(self, ratio: float) -> SubnetSpec:
        """Every group at the smallest grid width >= ratio * channels (US-Nets style)."""
        widths = []
        for g in self.groups:
            target = ratio * g.channels
            widths.append(next((w for w in g.widths_from() if w >= target - 1e-9), g.channels))
        return SubnetSpec(tuple(widths))

    def check_spec(self, spec: SubnetSpec) -> SubnetSpec:
        """Raise :class:`SpecError` (one line) unless ``spec`` is valid for this network."""
        if not isinstance(spec, SubnetSpec):
            raise SpecError(f"expected a SubnetSpec, got {type(spec).__name__}")
        if len(spec) != len(self.groups):
            raise SpecError(f"spec has {len(spec)} widths, model {self.name!r} has {len(self.groups)} coupling groups")
        for g, w in zip(self.groups, spec.widths):
            label = f"group {g.index} ({g.name})"
            if w > g.channels:
                raise SpecError(f"{label}: width {w} exceeds the maximum {g.channels}")
            if w < g.floor:
                raise SpecError(f"{label}: width {w} is below the floor {g.floor}")
            if w not in g.grid:
                raise SpecError(f"{label}: width {w} is off the channel grid {list(g.grid)}")
        return spec

    # -- running a sub-net ------------------------------------------------------------
    @property
    def active_spec(self) -> SubnetSpec:
        return self._active

    def set_subnet(self, spec: SubnetSpec) -> None:
        """Make every layer compute only its active channels (a prefix, or a prefix of each
        concatenated input)."""
        self.check_spec(spec)
        stats = self.bn_stats.get(spec)
        for info in self.layers.values():
            apply_spec(module_of(self._modules_by_name, info), info, spec, stats)
        self._active = spec

    # -- frozen layers ----------------------------------------------------------------
    def frozen_groups(self) -> list[CouplingGroup]:
        """Coupling groups held at full width (``CouplingGroup.frozen`` says why)."""
        return [g for g in self.groups if g.frozen]

    def frozen_layers(self) -> dict[str, str]:
        """Layer name -> why a side of it stays at full width (frozen groups included)."""
        out = {i.name: i.frozen for i in self.layers.values() if i.frozen}
        for g in self.frozen_groups():
            for m in g.members:
                out.setdefault(m.layer, f"in frozen group {g.index} ({g.name})")
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- channel order ----------------------------------------------------------------
    def permute_channels(self, group: int, perm: Sequence[int] | torch.Tensor) -> None:
        """Reorder a coupling group's channels everywhere they appear (function unchanged).

        Per-sub-net BatchNorm statistics are dropped: a new order changes which channels
        each sub-net keeps, so they must be recalibrated. A frozen group is left as it is
        (it always runs at full width). In a group of grouped convs (``unit`` > 1) channels
        move only in whole conv groups: the conv groups are ordered by the mean position of
        their channels in ``perm`` (see :func:`~edgedyn.dynamic.slicing.whole_units`).
        """
        g = self.groups[group]
        perm = torch.as_tensor(perm, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(g.channels)):
            raise SpecError(f"group {group} ({g.name}): not a permutation of {g.channels} channels")
        if g.frozen:
            return  # always at full width: the order of its channels changes no sub-net
        if g.unit > 1:
            perm = whole_units(perm, g.unit)
        with torch.no_grad():
            for m in g.members:
                info = self.layers[m.layer]
                permute_member(module_of(self._modules_by_name, info), info, m, g.channels, perm)
        self.bn_stats.clear()

    # -- BatchNorm --------------------------------------------------------------------
    def bn_layers(self) -> list[tuple[str, DynamicBatchNorm2d]]:
        return [(n, m) for n, m in self._modules_by_name.items() if isinstance(m, DynamicBatchNorm2d)]

    @torch.no_grad()
    def calibrate_bn(self, spec: SubnetSpec, batches: Iterable[Any], num_batches: int = 200) -> int:
        """Recalibrate BatchNorm statistics for ``spec`` and keep them for that sub-net.

        Resets the statistics, then runs up to ``num_batches`` batches in train mode with a
        cumulative moving average. Batches are tensors or ``(inputs, labels)`` pairs.
        The shared running statistics are left unchanged. Returns the batch count used.
        """
        self.set_subnet(spec)
        bns = self.bn_layers()
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
                 for _, m in bns]
        was_training = self.training
        for _, m in bns:
            m.reset_running_stats()
            m.momentum = None
        self.train()
        seen = 0
        try:
            for batch in batches:
                if seen >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                self.model(x.to(next(self.parameters()).device))
                seen += 1
            if seen == 0:
                raise ValueError("calibrate_bn needs at least one batch")
            self.bn_stats[spec] = {n: tuple(t.clone() for t in m.active_stats()) for n, m in bns}  # type: ignore[misc]
        finally:
            for (_, m), (mean, var, nbt, mom) in zip(bns, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(nbt)
                m.momentum = mom
            self.train(was_training)
        self.set_subnet(spec)
        return seen

    # -- extraction -------------------------------------------------------------------
    def extract(self, spec: SubnetSpec) -> nn.Module:
        """A plain dense torch model with only ``spec``'s channels (and its BN statistics)."""
        previous = self._active
        self.set_subnet(spec)
        try:
            model = copy.deepcopy(self.model)
        finally:
            self.set_subnet(previous)
        for mod in model.modules():
            if isinstance(mod, (*DYNAMIC_TYPES, ChannelSliced)):
                make_static(mod)
        return model.eval()

    def export_onnx(self, spec: SubnetSpec, path: str | os.PathLike, batch: int = 1) -> Path:
        """Extract ``spec`` and export it to ONNX (opset >= 17)."""
        from ..export import export_onnx

        example = torch.zeros(batch, *self.input_shape[1:])
        return export_onnx(self.extract(spec).cpu(), example, path)

    # -- cost -------------------------------------------------------------------------
    def layer_macs(self, spec: SubnetSpec, info: LayerInfo) -> int:
        """Multiply-accumulates of one layer under ``spec``.

        Inference BatchNorm is ``y = a * x + b``: one multiply-add per output element.
        """
        return layer_macs(spec, info)

    def macs(self, spec: SubnetSpec | None = None) -> int:
        """MACs for one input: convs, linear layers and BatchNorm (thop's convention).

        resnet18 at 224x224 with 1000 classes gives 1.817 G (1.814 G of it convs + fc).
        """
        spec = self.check_spec(spec or self._active)
        return sum(self.layer_macs(spec, i) for i in self.layers.values())

    def params(self, spec: SubnetSpec | None = None) -> int:
        """Parameter count of the extracted sub-net."""
        spec = self.check_spec(spec or self._active)
        return sum(layer_params(spec, i, module_of(self._modules_by_name, i)) for i in self.layers.values())

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Save weights, config and per-sub-net BN statistics (loadable with weights_only=True)."""
        import io

        from ..artifacts import atomic_write_bytes

        blob = {
            "schema": WEIGHTS_SCHEMA,
            "config": self.config(),
            "signature": self.signature(),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "bn_stats": {spec.to_json(): {n: [m.cpu(), v.cpu()] for n, (m, v) in stats.items()}
                         for spec, stats in self.bn_stats.items()},
            "extra": extra or {},
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DynamicNet:
        """Rebuild a network saved with :meth:`save` (a one-line error for a bad file)."""
        from ..models import resolve_model

        blob = load_weights_file(path)
        cfg = blob["config"]
        ref = resolve_model(cfg["model"])
        ref.check_unchanged(cfg.get("model_sha256"), str(path))
        net = cls.from_name(ref, num_classes=cfg["num_classes"], input_size=cfg["input_size"],
                            channel_groups=cfg["channel_groups"], group_size=cfg["group_size"],
                            min_groups=cfg["min_groups"], grid_block=cfg.get("grid_block"))
        if net.signature() != blob.get("signature"):
            raise ArtifactError(f"{path}: field 'signature' does not match the rebuilt {cfg['model']!r}")
        net.load_weights(blob, path)
        return net

    def load_checkpoint(self, path: str | os.PathLike, *, keep_bn_stats: bool = False) -> None:
        """Load an edgedyn weights file, a state dict or a common checkpoint (one-line errors).

        See :mod:`edgedyn.dynamic.weights` for the shapes accepted. An edgedyn weights file
        must be of the same model; its per-sub-net BatchNorm statistics are dropped unless
        ``keep_bn_stats``. Leaves the net at its full spec.
        """
        path = Path(path)
        blob = read_torch_file(path)
        if isinstance(blob, dict) and "schema" in blob:
            blob = load_weights_file(path)
            if blob["config"].get("model") != self.name:
                raise ArtifactError(f"{path}: field 'config.model' is {blob['config'].get('model')!r}, "
                                    f"expected {self.name!r}")
            check_state_dict(self.model, blob["state_dict"], path)
            self.load_weights(blob, path)
            if not keep_bn_stats:
                self.bn_stats.clear()
        else:
            state = state_dict_from_checkpoint(blob, path)
            check_state_dict(self.model, state, path)
            self.load_weights({"state_dict": state}, path)
        self.set_subnet(self.full_spec())

    def load_weights(self, blob: dict, where: str | os.PathLike = "weights") -> None:
        try:
            self.model.load_state_dict(blob["state_dict"])
        except (RuntimeError, KeyError) as err:
            first = str(err).strip().splitlines()[0]
            raise ArtifactError(f"{where}: field 'state_dict' does not fit the model ({first})") from None
        self.bn_stats = {
            self.check_spec(SubnetSpec.from_json(k, f"{where}: bn_stats key")): {n: (mv[0], mv[1]) for n, mv in v.items()}
            for k, v in blob.get("bn_stats", {}).items()
        }
        self.set_subnet(self._active)

