"""Model references: a built-in name, ``path/to/file.py:function`` or ``package.module:function``.

A reference is what artifacts record to rebuild a network. The factory form follows
uvicorn's ``module:app`` convention; the factory may take ``num_classes`` and
``input_size`` keyword arguments, and only those it accepts are passed. A factory's
source file is hashed (sha256) so that an artifact can refuse to rebuild from a file
that changed since.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ArtifactError, ModelError
from .cifar_resnet import resnet20, resnet56

#: Input size of a factory that does not say (no ``input_size`` default).
FACTORY_INPUT_SIZE = 224
#: Smallest input of the torchvision models that need more than 32 pixels.
_MIN_INPUT = {"inception_v3": 75, "googlenet": 32}
_IN_TREE: dict[str, tuple[Callable[..., nn.Module], int, int, int]] = {
    # name: (factory, default input, minimum input, default classes)
    "resnet20": (resnet20, 32, 8, 10),
    "resnet56": (resnet56, 32, 8, 10),
}


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision classification model (``list_models(module=torchvision.models)``)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def builtin_names() -> tuple[str, ...]:
    """The in-tree CIFAR ResNets first, then every torchvision classification model."""
    return tuple(_IN_TREE) + torchvision_names()


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference.

    ``ref`` is the text as given (what artifacts record); ``kind`` is ``builtin``,
    ``file`` or ``module``; ``source`` and ``source_sha256`` name and hash the factory's
    source file (None for built-ins).
    """

    ref: str
    kind: str
    default_input_size: int
    min_input_size: int
    default_num_classes: int | None
    source: Path | None = None
    source_sha256: str | None = None
    factory: Callable[..., Any] = field(default=lambda: None, repr=False, compare=False)

    # -- building ---------------------------------------------------------------------
    def build(self, num_classes: int | None = None, input_size: int | None = None) -> nn.Module:
        """Call the factory (untrained); one-line ModelError if it raises or returns no nn.Module."""
        if self.kind == "builtin":
            return self._build_builtin(num_classes)
        kwargs: dict[str, Any] = {}
        accepted = _accepted_kwargs(self.factory)
        if num_classes is not None and "num_classes" in accepted:
            kwargs["num_classes"] = num_classes
        if input_size is not None and "input_size" in accepted:
            kwargs["input_size"] = input_size
        try:
            model = self.factory(**kwargs)
        except Exception as err:
            raise ModelError(f"model {self.ref!r}: the factory raised {type(err).__name__}: {_first_line(err)}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"model {self.ref!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def _build_builtin(self, num_classes: int | None) -> nn.Module:
        classes = num_classes if num_classes is not None else self.default_num_classes
        if self.ref in _IN_TREE:
            return _IN_TREE[self.ref][0](classes)
        import torchvision

        kwargs: dict[str, Any] = {"weights": None, "num_classes": classes}
        if self.ref in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        return torchvision.models.get_model(self.ref, **kwargs)

    # -- artifacts --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"ref": ..., "source_sha256": ...}`` (the hash is None for built-ins)."""
        return {"ref": self.ref, "source_sha256": self.source_sha256}

    @classmethod
    def from_dict(cls, obj: Any, where: str = "model") -> ModelRef:
        """Resolve a recorded reference and refuse (one line) if its factory file changed since."""
        if not isinstance(obj, dict) or not isinstance(obj.get("ref"), str):
            raise ArtifactError(f"{where}: field 'ref' is missing or not a string")
        ref = resolve_model(obj["ref"])
        ref.check_unchanged(obj.get("source_sha256"), where)
        return ref

    def check_unchanged(self, recorded_sha256: str | None, where: str = "artifact") -> None:
        """ArtifactError naming the file when its hash differs from ``recorded_sha256``."""
        if recorded_sha256 is None and self.source_sha256 is None:
            return
        if recorded_sha256 != self.source_sha256:
            raise ArtifactError(f"{where}: model file {self.source} changed since the artifact was written "
                                f"(sha256 {str(self.source_sha256)[:12]}, recorded {str(recorded_sha256)[:12]})")


def resolve_model(ref: str | ModelRef) -> ModelRef:
    """A built-in name, ``path/to/file.py:function`` or ``package.module:function``."""
    if isinstance(ref, ModelRef):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise ModelError(f"model reference {ref!r} is empty or not a string")
    if ref in _IN_TREE:
        _, size, low, classes = _IN_TREE[ref]
        return ModelRef(ref, "builtin", size, low, classes)
    if ":" not in ref:
        if ref in torchvision_names():
            return ModelRef(ref, "builtin", 224, _MIN_INPUT.get(ref, 32), 1000)
        close = difflib.get_close_matches(ref, builtin_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {ref!r}{hint} (a torchvision classification model, resnet20, resnet56, "
                         "or path/to/file.py:function / package.module:function)")
    target, _, func_name = ref.rpartition(":")
    if not target or not func_name.isidentifier():
        raise ModelError(f"model {ref!r}: expected path/to/file.py:function or package.module:function")
    source: Path | None
    if target.endswith(".py") or "/" in target or "\\" in target:
        module, source = _import_file(ref, Path(target))
        kind = "file"
    else:
        module, source = _import_module(ref, target)
        kind = "module"
    factory = getattr(module, func_name, None)
    if factory is None:
        raise ModelError(f"model {ref!r}: {source or target} has no function {func_name!r}")
    if not callable(factory):
        raise ModelError(f"model {ref!r}: {func_name!r} in {source or target} is not callable")
    defaults = _defaults(factory)
    default_size, default_classes = defaults.get("input_size"), defaults.get("num_classes")
    return ModelRef(ref, kind, default_size if isinstance(default_size, int) else FACTORY_INPUT_SIZE, 1,
                    default_classes if isinstance(default_classes, int) else None, source,
                    file_sha256(source) if source is not None else None, factory)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import_file(ref: str, path: Path) -> tuple[Any, Path]:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"model {ref!r}: file {path} not found")
    digest = file_sha256(path)
    mod_name = f"edgedyn_user_model_{digest[:16]}_{path.stem}"
    if mod_name in sys.modules:
        return sys.modules[mod_name], path
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"model {ref!r}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[mod_name]
        raise ModelError(f"model {ref!r}: importing {path} raised {type(err).__name__}: {_first_line(err)}") from None
    finally:
        if sys.path and sys.path[0] == str(path.parent):
            del sys.path[0]
    return module, path


def _import_module(ref: str, name: str) -> tuple[Any, Path | None]:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise ModelError(f"model {ref!r}: module {err.name or name!r} not found") from None
    except Exception as err:
        raise ModelError(f"model {ref!r}: importing {name} raised {type(err).__name__}: {_first_line(err)}") from None
    file = getattr(module, "__file__", None)
    return module, Path(file).resolve() if file else None


def _accepted_kwargs(factory: Callable[..., Any]) -> set[str]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"num_classes", "input_size"}
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                 inspect.Parameter.KEYWORD_ONLY)}


def _defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]
