"""What the runtime accepts: budgets, thread counts and request inputs, each checked in one place.

A budget is ``None`` or a finite number > 0 (ms); anything else raises
:class:`~edgedyn.validate.NumberError` (a ``ValueError``). An input is a numpy array, or a CPU
``torch.Tensor`` (converted without a copy), of the bundle's shape and dtype; anything else
raises ``ValueError`` (a CUDA tensor: :class:`InputError`, also a ``ValueError``).
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import numpy as np

from ..errors import EdgedynError
from ..validate import NumberError, available_cpus, number_problem


class InputError(EdgedynError, ValueError):
    """An input ``infer`` cannot take (a tensor on a GPU, ...)."""


def check_budget(value: object, name: str = "budget_ms") -> float | None:
    """``None``, or ``value`` as a float if it is a finite number > 0 (ms); else :class:`NumberError`
    naming ``name``."""
    if value is None:
        return None
    problem = number_problem(value, 0.0, lo_open=True)
    if problem is not None:
        raise NumberError(f"{name} {problem}")
    return float(value)  # type: ignore[arg-type]


def check_threads(value: object, name: str = "threads") -> int | None:
    """``None``, or a thread count >= 1; above the CPUs available it is capped, with a warning."""
    if value is None:
        return None
    problem = number_problem(value, 1, integer=True)
    if problem is not None:
        raise NumberError(f"{name} {problem}")
    count = int(cast(float, value))  # number_problem accepted it: an integral number
    n = available_cpus()
    if count > n:
        warnings.warn(f"{name}={value} is more than the {n} CPUs available; using {n}", stacklevel=3)
        return n
    return count


def as_array(x: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``x`` if it is a well-formed input (a CPU tensor as an ndarray), else ValueError."""
    if type(x) is not np.ndarray and type(x).__module__.startswith("torch"):
        import torch

        if isinstance(x, torch.Tensor):
            if x.device.type != "cpu":
                raise InputError(f"input is a torch.Tensor on {x.device}; the selector takes CPU inputs "
                                 f"(move it with .cpu() first)")
            x = x.detach().numpy()
    if isinstance(x, np.ndarray) and x.shape == shape and x.dtype == dtype:
        return x
    raise ValueError(input_problem(x, shape, dtype))


def input_problem(x: Any, shape: tuple[int, ...], dtype: np.dtype) -> str:
    """Why ``x`` is not an input of ``shape`` and ``dtype`` (one line)."""
    if not isinstance(x, np.ndarray):
        return f"input must be a numpy array of shape {shape} and dtype {dtype}, got {type(x).__name__}"
    if tuple(x.shape) != shape:
        return f"input shape {tuple(x.shape)} does not match the bundle's {shape}"
    return f"input dtype {x.dtype} does not match the bundle's {dtype}"
