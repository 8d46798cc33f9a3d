"""The time stage: every built sub-net timed on this device, interleaved, as a server calls it.

:func:`measure_runners` uses the protocol the profiler calibrates its table on
(:func:`~edgedyn.profile.measure.measure_calls`), so deploy's measurement and the table's
prediction are comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..bundle import SubnetRecord
from ..progress import Progress

log = logging.getLogger("edgedyn.deploy")

#: deploy times each sub-net for about this long (ms)
MEASURE_MS = 2000.0


def _timed(runner: Any) -> Any:
    """``runner`` if it has ``timed_call``, else an adapter over its ``time()``."""
    if callable(getattr(runner, "timed_call", None)):
        return runner

    class _Adapter:
        def timed_call(self) -> float:
            return float(runner.time(n_warmup=0, n_iters=1)[0])

    return _Adapter()


def measure_runners(runners: Sequence[Any], iters: int = 2000, warmup: int = 10, seed: int = 0,
                    burst: int = 10, target_ms: float | None = MEASURE_MS) -> list[dict[str, Any]]:
    """Per-call latency (ms) of each runner: median, p10, p90, p99, as a server sees it.

    The same protocol (:func:`~edgedyn.profile.measure.measure_calls`) the profiler
    calibrates its table on, so the prediction and this measurement are comparable. Each
    runner gets ``iters`` calls at most, about ``target_ms`` of them (at least 200): a
    measurement that lasts a fraction of a second is at the mercy of any passing stall.
    """
    from ..profile.measure import Calls, measure_calls

    protocol = Calls(calls=iters, burst=burst, warmup=warmup, target_ms=target_ms, min_calls=200)
    stats = measure_calls([_timed(r) for r in runners], protocol, seed=seed)
    return [{"median": round(st.median, 6), "p10": round(st.p10, 6), "p90": round(st.p90, 6),
             "p99": round(st.p99, 6), "n": st.n} for st in stats]


def time_subnets(runners: Sequence[Any], records: Sequence[SubnetRecord], device: dict[str, Any], cpu: bool,
                 iters: int, quiet: bool, probes: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Time ``runners`` (one per record, activated) into each record's ``measured``, then release them.

    ``probes`` (the table's probes, :mod:`~edgedyn.deploy.probes`) are timed in the same
    interleaved run; their statistics are returned.

    On a CPU backend (``cpu``), a machine already busy before timing is recorded in ``device``
    (``cpu_busy_before_measure``) and warned about.
    """
    if cpu:
        from ..device import busy_before_timing

        busy = busy_before_timing(log.warning)
        if busy is not None:
            device["cpu_busy_before_measure"] = busy
    label = f"{len(runners)} sub-nets" + (f" and {len(probes)} probes" if probes else "")
    with Progress(desc=f"deploy: timing {label}", bar=False, disable=quiet):
        measured = measure_runners(list(runners) + list(probes), iters=iters)
    for rec, stats in zip(records, measured):
        rec.measured = stats
    for r in list(runners) + list(probes):
        r.deactivate()
    return measured[len(runners):]
