"""The dynamic-width core: coupling groups, sub-net specs, slicing and extraction."""

from .groups import CouplingGroup, LayerInfo, Member, channel_grid
from .net import DynamicNet
from .spec import SubnetSpec

__all__ = ["CouplingGroup", "DynamicNet", "LayerInfo", "Member", "SubnetSpec", "channel_grid"]
