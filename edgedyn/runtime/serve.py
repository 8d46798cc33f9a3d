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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgedynError
from ..validate import NumberError, number_problem, parse_ramp
from .inputs import check_budget
from .selector import Selector, SelectorClosed
from .summary import DEFAULT_CAPACITY, LatencySummary

REPORT_SCHEMA = "edgedyn.serve_report/1"

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


MAX_SCHEDULE_BYTES = 16 << 20  # a schedule is a few rows; a larger file is a mistake
MAX_SCHEDULE_ROWS = 1_000_000


def _read_schedule(path: Path) -> Any:
    """The parsed JSON of a schedule file; one line naming the file for anything that is not one."""
    if not path.is_file():  # also a FIFO or a device: never opened
        raise EdgedynError(f"{path}: schedule file not found (or not a regular file)")
    size = path.stat().st_size
    if size > MAX_SCHEDULE_BYTES:
        raise EdgedynError(f"{path}: schedule file has {size} bytes, more than the {MAX_SCHEDULE_BYTES} allowed")
    try:
        return json.loads(path.read_bytes())
    except RecursionError:
        raise EdgedynError(f"{path}: not a schedule: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, and ints over Python's digit limit
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise EdgedynError(f"{path}: not valid JSON ({first})") from None


def load_schedule(path: str | Path) -> list[tuple[float, float]]:
    """A JSON list of ``[at, budget_ms]`` pairs, sorted by ``at``; one-line errors naming the file.

    The file must be a regular file of at most 16 MiB holding at most 1,000,000 rows; a number
    too long for Python to convert, or lists nested too deeply, are one line too.
    """
    path = Path(path)
    doc = _read_schedule(path)
    if not isinstance(doc, list) or not doc:
        raise EdgedynError(f"{path}: expected a non-empty JSON list of [t_seconds or request_index, budget_ms]")
    if len(doc) > MAX_SCHEDULE_ROWS:
        raise EdgedynError(f"{path}: {len(doc)} schedule entries, more than the {MAX_SCHEDULE_ROWS} allowed")
    out = []
    for i, item in enumerate(doc):
        if not (isinstance(item, list) and len(item) == 2):
            shown = _shown(item)
            raise EdgedynError(f"{path}: entry {i} must be [at >= 0, budget_ms > 0], got {shown}")
        for name, v, lo, lo_open in (("at", item[0], 0.0, False), ("budget_ms", item[1], 0.0, True)):
            problem = number_problem(v, lo, lo_open=lo_open)
            if problem is not None:
                raise EdgedynError(f"{path}: entry {i} must be [at >= 0, budget_ms > 0]: {name} {problem}")
        try:
            out.append((float(item[0]), float(item[1])))
        except OverflowError:  # an int of a few hundred digits: past every float
            raise EdgedynError(f"{path}: entry {i} must be [at >= 0, budget_ms > 0]: a number is too large") from None
    return sorted(out)


def _shown(item: Any) -> str:
    """``item`` for a message, at most 60 characters (repr of a deep list may itself recurse)."""
    try:
        text = repr(item)
    except (RecursionError, ValueError):
        return f"a {type(item).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def schedule_budget(schedule: Sequence[tuple[float, float]], by_time: bool) -> BudgetFn:
    keys = [a for a, _ in schedule]
    values = [b for _, b in schedule]

    def fn(k: int, t: float) -> float:
        at = t if by_time else k
        j = int(np.searchsorted(keys, at, side="right")) - 1
        return values[max(j, 0)]

    return fn


MAX_INPUT_BYTES = 64 << 20  # random request inputs: at most this much memory (at least one input)


def load_inputs(path: str | Path | None, shape: Sequence[int], count: int = 64, seed: int = 0,
                dtype: Any = np.float32) -> np.ndarray:
    """Request inputs ``[N, *shape]`` in ``dtype`` (the bundle's): from a folder of images or a
    ``.npy`` (as calibration data), else random.

    Random inputs are drawn directly in ``dtype`` (no float64 copy), and at most ``count`` of
    them, fewer where ``count`` would exceed 64 MiB (one 2048x2048 request is 48 MiB in
    float32: it gets one input, not 64).
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    if path is None:
        one = math.prod(shape) * dtype.itemsize
        n = max(1, min(int(count), MAX_INPUT_BYTES // max(1, one)))
        rng = np.random.default_rng(seed)
        if dtype.kind == "f":
            draw = rng.standard_normal((n, *shape), dtype=np.float32)  # float32 at most: no float64 pass
            return draw if dtype == np.float32 else draw.astype(dtype)
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127), (n, *shape), dtype=dtype, endpoint=True)
    from ..data import load_calibration

    x = load_calibration(path, shape[-1])
    if x.ndim != 4 or tuple(x.shape[1:]) != shape[1:]:
        raise EdgedynError(f"{path}: inputs have shape {tuple(x.shape[1:])}, the bundle expects {shape[1:]}")
    x = x.astype(dtype, copy=False)
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
    partial: bool = False  # the run was interrupted (Ctrl-C, SIGTERM): the statistics of what was served
    exact: bool = True  # percentiles from every latency (False: from a uniform sample of them)
    interrupted: KeyboardInterrupt | None = field(default=None, repr=False, compare=False)

    @property
    def total_misses(self) -> int:
        return sum(self.misses)

    @property
    def miss_rate(self) -> float:
        done = sum(self.counts)
        return self.total_misses / done if done else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "partial": self.partial, "policy": self.policy, "requests": self.requests,
                "errors": self.errors, "wall_s": self.wall_s, "switches": self.switches, "misses": self.total_misses,
                "miss_rate": self.miss_rate, "percentiles_exact": self.exact, "overall_ms": self.overall,
                "budget_range_ms": self.budget_range,
                "subnets": [{"index": i, "spec": s, "count": c, "misses": m, "latency_ms": lat}
                            for i, (s, c, m, lat) in enumerate(zip(self.specs, self.counts, self.misses, self.latency))]}

    def format(self) -> str:
        head = "partial report (interrupted): " if self.partial else ""
        lines = [f"{head}policy {self.policy}: {self.requests} requests in {self.wall_s:.2f} s, "
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
        if not self.exact:
            lines.append("(percentiles from a uniform sample of the latencies: the run was longer than the reservoir)")
        return "\n".join(lines)


@dataclass
class _Tally:
    """What a serving loop has counted so far (bounded: a reservoir per sub-net and one overall)."""

    lat: list[LatencySummary]
    overall: LatencySummary
    misses: list[int]
    switches: int = 0
    errors: int = 0
    k: int = 0
    last: int | None = None
    lo: float = float("inf")
    hi: float = float("-inf")

    @classmethod
    def of(cls, n: int, capacity: int) -> _Tally:
        return cls([LatencySummary(capacity, seed=i + 1) for i in range(n)], LatencySummary(capacity, seed=0), [0] * n)

    def report(self, selector: Selector, wall: float, timeline: list, interrupted: KeyboardInterrupt | None) -> ServeReport:
        return ServeReport(
            policy=selector.policy, requests=self.k, errors=self.errors, wall_s=wall, switches=self.switches,
            specs=[str(s) for s in selector.specs], counts=[s.count for s in self.lat], misses=list(self.misses),
            latency=[s.percentiles() for s in self.lat], overall=self.overall.percentiles(),
            budget_range=(self.lo, self.hi) if self.hi >= self.lo else None, timeline=timeline,
            partial=interrupted is not None, exact=self.overall.exact, interrupted=interrupted)


def serve(
    selector: Selector,
    inputs: np.ndarray,
    *,
    requests: int | None = None,
    duration_s: float | None = None,
    budget: BudgetFn | float | None = None,
    keep_timeline: bool = False,
    report_interrupt: bool = False,
    capacity: int = DEFAULT_CAPACITY,
) -> ServeReport:
    """Run ``requests`` requests (or for ``duration_s`` seconds) back to back and report.

    Memory does not grow with the run: latencies go into fixed-size reservoirs of ``capacity``
    values (percentiles exact up to that many requests), except with ``keep_timeline``, which
    keeps one entry per request (for short benchmark runs). With ``report_interrupt``, Ctrl-C
    or SIGTERM (a ``KeyboardInterrupt``) ends the loop and the report of what was served is
    returned, with ``partial`` set and ``interrupted`` holding the exception (re-raise it);
    without, it propagates.
    """
    if (requests is None) == (duration_s is None):
        raise EdgedynError("give exactly one of requests or duration_s")
    _check_run_length(requests, duration_s)
    if len(inputs) == 0:
        raise EdgedynError("no inputs to serve")
    selector.check_open()
    budget_fn = budget if callable(budget) else constant_budget(budget)
    tally = _Tally.of(len(selector.specs), capacity)
    timeline: list[tuple[float, int, float, float | None]] = []
    start = time.perf_counter()
    interrupted = None
    try:
        _loop(selector, inputs, tally, start, requests, duration_s, budget_fn, timeline if keep_timeline else None)
    except KeyboardInterrupt as err:
        if not report_interrupt:
            raise
        interrupted = err
    return tally.report(selector, time.perf_counter() - start, timeline, interrupted)


def _loop(selector: Selector, inputs: np.ndarray, tally: _Tally, start: float, requests: int | None,
          duration_s: float | None, budget_fn: BudgetFn, timeline: list | None) -> None:
    """The request loop: serve, and count into ``tally`` (an interrupt leaves at most the request in
    flight partly counted)."""
    n_inputs = len(inputs)
    while True:
        t = time.perf_counter() - start
        k = tally.k
        if (requests is not None and k >= requests) or (duration_s is not None and t >= duration_s):
            break
        b = budget_fn(k, t)
        if b is not None:
            tally.lo, tally.hi = min(tally.lo, b), max(tally.hi, b)
        try:
            _, info = selector.infer(inputs[k % n_inputs], b)
        except SelectorClosed:
            raise
        except (ValueError, EdgedynError):
            tally.errors += 1
            tally.k = k + 1
            continue
        i = info.subnet
        tally.lat[i].add(info.latency_ms)
        tally.overall.add(info.latency_ms)
        if not info.met:
            tally.misses[i] += 1
        if tally.last is not None and i != tally.last:
            tally.switches += 1
        tally.last = i
        if timeline is not None:
            timeline.append((t, i, info.latency_ms, b))
        tally.k = k + 1


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
