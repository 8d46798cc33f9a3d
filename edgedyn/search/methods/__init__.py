"""The search methods, one module each (``autoslim``, ``progressive``, ``usnet``, and issue
19's baselines ``usnet_aligned`` and ``pruning``: ``torch-pruning``).

The registry (:mod:`edgedyn.search.registry`) imports every module of this package the
first time a method is looked up; each registers its class with ``@register_method``. A
new method is one new module here (see ``docs/design.md``).
"""
