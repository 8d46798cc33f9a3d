"""One cost interface for the search: latency table, FLOPs, or anything else.

The search only ever calls ``cost(net, spec)`` and reads ``unit``; it never knows whether
the number comes from a measured latency table, an analytic roofline table or MACs
(as once-for-all's ``get_efficiency(arch)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .dynamic import DynamicNet, SubnetSpec


@runtime_checkable
class CostModel(Protocol):
    """Cost of a sub-net: lower is cheaper. ``unit`` is ``"ms"`` for latency, ``"MMAC"`` for FLOPs."""

    name: str
    unit: str

    def cost(self, net: DynamicNet, spec: SubnetSpec) -> float: ...


class FlopsCost:
    """Millions of multiply-accumulates (the paper's cost, and edgedyn's comparison mode)."""

    name = "flops"
    unit = "MMAC"

    def cost(self, net: DynamicNet, spec: SubnetSpec) -> float:
        return net.macs(spec) / 1e6


class LatencyCost:
    """Predicted latency in ms from a :class:`~edgedyn.profile.LatencyTable`."""

    name = "latency"
    unit = "ms"

    def __init__(self, table) -> None:  # LatencyTable; untyped to keep imports light
        self.table = table

    def cost(self, net: DynamicNet, spec: SubnetSpec) -> float:
        return self.table.predict(net, spec)

    def check(self, net: DynamicNet) -> None:
        """Raise a one-line ArtifactError now if the table cannot price ``net``."""
        self.table.check_model(net)
