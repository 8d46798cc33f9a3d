"""Runtime: serve a deployed bundle under a latency budget (:class:`Selector`)."""

from .selector import POLICIES, InferInfo, Selector

__all__ = ["POLICIES", "InferInfo", "Selector"]
