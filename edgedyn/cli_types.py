"""One rule for numbers on the command line: click parameter types over :mod:`edgedyn.validate`.

Every numeric option of every command uses one of these. Each refuses NaN, infinities,
non-numbers and values out of its range with click's usage error (exit status 2) naming
the option, e.g. ``Invalid value for '--budget-ms': must be a finite number > 0, got NaN``.

- :class:`FiniteFloat` -- a finite float within optional (open or closed) bounds;
- :class:`Int` -- an integer within optional bounds (:data:`POSITIVE_INT`, :data:`NONNEG_INT`);
- :class:`Threads` -- a thread count from 1 to the CPUs available; a higher count warns on
  stderr and is capped;
- :class:`Ramp` -- a budget ramp ``A:B`` of two finite budgets > 0 (ms).
"""

from __future__ import annotations

import math
from typing import Any

import click

from .validate import NumberError, available_cpus, describe_range, number_problem, parse_ramp


def _given(value: Any) -> str:
    """The value a user gave, for a one-line message: at most 40 characters."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit of str()
        return "an integer of more than 4,300 digits"
    return text if len(text) <= 40 else text[:37] + "..."


def _option_name(param: click.Parameter | None) -> str:
    if param is None:
        return "value"
    opts = getattr(param, "opts", None) or []
    return max(opts, key=len) if opts else str(param.name)


class FiniteFloat(click.ParamType):
    """A finite float in [min, max] (``min_open`` / ``max_open``: the bound itself excluded)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *, min_open: bool = False,
                 max_open: bool = False) -> None:
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "FLOAT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, bool):
            self.fail(f"must be {self._range()}, got {_given(value)}", param, ctx)
        if isinstance(value, (int, float)):
            number: Any = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"must be {self._range()}, got {_given(value)}", param, ctx)
        problem = number_problem(number, self.min, self.max, lo_open=self.min_open, hi_open=self.max_open)
        if problem is not None:
            self.fail(problem, param, ctx)
        return number

    def _range(self) -> str:
        return describe_range(self.min, self.max, lo_open=self.min_open, hi_open=self.max_open)

    def __repr__(self) -> str:
        return f"FiniteFloat({self._range()})"


class Int(click.ParamType):
    """An integer in [min, max]. ``"8"`` and ``"8.0"`` are 8; ``"8.5"``, ``"nan"``, ``"1e999"`` are refused."""

    name = "integer"

    def __init__(self, min: int | None = None, max: int | None = None) -> None:
        self.min, self.max = min, max

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "INTEGER"

    def _parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        expected = describe_range(self.min, self.max, integer=True)
        if isinstance(value, bool):
            self.fail(f"must be {expected}, got {_given(value)}", param, ctx)
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)
        except ValueError:
            self.fail(f"must be {expected}, got {_given(value)}", param, ctx)
        if not math.isfinite(f) or f != int(f):
            self.fail(f"must be {expected}, got {_given(value)}", param, ctx)
        return int(f)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = self._parse(value, param, ctx)
        problem = number_problem(number, self.min, self.max, integer=True)
        if problem is not None:
            self.fail(problem, param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Int({describe_range(self.min, self.max, integer=True)})"


POSITIVE_INT = Int(min=1)
NONNEG_INT = Int(min=0)
POSITIVE_FLOAT = FiniteFloat(min=0.0, min_open=True)
# the options that fix a dynamic network: bounded, so that no value builds a net too big to trace
INPUT_SIZE = Int(min=1, max=2048)  # each model's own minimum is checked when it is built
NUM_CLASSES = Int(min=1, max=100_000)
CHANNEL_GROUPS = Int(min=1, max=4096)
EPOCHS = Int(min=0, max=100_000)
SEED = Int(min=0, max=2 ** 32 - 1)


class Threads(Int):
    """A thread count: an integer >= 1; above the CPUs available, a warning on stderr and the cap."""

    name = "threads"

    def __init__(self) -> None:
        super().__init__(min=1)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        n = available_cpus()
        number = self._parse(value, param, ctx)
        if number < 1:
            self.fail(f"threads must be >= 1 (an integer; above the {n} CPUs available it is capped), "
                      f"got {_given(value)}", param, ctx)
        if number > n:
            click.echo(f"warning: {_option_name(param)} {number} is more than the {n} CPUs available here; "
                       f"using {n}", err=True)
            return n
        return number


class Ramp(click.ParamType):
    """A budget ramp ``A:B`` (ms), both finite and > 0; kept as text for :func:`edgedyn.runtime.serve.make_budget`."""

    name = "A:B"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            a, b = parse_ramp(text, None)  # click's message names the option
        except NumberError as err:
            self.fail(str(err), param, ctx)
        return f"{a!r}:{b!r}"


__all__ = ["CHANNEL_GROUPS", "EPOCHS", "FiniteFloat", "INPUT_SIZE", "Int", "NONNEG_INT", "NUM_CLASSES",
           "POSITIVE_FLOAT", "POSITIVE_INT", "Ramp", "SEED", "Threads"]


#: the help of every --model option: what edgedyn.models.resolve_model accepts
MODEL_HELP = ("A torchvision classification model or resnet20 / resnet56, or path/to/file.py:function, "
              "or package.module:function.")
