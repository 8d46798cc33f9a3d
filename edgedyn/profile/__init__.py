"""Hardware profiling: the measurement protocol, the profiler and the latency table.

Block keys, templates and layouts live in :mod:`edgedyn.blocks` (shared with the
backends); they are re-exported here for the code that has always imported them from here.
"""

from ..blocks import PLAIN, BlockKey, BlockTemplate, Layout, all_keys, model_blocks, subnet_keys
from .table import LatencyTable

__all__ = ["PLAIN", "BlockKey", "BlockTemplate", "LatencyTable", "Layout", "all_keys", "model_blocks",
           "subnet_keys"]


def __getattr__(name: str):
    if name in ("profile", "ProfileConfig"):
        from . import profiler

        return getattr(profiler, name)
    raise AttributeError(name)
