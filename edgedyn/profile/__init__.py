"""Hardware profiling: fused blocks, the measurement protocol and the latency table."""

from .blocks import BlockKey, BlockTemplate, all_keys, model_blocks, subnet_keys
from .layout import PLAIN, Layout
from .table import LatencyTable

__all__ = ["PLAIN", "BlockKey", "BlockTemplate", "LatencyTable", "Layout", "all_keys", "model_blocks",
           "subnet_keys"]


def __getattr__(name: str):
    if name in ("profile", "ProfileConfig"):
        from . import profiler

        return getattr(profiler, name)
    raise AttributeError(name)
