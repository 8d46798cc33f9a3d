"""The measurement protocols: warm up, repeat, interleave, report median and spread.

Configurations compared with each other are timed round-robin ("interleaved"), so drift
(thermal, frequency, other load) hits all of them alike. Each runner provides
``timed_call() -> ms`` using its proper clock (host clock after a synchronous call on
CPU, CUDA events on GPUs).

Two protocols:

- :func:`measure_calls` (whole sub-nets, as a server runs them, request after request):
  bursts of ``burst`` timed calls on one runner, each after one untimed call, the bursts
  visiting the runners in shuffled rounds; every call is a sample, so the median is the
  per-request median and p99 the serving tail. The profiler calibrates the table on it
  and deploy re-measures with it, so the table predicts what deploy measures. (A mean
  over a burst, as an earlier protocol used, reads 1-5 % above the per-call median, and
  more on small sub-nets; one call per visit times every call cold.)
- ``BLOCKS`` with :func:`measure_interleaved` (latency-table blocks): every sample is ONE
  call, and the call before it was another block. Inside a network a block runs once,
  after a different block; timed back to back instead, a block of a few microseconds
  looks several times cheaper than it is in the network (a ``ReorderOutput`` three
  times, on this project's CPU). The fixed cost of one call is measured the same way
  and subtracted by the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
    p99: float = float("nan")

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        a = np.asarray(samples, dtype=float)
        q10, q25, q50, q75, q90, q99 = np.percentile(a, [10, 25, 50, 75, 90, 99])
        return cls(float(q50), float(q10), float(q90), float(q75 - q25), int(a.size), float(q99))

    def to_dict(self) -> dict:
        return {"ms": round(self.median, 6), "p10": round(self.p10, 6), "p90": round(self.p90, 6),
                "p99": round(self.p99, 6), "iqr": round(self.iqr, 6), "n": self.n}


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
#: latency-table blocks, split over the profile's passes: up to 400 one-call samples, about
#: 30 ms of calls per block, at least 45 samples (a resnet18@224 block of ~0.7 ms gets 45, a
#: resnet20@32 block of ~20 us 400)
BLOCKS = Protocol_(warmup=3, min_reps=45, max_reps=400, target_ms=30.0, min_sample_ms=0.0, warm=False)
#: ``edgedyn profile --thorough``: at least 100 samples, about 60 ms per block
BLOCKS_THOROUGH = Protocol_(warmup=3, min_reps=100, max_reps=400, target_ms=60.0, min_sample_ms=0.0, warm=False)


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


@dataclass(frozen=True)
class Calls:
    """Settings of :func:`measure_calls`: ``calls`` timed calls per runner in bursts of
    ``burst``, after ``warmup`` untimed ones; with ``target_ms``, only as many calls (at
    least ``min_calls``) as fill that much time at the runner's warm-up latency. Bursts are
    shortened so that every runner is visited at least ``min_visits`` times: a runner timed
    in two visits has half its samples spoilt by one passing disturbance."""

    calls: int = 200
    burst: int = 10
    warmup: int = 10
    target_ms: float | None = None
    min_calls: int = 30
    min_visits: int = 1


#: whole sub-nets in recheck, the thread choice and the search benchmark: about a second of calls each
WHOLE_NET = Calls(calls=200, target_ms=1000.0)
#: the profiler's whole sub-nets (calibration, validation, probes; 150-200 of them): about
#: 0.3 s of calls each, at least 15 (a resnet20@32 sub-net still gets 200 calls; a
#: resnet18@224 one 15-30, which keeps the profile of a large model within minutes)
CALIBRATION = Calls(calls=200, target_ms=300.0, min_calls=15, warmup=3, min_visits=5)
#: ``edgedyn profile --thorough``: the recheck protocol, about a second of calls per sub-net
CALIBRATION_THOROUGH = WHOLE_NET


def measure_calls(runners: Sequence[Timed], protocol: Calls = Calls(), seed: int = 0) -> list[Stats]:
    """Per-call latency (ms) of each runner as a server sees it (see the module docstring).

    Consecutive requests on one sub-net run with its weights in cache, so calls come in
    bursts on one runner; one call per visit would time every call cold (0.30 instead of
    0.17 ms for a small resnet20 sub-net on this project's CPU).
    """
    p = protocol
    want = []
    for r in runners:
        warm = [r.timed_call() for _ in range(max(1, p.warmup))]
        n = p.calls
        if p.target_ms is not None:
            n = int(np.clip(p.target_ms / max(float(np.median(warm)), 1e-6), min(p.min_calls, p.calls), p.calls))
        want.append(n)
    rng = np.random.default_rng(seed)
    samples: list[list[float]] = [[] for _ in runners]
    bursts = [max(1, min(p.burst, -(-n // max(1, p.min_visits)))) for n in want]
    while True:
        left = [i for i in range(len(runners)) if len(samples[i]) < want[i]]
        if not left:
            break
        for i in rng.permutation(left):
            r = runners[i]
            r.timed_call()
            samples[i].extend(r.timed_call() for _ in range(min(bursts[i], want[i] - len(samples[i]))))
    return [Stats.of(s) for s in samples]
