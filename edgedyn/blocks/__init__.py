"""Blocks: the units a backend fuses, and the keys of a latency table.

A model is cut into blocks as inference runtimes fuse it (ONNX Runtime, TensorRT):

- ``conv``: a convolution with its BatchNorm folded in, and the residual add and the
  activation that follow it when they are its only consumer; depthwise, or grouped
  (``group_width``: input channels per conv group, whole groups kept);
- ``add``: a residual add (and activation) not fused into a conv;
- ``maxpool`` / ``avgpool`` / ``gap`` (global average pool, ``x.mean((2, 3))`` included);
- ``linear``: a fully connected layer (and its activation), after a flatten or per
  position of an N H W C tensor (ConvNeXt);
- ``act``: an activation not fused into the block before it (ReLU, ReLU6, hardswish,
  hardsigmoid, sigmoid, SiLU, GELU);
- ``scale``: ``x * s`` with ``s`` one factor per channel (squeeze-and-excitation, layer
  scale); ``mul``: an element-wise product of two tensors of one shape;
- ``concat``: a concatenation along the channels (``parts`` inputs); a block after it
  reads the sum of its inputs' widths (``BlockTemplate.in_parts``);
- ``layernorm`` (over the channels of an N H W C tensor), ``layernorm2d`` (of an N C H W
  one, torchvision's ``LayerNorm2d``), ``to_nhwc`` / ``to_nchw`` (the transposes between);
- ``reorder`` / ``reorder_in``: a change of activation layout between blocks (ONNX
  Runtime's NCHWc ``ReorderOutput`` / ``ReorderInput``); only a :class:`Layout` adds these.

Flatten, dropout and stochastic depth (eval) and identity are free. Any other op fails in
one line naming its layer: the table never guesses a block it cannot price. Each block's channel counts follow the
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
