"""Choosing the CPU thread count a table is profiled (and a bundle served) with.

A latency table holds for one intra-op thread count only, and the best count depends on
the model, not only on the machine. On this project's 2-core CPU (ONNX Runtime 1.32,
batch 1, intra-op threads that sleep instead of spin-waiting between calls):

- resnet18 at 224x224 runs in 17.3 ms on 2 threads and 33.5 ms on 1;
- a resnet20 sub-net at 32x32 runs in 0.12 ms on 1 thread and 0.16-0.25 ms on 2, whose
  median wanders by tens of percent from one minute to the next: waking the second
  thread for every operator costs more than the operator, and how much depends on the
  host's scheduler.

So the profiler times reference sub-nets (the smallest, a half-width and the full one) at
each candidate count, interleaved, and keeps the fewest threads whose mean slowdown
against the per-sub-net best is within ``tolerance`` of the best count's
(:func:`choose_threads`). The timings go into the table (``backend.thread_choice``);
deploy serves with the table's count by default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EdgedynError

if TYPE_CHECKING:
    from ..backends import Backend
    from ..dynamic import DynamicNet

#: a count within this fraction of the best count's mean slowdown counts as tied; ties go to fewer threads
TOLERANCE = 0.05


def thread_candidates(available: int) -> list[int]:
    """1, 2, 4, ... up to ``available``, and ``available`` itself."""
    if available < 1:
        raise EdgedynError(f"available threads must be >= 1, got {available}")
    out, t = [], 1
    while t < available:
        out.append(t)
        t *= 2
    return out + [available]


def choose_threads(medians: Mapping[int, Sequence[float]], tolerance: float = TOLERANCE) -> int:
    """The fewest threads whose mean slowdown is within ``tolerance`` of the best.

    ``medians[t][j]`` is the median latency of reference sub-net ``j`` at ``t`` threads;
    a count's slowdown on sub-net ``j`` is its median over the best median of ``j``.
    """
    if not medians:
        raise EdgedynError("no thread counts were timed")
    lengths = {len(v) for v in medians.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise EdgedynError("every thread count needs a timing of each reference sub-net")
    if any(m <= 0 for v in medians.values() for m in v):
        raise EdgedynError("latencies must be positive")
    n = lengths.pop()
    best = [min(v[j] for v in medians.values()) for j in range(n)]
    score = {t: sum(v[j] / best[j] for j in range(n)) / n for t, v in medians.items()}
    top = min(score.values())
    return min(t for t, s in score.items() if s <= top * (1.0 + tolerance))


def time_thread_counts(backends: Mapping[int, Backend], net: DynamicNet, example: Any,
                       log: Callable[[str], None]) -> tuple[int, dict[str, Any]]:
    """Time the reference sub-nets (smallest, half, full) of ``net`` on each backend (one per
    candidate thread count), interleaved; returns the count :func:`choose_threads` keeps and
    the timings behind it (recorded in the table as ``backend.thread_choice``)."""
    from ..backends import OnnxBackend
    from ..dynamic.onnx_derive import subnet_onnx_files
    from .measure import WHOLE_NET, measure_calls
    from .tempdirs import owned_tempdir

    candidates = list(backends)
    names = ["smallest", "half", "full"]
    specs = [net.min_spec(), net.uniform_spec(0.5), net.full_spec()]
    log(f"threads: timing {', '.join(names)} sub-nets at {', '.join(map(str, candidates))} threads")
    with owned_tempdir("threads") as tmp:
        onnx_backends = [be for be in backends.values() if isinstance(be, OnnxBackend)]
        if len(onnx_backends) == len(backends):  # the ONNX graphs once, a session per thread count
            paths = subnet_onnx_files(net, specs, example, [Path(tmp) / f"{n}.onnx" for n in names], log,
                                      timing_only=True)
            runners = [be.from_onnx(p, example) for be in onnx_backends for p in paths]
        else:
            modules = [net.extract(s) for s in specs]
            runners = [be.prepare(m, example, Path(tmp)) for be in backends.values() for m in modules]
        stats = measure_calls(runners, WHOLE_NET, seed=1)
        del runners
    medians = {t: [stats[i * len(specs) + j].median for j in range(len(specs))] for i, t in enumerate(candidates)}
    threads = choose_threads(medians)
    log("threads: " + "; ".join(f"{t}: " + ", ".join(f"{m:.4g}" for m in ms) + " ms"
                                for t, ms in medians.items()) + f" -> {threads}")
    return threads, {"reference": names, "median_ms": {str(t): [round(m, 5) for m in ms] for t, ms in medians.items()},
                     "tolerance": TOLERANCE, "chosen": threads}
