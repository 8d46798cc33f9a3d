"""Versioned JSON artifacts: atomic writes and validated loads.

Every artifact edgedyn writes (latency table, search result, bundle manifest) is a JSON
object with a ``schema`` field such as ``"edgedyn.latency_table/1"``. Loads check it
and raise :class:`ArtifactError` naming the file and the field.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ArtifactError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make artifacts private
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` as indented, standard JSON and write it atomically.

    A NaN or infinite number is refused (:class:`ArtifactError` naming the file) before
    anything is written: ``NaN`` is not JSON, and no artifact may hold one.
    """
    try:
        text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=False)
    except ValueError as err:
        from .validate import all_finite

        try:
            all_finite(obj, str(path))
        except ArtifactError as found:  # names the field
            raise ArtifactError(f"refusing to write {found}") from None
        raise ArtifactError(f"{path}: refusing to write it ({err})") from None
    return atomic_write_bytes(path, (text + "\n").encode())


def load_json(path: str | os.PathLike, schema: str | None = None) -> dict:
    """Load a JSON object, checking ``schema`` (``name/major``) when given.

    Raises :class:`ArtifactError` with a one-line message naming the file (and field).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: top level must be a JSON object")
    if schema is not None:
        found = obj.get("schema")
        if found is None:
            raise ArtifactError(f"{path}: field 'schema' is missing (expected {schema!r})")
        if found != schema:
            raise ArtifactError(f"{path}: field 'schema' is {found!r}, expected {schema!r}")
    return obj


def require(obj: Mapping, field: str, typ: type | tuple[type, ...], where: str) -> Any:
    """Return ``obj[field]`` checked against ``typ``; raise ArtifactError naming ``where.field``."""
    if field not in obj:
        raise ArtifactError(f"{where}: field '{field}' is missing")
    value = obj[field]
    if typ in (float, (int, float)) and isinstance(value, bool):
        raise ArtifactError(f"{where}: field '{field}' must be a number")
    if not isinstance(value, typ):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ArtifactError(f"{where}: field '{field}' must be {name}, got {type(value).__name__}")
    return value
