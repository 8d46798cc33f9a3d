"""A request loop over a :class:`~edgedyn.runtime.Selector`, with budget schedules and a report.

``serve(selector, inputs, requests=N | duration_s=S, budget=...)`` runs requests back to
back, cycling through ``inputs``, and returns a :class:`ServeReport`: per-sub-net use
counts and latency percentiles (p50/p90/p99), budget misses, switches and errors. A
failing request (malformed input, backend error) is counted and the loop goes on.

Budgets: a constant, a schedule (``[[at, budget_ms], ...]``, ``at`` is a request index
when serving ``requests``, seconds when serving for a ``duration``; each entry holds until
the next), or a linear ramp ``A:B`` over the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgedynError
from ..validate import NumberError, number_problem, parse_ramp
from .inputs import check_budget
from .selector import Selector

BudgetFn = Callable[[int, float], "float | None"]


def constant_budget(budget_ms: float | None) -> BudgetFn:
    budget_ms = check_budget(budget_ms, "budget")
    return lambda k, t: budget_ms


def _check_total(total: float | int, by_time: bool) -> float:
    problem = number_problem(total, 0.0, lo_open=True)
    if problem is not None:
        raise NumberError(f"{'duration' if by_time else 'requests'} {problem}")
    return float(total)


def ramp_budget(text: str | tuple[float, float], total: float, by_time: bool = False) -> BudgetFn:
    """``"A:B"``: a budget moving linearly from A to B ms over ``total`` requests or seconds.

    A and B must be finite numbers > 0 (:func:`~edgedyn.validate.parse_ramp`), ``total`` too.
    """
    a, b = parse_ramp(text) if isinstance(text, str) else parse_ramp(f"{text[0]}:{text[1]}")
    total = _check_total(total, by_time)
    lo = min(a, b)

    def fn(k: int, t: float) -> float:
        f = min(1.0, (t if by_time else k) / total)
        # a convex combination (a + (b - a) * f cancels to 0 for a = 1e308, b = 1e-300),
        # kept within [min(a, b), ...] against underflow: never 0, never below the ramp
        return max(lo, a * (1.0 - f) + b * f)

    return fn


def load_schedule(path: str | Path) -> list[tuple[float, float]]:
    """A JSON list of ``[at, budget_ms]`` pairs, sorted by ``at``; one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EdgedynError(f"{path}: schedule file not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgedynError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, list) or not doc:
        raise EdgedynError(f"{path}: expected a non-empty JSON list of [t_seconds or request_index, budget_ms]")
    out = []
    for i, item in enumerate(doc):
        if not (isinstance(item, list) and len(item) == 2):
            shown = repr(item) if len(repr(item)) <= 60 else repr(item)[:57] + "..."
            raise EdgedynError(f"{path}: entry {i} must be [at >= 0, budget_ms > 0], got {shown}")
        for name, v, lo, lo_open in (("at", item[0], 0.0, False), ("budget_ms", item[1], 0.0, True)):
            problem = number_problem(v, lo, lo_open=lo_open)
            if problem is not None:
                raise EdgedynError(f"{path}: entry {i} must be [at >= 0, budget_ms > 0]: {name} {problem}")
        out.append((float(item[0]), float(item[1])))
    return sorted(out)


def schedule_budget(schedule: Sequence[tuple[float, float]], by_time: bool) -> BudgetFn:
    keys = [a for a, _ in schedule]
    values = [b for _, b in schedule]

    def fn(k: int, t: float) -> float:
        at = t if by_time else k
        j = int(np.searchsorted(keys, at, side="right")) - 1
        return values[max(j, 0)]

    return fn


def load_inputs(path: str | Path | None, shape: Sequence[int], count: int = 64, seed: int = 0) -> np.ndarray:
    """Request inputs ``[N, *shape]``: from a folder of images or a ``.npy`` (as calibration data), else random."""
    shape = tuple(int(d) for d in shape)
    if path is None:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((count, *shape)).astype(np.float32)
    from ..data import load_calibration

    x = load_calibration(path, shape[-1])
    if x.ndim != 4 or tuple(x.shape[1:]) != shape[1:]:
        raise EdgedynError(f"{path}: inputs have shape {tuple(x.shape[1:])}, the bundle expects {shape[1:]}")
    return x.reshape(len(x), 1, *x.shape[1:]) if shape[0] == 1 else x[None]


@dataclass
class ServeReport:
    policy: str
    requests: int
    errors: int
    wall_s: float
    switches: int
    specs: list[str]
    counts: list[int]
    misses: list[int]
    latency: list[dict[str, float] | None]  # per sub-net p50/p90/p99 (ms)
    overall: dict[str, float] | None
    budget_range: tuple[float, float] | None
    timeline: list[tuple[float, int, float, float | None]] = field(default_factory=list)  # t, subnet, ms, budget

    @property
    def total_misses(self) -> int:
        return sum(self.misses)

    @property
    def miss_rate(self) -> float:
        done = sum(self.counts)
        return self.total_misses / done if done else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "requests": self.requests, "errors": self.errors, "wall_s": self.wall_s,
                "switches": self.switches, "misses": self.total_misses, "miss_rate": self.miss_rate,
                "overall_ms": self.overall, "budget_range_ms": self.budget_range,
                "subnets": [{"index": i, "spec": s, "count": c, "misses": m, "latency_ms": lat}
                            for i, (s, c, m, lat) in enumerate(zip(self.specs, self.counts, self.misses, self.latency))]}

    def format(self) -> str:
        lines = [f"policy {self.policy}: {self.requests} requests in {self.wall_s:.2f} s, "
                 f"{self.total_misses} budget misses ({100 * self.miss_rate:.1f}%), {self.switches} switches, "
                 f"{self.errors} errors"]
        if self.budget_range is not None:
            lines.append(f"budget {self.budget_range[0]:.3f}..{self.budget_range[1]:.3f} ms")
        lines.append(f"{'sub-net':>7} {'uses':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'misses':>7}  spec")
        for i, (s, c, m, lat) in enumerate(zip(self.specs, self.counts, self.misses, self.latency)):
            p = lat or {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
            lines.append(f"{i:>7} {c:>7} {p['p50']:>9.3f} {p['p90']:>9.3f} {p['p99']:>9.3f} {m:>7}  {s}")
        if self.overall:
            o = self.overall
            lines.append(f"{'all':>7} {sum(self.counts):>7} {o['p50']:>9.3f} {o['p90']:>9.3f} {o['p99']:>9.3f} "
                         f"{self.total_misses:>7}")
        return "\n".join(lines)


def _pcts(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def serve(
    selector: Selector,
    inputs: np.ndarray,
    *,
    requests: int | None = None,
    duration_s: float | None = None,
    budget: BudgetFn | float | None = None,
    keep_timeline: bool = False,
) -> ServeReport:
    """Run ``requests`` requests (or for ``duration_s`` seconds) back to back and report."""
    if (requests is None) == (duration_s is None):
        raise EdgedynError("give exactly one of requests or duration_s")
    _check_run_length(requests, duration_s)
    if len(inputs) == 0:
        raise EdgedynError("no inputs to serve")
    budget_fn = budget if callable(budget) else constant_budget(budget)
    n = len(selector.specs)
    lat: list[list[float]] = [[] for _ in range(n)]
    misses = [0] * n
    switches = errors = done = 0
    last = None
    timeline = []
    lo, hi = float("inf"), float("-inf")
    start = time.perf_counter()
    k = 0
    while True:
        t = time.perf_counter() - start
        if (requests is not None and k >= requests) or (duration_s is not None and t >= duration_s):
            break
        b = budget_fn(k, t)
        if b is not None:
            lo, hi = min(lo, b), max(hi, b)
        try:
            _, info = selector.infer(inputs[k % len(inputs)], b)
        except (ValueError, EdgedynError):
            errors += 1
            k += 1
            continue
        done += 1
        lat[info.subnet].append(info.latency_ms)
        if not info.met:
            misses[info.subnet] += 1
        if last is not None and info.subnet != last:
            switches += 1
        last = info.subnet
        if keep_timeline:
            timeline.append((t, info.subnet, info.latency_ms, b))
        k += 1
    wall = time.perf_counter() - start
    return ServeReport(
        policy=selector.policy, requests=k, errors=errors, wall_s=wall, switches=switches,
        specs=[str(s) for s in selector.specs], counts=[len(v) for v in lat], misses=misses,
        latency=[_pcts(v) for v in lat], overall=_pcts([x for v in lat for x in v]),
        budget_range=(lo, hi) if hi >= lo else None, timeline=timeline)


def _check_run_length(requests: int | None, duration_s: float | None) -> None:
    """``requests`` an integer >= 1 and ``duration_s`` a finite number > 0, where given."""
    if requests is not None:
        problem = number_problem(requests, 1, integer=True)
        if problem is not None:
            raise NumberError(f"requests {problem}")
    if duration_s is not None:
        problem = number_problem(duration_s, 0.0, lo_open=True)
        if problem is not None:
            raise NumberError(f"duration (s) {problem}")


def make_budget(budget_ms: float | None, schedule: str | Path | None, ramp: str | None,
                requests: int | None, duration_s: float | None) -> BudgetFn:
    """The budget function for the ``run`` command's options (at most one of schedule / ramp).

    Every number is checked here, before anything is loaded or run: ``budget_ms`` finite
    > 0 or None, ramps' A and B finite > 0, schedule rows ``[at >= 0, budget_ms > 0]``.
    """
    if schedule is not None and ramp is not None:
        raise EdgedynError("give at most one of --schedule and --ramp")
    _check_run_length(requests, duration_s)
    check_budget(budget_ms, "budget_ms")
    by_time = duration_s is not None
    if schedule is not None:
        return schedule_budget(load_schedule(schedule), by_time)
    if ramp is not None:
        return ramp_budget(ramp, duration_s if duration_s is not None else float(requests or 1), by_time)
    return constant_budget(budget_ms)
