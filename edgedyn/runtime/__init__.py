"""Runtime: serve a deployed bundle under a latency budget (:class:`Selector`).

Reads bundles through :mod:`edgedyn.bundle`; imports nothing from :mod:`edgedyn.deploy`.
"""

from .dispatch import InferInfo
from .policies import POLICIES, Policy, register_policy
from .selector import Selector

__all__ = ["POLICIES", "InferInfo", "Policy", "Selector", "register_policy"]
