"""A block of one model: fixed geometry, channel counts taken from its coupling groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .key import BlockKey

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec


Parts = tuple[tuple[int | None, int], ...]  # (coupling group or None: fixed, full channels), in order


@dataclass(frozen=True)
class BlockTemplate:
    """A block of one model: fixed geometry, channel counts taken from coupling groups."""

    name: str  # the layer(s) it covers, for people
    op: str
    in_group: int | None  # group of the input channels (None: fixed)
    out_group: int | None
    c_in_fixed: int
    c_out_fixed: int
    in_h: int
    in_w: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    depthwise: bool = False
    residual: bool = False
    act: str = "none"
    expand: int = 1  # linear after flatten: input features per channel
    src: int = -1  # index of the block whose output this block reads (-1: the model input)
    res_src: int = -1  # a fused residual add: index of the block that computed the other operand
    group_width: int = 0  # a grouped conv: input channels per conv group (whole groups are kept)
    in_parts: Parts = ()  # input channels from several tensors (a concat, or a layer after one)
    kernel_w: int = 0  # see BlockKey: a non-square kernel's width (0: square)
    padding_w: int = -1  # its width padding (-1: as ``padding``)
    ceil: bool = False  # a pool whose output rounds up

    @property
    def parts(self) -> int:
        """How many tensors a concat joins (1 for every other block)."""
        return len(self.in_parts) if self.op == "concat" else 1

    def _in_channels(self, spec: SubnetSpec) -> int:
        if self.in_parts:
            return sum(spec[g] if g is not None else c for g, c in self.in_parts)
        return spec[self.in_group] if self.in_group is not None else self.c_in_fixed

    def channels(self, spec: SubnetSpec) -> tuple[int, int]:
        """(c_in, c_out) of this block in ``spec`` (before ``expand``)."""
        c_in = self._in_channels(spec)
        c_out = spec[self.out_group] if self.out_group is not None else self.c_out_fixed
        return c_in, c_out

    def key(self, spec: SubnetSpec, batch: int = 1, precision: str = "fp32", layout: str = "plain") -> BlockKey:
        return self.key_for(*self.channels(spec), batch, precision, layout)

    def key_for(self, c_in: int, c_out: int, batch: int = 1, precision: str = "fp32",
                layout: str = "plain") -> BlockKey:
        """The key at given channel counts (one-axis blocks take ``c_in`` for both)."""
        if self.op not in ("conv", "linear") or self.depthwise:
            c_out = c_in
        return BlockKey(self.op, c_in * self.expand, c_out, self.in_h, self.in_w, self.kernel, self.stride,
                        self.padding, self.depthwise, self.residual, self.act, batch, precision, layout,
                        self.group_width, self.parts, self.kernel_w, self.padding_w, self.ceil)

    def in_widths(self, net: DynamicNet) -> tuple[int, ...]:
        """Every input width a sub-net can give this block (sums of its parts' widths after a concat)."""
        if self.in_parts:
            sums = {0}
            for g, c in self.in_parts:
                sums = {s + w for s in sums for w in (net.groups[g].widths_from() if g is not None else (c,))}
            return tuple(sorted(sums))
        return net.groups[self.in_group].widths_from() if self.in_group is not None else (self.c_in_fixed,)

    def out_widths(self, net: DynamicNet) -> tuple[int, ...]:
        return net.groups[self.out_group].widths_from() if self.out_group is not None else (self.c_out_fixed,)
