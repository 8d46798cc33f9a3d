"""Blocks: the units a backend fuses, and the keys of a latency table.

A model is cut into blocks as inference runtimes fuse it (ONNX Runtime, TensorRT):

- ``conv``: a convolution with its BatchNorm folded in, and the residual add and the
  activation that follow it when they are its only consumer;
- ``add``: a residual add (and activation) not fused into a conv;
- ``maxpool`` / ``avgpool`` / ``gap`` (global average pool);
- ``linear``: a fully connected layer (and its activation);
- ``reorder`` / ``reorder_in``: a change of activation layout between blocks (ONNX
  Runtime's NCHWc ``ReorderOutput`` / ``ReorderInput``); only a :class:`Layout` adds these.

Flatten, dropout (eval) and identity are free. Each block's channel counts follow the
coupling groups of a :class:`~edgedyn.dynamic.DynamicNet`, so a :class:`BlockTemplate`
turns any :class:`~edgedyn.dynamic.SubnetSpec` into a typed :class:`BlockKey`. Identical
keys are measured once, and one table serves every model whose blocks it holds.

This package is shared by :mod:`edgedyn.profile` (which measures and predicts) and
:mod:`edgedyn.backends` (which run one block: :mod:`edgedyn.blocks.models`); it imports
neither.

- :mod:`~edgedyn.blocks.key`: :class:`BlockKey`, the typed table key;
- :mod:`~edgedyn.blocks.template`: :class:`BlockTemplate`, a block of one model;
- :mod:`~edgedyn.blocks.trace`: :func:`model_blocks`, cutting a model into blocks;
- :mod:`~edgedyn.blocks.layout`: :class:`Layout`, activation layouts between blocks;
- :mod:`~edgedyn.blocks.lookup`: :func:`subnet_keys` and :func:`all_keys`;
- :mod:`~edgedyn.blocks.models`: stand-alone ONNX and torch models of one block.
"""

from .key import ACTS, OPS, BlockKey
from .layout import PLAIN, Layout, as_run, pad_channels
from .lookup import all_keys, subnet_keys
from .template import BlockTemplate
from .trace import model_blocks

__all__ = ["ACTS", "OPS", "PLAIN", "BlockKey", "BlockTemplate", "Layout", "all_keys", "as_run", "model_blocks",
           "pad_channels", "subnet_keys"]
