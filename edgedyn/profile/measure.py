"""The measurement protocol: warm up, repeat, interleave, report median and spread.

Configurations compared with each other are timed round-robin ("interleaved"), so drift
(thermal, frequency, other load) hits all of them alike. Each runner provides
``timed_call() -> ms`` using its proper clock (host clock after a synchronous call on
CPU, CUDA events on GPUs).

Two protocols:

- ``WHOLE_NET`` (whole sub-nets, as a deployed sub-net runs, request after request): each
  visit starts with one untimed call, and a sample averages enough back-to-back calls to
  last ``min_sample_ms``.
- ``BLOCKS`` (latency-table blocks): every sample is ONE call, and the call before it was
  another block. Inside a network a block runs once, after a different block; timed
  back to back instead, a block of a few microseconds looks several times cheaper than
  it is in the network (a ``ReorderOutput`` three times, on this project's CPU). The fixed
  cost of one call is measured the same way and subtracted by the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


class Timed(Protocol):
    def timed_call(self) -> float: ...


def _sample(r: Timed, inner: int, warm: bool = True) -> float:
    """One sample: (``warm``) an untimed call first, then the mean of ``inner`` timed calls (ms)."""
    if warm:
        r.timed_call()
    if inner == 1:
        return r.timed_call()
    return sum(r.timed_call() for _ in range(inner)) / inner


@dataclass(frozen=True)
class Stats:
    median: float
    p10: float
    p90: float
    iqr: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        a = np.asarray(samples, dtype=float)
        q10, q25, q50, q75, q90 = np.percentile(a, [10, 25, 50, 75, 90])
        return cls(float(q50), float(q10), float(q90), float(q75 - q25), int(a.size))

    def to_dict(self) -> dict:
        return {"ms": round(self.median, 6), "p10": round(self.p10, 6), "p90": round(self.p90, 6),
                "iqr": round(self.iqr, 6), "n": self.n}


@dataclass(frozen=True)
class Protocol_:
    """Repetition settings.

    Each sample averages enough back-to-back calls to last ``min_sample_ms`` (so that
    microsecond blocks are not lost in timer and call jitter); ``target_ms`` sets how long
    each configuration is timed in total, within [min_reps, max_reps] samples.
    """

    warmup: int = 3
    min_reps: int = 9
    max_reps: int = 41
    target_ms: float = 60.0
    min_sample_ms: float = 0.3
    warm: bool = True  # an untimed call before each sample


DEFAULT = Protocol_()
WHOLE_NET = Protocol_(warmup=5, min_reps=21, max_reps=101, target_ms=1500.0, min_sample_ms=1.0)
BLOCKS = Protocol_(warmup=3, min_reps=100, max_reps=400, target_ms=60.0, min_sample_ms=0.0, warm=False)


def measure_interleaved(runners: Sequence[Timed], protocol: Protocol_ = DEFAULT, seed: int = 0) -> list[Stats]:
    """Time every runner; rounds visit all runners in a shuffled order each time."""
    if not runners:
        return []
    est = []
    for r in runners:
        for _ in range(max(0, protocol.warmup - 1)):
            r.timed_call()
        est.append(max(min(r.timed_call(), r.timed_call()), 1e-3))
    inner = [max(1, int(np.ceil(protocol.min_sample_ms / e))) for e in est]
    per_sample = sum(e * n for e, n in zip(est, inner)) / len(est)
    reps = int(np.clip(protocol.target_ms / per_sample, protocol.min_reps, protocol.max_reps))
    rng = np.random.default_rng(seed)
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(reps):
        for i in rng.permutation(len(runners)):
            samples[i].append(_sample(runners[i], inner[i], protocol.warm))
    return [Stats.of(s) for s in samples]
