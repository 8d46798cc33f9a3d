"""The former home of the search pipeline, kept so that ``edgedyn.search.run`` imports work.

The pipeline is :mod:`edgedyn.search.pipeline`; the config :mod:`edgedyn.search.config`;
the result types :mod:`edgedyn.search.result`; the methods :mod:`edgedyn.search.methods`.
"""

from __future__ import annotations

from .checkpoint import CHECKPOINT_SCHEMA, PHASES
from .config import SearchConfig
from .pipeline import check_out_dir, pretrain_only, run_search, write_outputs
from .plot import plot
from .registry import method_names
from .reselect import uniform_points
from .result import RESULT_SCHEMA, ChosenSubnet, SearchResult, load_result
from .weights import load_weights_into

__all__ = ["CHECKPOINT_SCHEMA", "PHASES", "RESULT_SCHEMA", "ChosenSubnet", "SearchConfig", "SearchResult",
           "check_out_dir", "load_result", "load_weights_into", "method_names", "plot", "pretrain_only",
           "run_search", "uniform_points", "write_outputs"]
