"""Sub-net search: the methods (autoslim, progressive, US-Nets) behind one interface.

:func:`run_search` runs the whole pipeline for the method ``SearchConfig.method`` names
(:mod:`edgedyn.search.pipeline`); the methods live in :mod:`edgedyn.search.methods`, one
file each, registered by name (:func:`register_method`, :func:`get_method`). The
strategies themselves are generators: :func:`progressive_search`
(:mod:`edgedyn.search.progressive`) and ``slim_search`` / ``grow_search``
(:mod:`edgedyn.search.slim`).
"""

from .config import SearchConfig
from .pipeline import run_search
from .progressive import Candidate, PathPoint, Step, Threshold, progressive_search
from .registry import MethodOptions, Variant, get_method, method_names, register_method
from .reselect import Budget, pareto, parse_budgets, pick
from .result import RESULT_SCHEMA, ChosenSubnet, SearchResult, load_result
from .scorer import Scorer

__all__ = ["RESULT_SCHEMA", "Budget", "Candidate", "ChosenSubnet", "MethodOptions", "PathPoint", "Scorer",
           "SearchConfig", "SearchResult", "Step", "Threshold", "Variant", "get_method", "load_result",
           "method_names", "pareto", "parse_budgets", "pick", "progressive_search", "register_method",
           "run_search"]
