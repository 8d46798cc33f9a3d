"""One validation layer for the numbers in artifacts, options and API arguments.

Every number a latency table, bundle manifest or search result holds is checked here on
load, once: that it is a number (not a bool, string or null), finite, and within its
physical range. A failure raises :class:`~edgedyn.errors.ArtifactError` with one line
naming the file and the field, e.g.::

    profiles/x.json: entries[op=conv|c_in=16|...]: field 'ms' must be a finite number > 0, got NaN

The same rule (:func:`number_problem`) backs the CLI's option types
(:mod:`edgedyn.cli_types`) and the runtime's budget checks, which raise
:class:`NumberError` instead.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from typing import Any

from .errors import ArtifactError, EdgedynError

SEARCH_RESULT_SCHEMA = "edgedyn.search_result/1"


class NumberError(EdgedynError, ValueError):
    """A number given to the API or on the command line that is not finite or out of range."""


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                   hi_open: bool = False, integer: bool = False) -> str:
    """``"a finite number > 0"``, ``"an integer in [1, 8]"``, ... for error messages."""
    what = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        return f"{what} in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{what} {'>' if lo_open else '>='} {_fmt(lo)}"
    if hi is not None:
        return f"{what} {'<' if hi_open else '<='} {_fmt(hi)}"
    return what


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 4, 4, 4, 40, 40
    return r


_REPR = _short_repr()


def _digits(n: int) -> int:
    """Decimal digits of ``n`` >= 1, without str() (refused past 4,300 digits)."""
    d = int((n.bit_length() - 1) * math.log10(2)) + 1  # exact or one short
    return d + 1 if n >= 10 ** d else d


def _show(value: Any) -> str:
    """``value`` for a one-line message: short and bounded whatever it is (a 5,000-digit
    integer, a list nested a thousand deep, a megabyte of text)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {_digits(abs(value))} digits"
    if isinstance(value, (int, bool)) or value is None:
        return "null" if value is None else repr(value)
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # a huge int inside a list, say
        text = "..."
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def number_problem(value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                   hi_open: bool = False, integer: bool = False) -> str | None:
    """None when ``value`` is a finite number (an int with ``integer``) within the range,
    else what is wrong, as ``"must be a finite number > 0, got NaN"``."""
    expected = describe_range(lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # numpy scalars: accept them as what they hold
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            elif isinstance(value, np.floating) and not integer:
                value = float(value)
            else:
                return f"must be {expected}, got {_show(value)}"
        except ImportError:  # pragma: no cover - numpy is a dependency
            return f"must be {expected}, got {_show(value)}"
    if integer and not isinstance(value, int):
        return f"must be {expected}, got {_show(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be {expected}, got {_show(value)}"
    if lo is not None and (value <= lo if lo_open else value < lo):
        return f"must be {expected}, got {_show(value)}"
    if hi is not None and (value >= hi if hi_open else value > hi):
        return f"must be {expected}, got {_show(value)}"
    return None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one): the
    upper end of every thread count."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_ramp(text: str, name: str | None = "--ramp") -> tuple[float, float]:
    """``"A:B"`` as two budgets in ms, each a finite number > 0; :class:`NumberError` naming
    ``name`` (when given) and ``text`` otherwise."""
    label = f"{name} {text!r}" if name else repr(text)
    usage = f"{label}: expected two budgets in ms, A:B (e.g. 5:0.5)"
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 2:
        raise NumberError(usage)
    out = []
    for end, part in zip("AB", parts):
        try:
            v = float(part)
        except ValueError:
            raise NumberError(usage) from None
        problem = number_problem(v, 0.0, lo_open=True)
        if problem is not None:
            raise NumberError(f"{label}: {end} {problem}")
        out.append(v)
    return out[0], out[1]


# -- artifact fields -------------------------------------------------------------------
def _fail(where: str, field: str, problem: str) -> ArtifactError:
    return ArtifactError(f"{where}: field '{field}' {problem}")


