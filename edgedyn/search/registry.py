"""The search methods by name: ``register_method`` adds one, ``get_method`` finds one.

A method is a class (:class:`edgedyn.search.methods.base.Method`) with a ``name``, an
options dataclass (``Options``, a :class:`MethodOptions`) and, optionally, named
``variants`` for the benchmark. Every module in :mod:`edgedyn.search.methods` is imported
the first time a method is looked up, and registers its class there: adding a method is
one new file in that folder (plus its tests). Code outside the package registers its own
with :func:`register_method`.

This module imports no method (the methods import it), so :class:`~edgedyn.search.config.
SearchConfig` can validate a method's options without depending on the methods' code.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

from ..errors import EdgedynError
from .checkpoint import PHASES

_REGISTRY: dict[str, MethodClass] = {}
_DISCOVERED = False
M = TypeVar("M", bound="MethodClass")  # a method class
O = TypeVar("O", bound="MethodOptions")  # noqa: E741


@dataclass(frozen=True)
class Variant:
    """A named setting of a method (the benchmark's rows): ``SearchConfig`` overrides and
    the cost model that steers the search (``"latency"`` or ``"flops"``)."""

    overrides: dict[str, Any]
    cost: str = "latency"
    doc: str = ""


@dataclass(frozen=True)
class MethodOptions:
    """A method's own settings, read from the flat :class:`SearchConfig` (a field of the same
    name) or its ``options`` mapping, and checked by :meth:`validate`."""

    @classmethod
    def from_config(cls: type[O], config: Any) -> O:
        """The options of ``config`` (a ``SearchConfig``), validated; unknown keys in
        ``config.options`` are a one-line error."""
        names = {f.name for f in fields(cls)}
        extra: Mapping[str, Any] = getattr(config, "options", None) or {}
        unknown = sorted(set(extra) - names)
        if unknown:
            raise EdgedynError(f"method {config.method!r} has no option {', '.join(map(repr, unknown))}; "
                               f"its options are {', '.join(sorted(names)) or 'none'}")
        shadow = sorted(k for k in extra if hasattr(config, k))
        if shadow:
            raise EdgedynError(f"option {shadow[0]!r} of method {config.method!r} is a setting of its own; "
                               "set it there, not in 'options'")
        values = {n: extra[n] if n in extra else getattr(config, n) for n in names
                  if n in extra or hasattr(config, n)}
        opts = cls(**values)
        opts.validate(config)
        return opts

    def validate(self, config: Any) -> None:
        """Raise :class:`EdgedynError` (one line) for a bad value; ``config`` gives the shared settings."""

    def recorded(self, config: Any) -> dict[str, Any]:
        """Fields whose resolved value ``subnets.json`` records instead of the given one."""
        return {}

    def net_options(self, cost_models: tuple[Any, ...]) -> dict[str, Any]:
        """Extra keyword arguments of the run's ``DynamicNet`` (autoslim's block-aware grid);
        ``cost_models``: the budgets' cost model, then the steering one."""
        return {}


class MethodClass(Protocol):
    """What the registry needs of a method class (the class object itself)."""

    @property
    def name(self) -> str: ...

    @property
    def Options(self) -> type[MethodOptions]: ...

    @property
    def variants(self) -> dict[str, Variant]: ...


def register_method(cls: M) -> M:
    """Register a method class under its ``name`` (a class decorator); a name is taken once."""
    name = cls.name
    if not name or not isinstance(name, str):
        raise EdgedynError(f"{_where(cls)}: a method needs a non-empty string 'name'")
    _check_phases(cls)
    held = _REGISTRY.get(name)
    if held is not None and held is not cls and _where(held) != _where(cls):
        raise EdgedynError(f"method {name!r} is registered already ({_where(held)})")
    _REGISTRY[name] = cls
    return cls


def _check_phases(cls: object) -> None:
    """``phases``: ``pretrain`` first, then phases of :data:`PHASES` in its order (before
    ``train``), each a method of the class."""
    phases = tuple(getattr(cls, "phases", ()))
    known = PHASES[:PHASES.index("train")]
    if (not phases or phases[0] != "pretrain" or any(p not in known for p in phases)
            or list(phases) != sorted(phases, key=known.index)
            or not all(callable(getattr(cls, p, None)) for p in phases)):
        raise EdgedynError(f"{_where(cls)}: 'phases' must be 'pretrain' then phases of {', '.join(known[1:])} "
                           f"in that order, each a method of the class; got {phases}")


def _where(cls: object) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"


def unregister_method(name: str) -> None:
    """Remove a method (tests that register a toy one clean up with this)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Import every module of :mod:`edgedyn.search.methods` once (each registers its class)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module(f"{__package__}.methods")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{package.__name__}.{info.name}")


def method_names() -> tuple[str, ...]:
    """The registered methods' names: the built-in ones (their modules' names in order), then
    those registered from outside in the order they were."""
    _discover()
    return tuple(_REGISTRY)


def get_method(name: str) -> MethodClass:
    """The method class registered as ``name`` (one-line error for an unknown one)."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EdgedynError(f"method {name!r} is unknown; use one of {', '.join(method_names())}") from None


def method_options(config: Any) -> MethodOptions:
    """``config``'s method options, validated (``config``: a ``SearchConfig``)."""
    return get_method(config.method).Options.from_config(config)


def variants() -> dict[str, Variant]:
    """Every method's named variants (the benchmark's rows), by name."""
    out: dict[str, Variant] = {}
    for name in method_names():
        for key, variant in get_method(name).variants.items():
            if key in out:
                raise EdgedynError(f"variant {key!r} is declared by two methods")
            out[key] = Variant({"method": name, **variant.overrides}, variant.cost, variant.doc)
    return out


__all__ = ["MethodClass", "MethodOptions", "Variant", "get_method", "method_names", "method_options",
           "register_method", "unregister_method", "variants"]
