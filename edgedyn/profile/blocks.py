"""Block keys and templates now live in :mod:`edgedyn.blocks` (shared with the backends);
this module keeps the old import path (``edgedyn.profile.blocks.subnet_keys``) working."""

from ..blocks import ACTS, OPS, BlockKey, BlockTemplate, all_keys, model_blocks, subnet_keys

__all__ = ["ACTS", "OPS", "BlockKey", "BlockTemplate", "all_keys", "model_blocks", "subnet_keys"]