def finite(value: Any, where: str, field: str, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float if it is a finite number within the range, else ArtifactError
    naming ``where`` (the file) and ``field``."""
    problem = number_problem(value, lo, hi, lo_open=lo_open, hi_open=hi_open)
    if problem is not None:
        raise _fail(where, field, problem)
    return float(value)


def positive(value: Any, where: str, field: str, *, hi: float | None = None) -> float:
    """A finite number > 0 (latencies, costs)."""
    return finite(value, where, field, lo=0.0, lo_open=True, hi=hi)


def nonneg(value: Any, where: str, field: str, *, hi: float | None = None) -> float:
    """A finite number >= 0."""
    return finite(value, where, field, lo=0.0, hi=hi)


def fraction(value: Any, where: str, field: str) -> float:
    """A finite number in [0, 1] (accuracies, agreement)."""
    return finite(value, where, field, lo=0.0, hi=1.0)


def integer(value: Any, where: str, field: str, *, lo: int | None = 0, hi: int | None = None) -> int:
    """An integer (not a bool, not a float) in [lo, hi]: counts, indices, thread counts."""
    problem = number_problem(value, lo, hi, integer=True)
    if problem is not None:
        raise _fail(where, field, problem)
    return int(value)


def optional(check: Any, value: Any, where: str, field: str, **kw: Any) -> Any:
    """``None`` stays ``None``; anything else goes through ``check`` (e.g. :func:`positive`)."""
    return None if value is None else check(value, where, field, **kw)


def field_of(obj: Mapping, key: str, where: str, field: str | None = None) -> Any:
    """``obj[key]``; ArtifactError naming the field when it is missing."""
    if not isinstance(obj, Mapping):
        raise ArtifactError(f"{where}: field '{field or key}' is missing (its parent is not an object)")
    if key not in obj:
        raise _fail(where, field or key, "is missing")
    return obj[key]


def numbers(values: Any, where: str, field: str, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, integer: bool = False, min_len: int = 0) -> list:
    """A list of finite numbers (integers with ``integer``) within the range."""
    if not isinstance(values, list):
        raise _fail(where, field, f"must be a list, got {_show(values)}")
    if len(values) < min_len:
        raise _fail(where, field, f"must have at least {min_len} items, got {len(values)}")
    for i, v in enumerate(values):
        problem = number_problem(v, lo, hi, lo_open=lo_open, integer=integer)
        if problem is not None:
            raise _fail(where, f"{field}[{i}]", problem)
    return [int(v) for v in values] if integer else [float(v) for v in values]


def all_finite(obj: Any, where: str, field: str = "") -> None:
    """Refuse a NaN or infinite number anywhere inside ``obj`` (JSON-like nesting).

    The catch-all behind the per-field checks: no artifact holds a non-finite number
    anywhere, so nothing non-finite is carried along and written again.
    """
    stack: list[tuple[Any, str]] = [(obj, field)]
    isfinite = math.isfinite
    while stack:
        value, path = stack.pop()
        if type(value) is float:
            if not isfinite(value):
                raise _fail(where, path or "(top level)", f"must be a finite number, got {_show(value)}")
        elif isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))


def _obj(value: Any, where: str, field: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, field, f"must be an object, got {_show(value)}")
    return value


def _obj_or_null(value: Any, where: str, field: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(where, field, f"must be an object or null, got {_show(value)}")
    return value


# -- search results (subnets.json) ----------------------------------------------------------
def validate_search_result(doc: dict, where: str) -> None:
    """Check every number of a ``subnets.json`` document (schema ``edgedyn.search_result/1``).

    ``where`` names the file in the one-line :class:`ArtifactError`. Checked:
    ``cost.full`` finite > 0; per sub-net ``widths`` positive integers, ``cost`` finite > 0,
    ``macs`` and ``params`` non-negative integers, ``holdout_accuracy`` / ``test_accuracy``
    in [0, 1] (or null), ``budget.value`` finite > 0; ``average_test_accuracy`` and the
    search path's accuracies in [0, 1] and costs > 0; the settings deploy reads back
    (``config.seed`` an integer >= 0, ``config.holdout_fraction`` in [0, 1),
    ``config.data_limit`` an integer >= 1 or null, ``config.data`` a string); and no NaN
    or infinity anywhere.
    """
    if not isinstance(doc, dict):
        raise ArtifactError(f"{where}: top level must be a JSON object")
    if doc.get("schema") != SEARCH_RESULT_SCHEMA:
        raise _fail(where, "schema", f"is {doc.get('schema')!r}, expected {SEARCH_RESULT_SCHEMA!r}")
    cost = _obj(field_of(doc, "cost", where), where, "cost")
    positive(field_of(cost, "full", where, "cost.full"), where, "cost.full")
    subnets = field_of(doc, "subnets", where)
    if not isinstance(subnets, list):
        raise _fail(where, "subnets", f"must be a list, got {_show(subnets)}")
    for i, s in enumerate(subnets):
        f = f"subnets[{i}]"
        s = _obj(s, where, f)
        widths = field_of(s.get("spec", s), "widths", where, f"{f}.widths")
        numbers(widths, where, f"{f}.widths", lo=1, integer=True, min_len=1)
        positive(field_of(s, "cost", where, f"{f}.cost"), where, f"{f}.cost")
        for k in ("macs", "params"):
            if k in s:
                integer(s[k], where, f"{f}.{k}", lo=0)
        for k in ("holdout_accuracy", "test_accuracy"):
            optional(fraction, s.get(k), where, f"{f}.{k}")
        budget = _obj_or_null(s.get("budget"), where, f"{f}.budget")
        if budget is not None and "value" in budget:
            positive(budget["value"], where, f"{f}.budget.value")
    optional(fraction, doc.get("average_test_accuracy"), where, "average_test_accuracy")
    # the run settings deploy reads back (the data split it evaluates on)
    config = _obj(doc.get("config", {}), where, "config")
    if not isinstance(config.get("data", ""), str):
        raise _fail(where, "config.data", f"must be a dataset spec (a string), got {_show(config['data'])}")
    if "seed" in config:
        integer(config["seed"], where, "config.seed", lo=0)
    if "holdout_fraction" in config:
        finite(config["holdout_fraction"], where, "config.holdout_fraction", lo=0.0, hi=1.0, hi_open=True)
    optional(integer, config.get("data_limit"), where, "config.data_limit", lo=1)
    table = doc.get("table")
    if table is not None and not isinstance(table, (str, dict)):
        raise _fail(where, "table", f"must be an object, a path or null, got {_show(table)}")
    path = doc.get("path", [])
    if not isinstance(path, list):
        raise _fail(where, "path", f"must be a list, got {_show(path)}")
    for i, p in enumerate(path):
        p = _obj(p, where, f"path[{i}]")
        if "cost" in p:
            positive(p["cost"], where, f"path[{i}].cost")
        for k in ("holdout_accuracy", "test_accuracy"):
            optional(fraction, p.get(k), where, f"path[{i}].{k}")
    all_finite(doc, where)


__all__ = ["NumberError", "SEARCH_RESULT_SCHEMA", "all_finite", "available_cpus", "describe_range", "field_of",
           "finite", "fraction", "integer", "nonneg", "number_problem", "numbers", "optional", "parse_ramp",
           "positive", "validate_search_result"]
