"""Activation layouts now live in :mod:`edgedyn.blocks.layout` (shared with the backends);
this module keeps the old import path working."""

from ..blocks.layout import PLAIN, Layout, as_run, pad_channels

__all__ = ["PLAIN", "Layout", "as_run", "pad_channels"]
