"""Sub-net search: channel ranking, the progressive search, re-selection and training.

The progressive search itself is in :mod:`edgedyn.search.progressive`; :func:`run_search`
runs the whole pipeline (pre-training, ranking, search, joint training, outputs).
"""

from .progressive import Candidate, PathPoint, Step, Threshold, progressive_search
from .reselect import Budget, pareto, parse_budgets, pick
from .run import RESULT_SCHEMA, ChosenSubnet, SearchConfig, SearchResult, load_result, run_search

__all__ = ["RESULT_SCHEMA", "Budget", "Candidate", "ChosenSubnet", "PathPoint", "SearchConfig", "SearchResult",
           "Step", "Threshold", "load_result", "pareto", "parse_budgets", "pick", "progressive_search",
           "run_search"]
