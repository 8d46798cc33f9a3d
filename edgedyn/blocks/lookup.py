"""Which block keys a sub-net uses, and which any sub-net of a model can use (the profiling grid)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .key import BlockKey
from .layout import PLAIN, Layout
from .trace import model_blocks

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec


def subnet_keys(net: DynamicNet, spec: SubnetSpec, batch: int = 1, precision: str = "fp32",
                layout: Layout | None = None) -> list[BlockKey]:
    """The block keys of one sub-net in execution order (with ``layout``'s reorders)."""
    if layout is not None and layout.kind != "plain":
        return layout.subnet_keys(net, spec, batch, precision)
    net.check_spec(spec)
    return [t.key(spec, batch, precision) for t in model_blocks(net)]


def all_keys(net: DynamicNet, batch: int = 1, precision: str = "fp32",
             layout: Layout | None = None) -> list[BlockKey]:
    """Every distinct block key any valid sub-net of ``net`` can use (the profiling grid)."""
    return (layout or PLAIN).all_keys(net, batch, precision)
