"""Versioned JSON artifacts: atomic writes and validated loads.

Every artifact edgedyn writes (latency table, search result, bundle manifest) is a JSON
object with a ``schema`` field such as ``"edgedyn.latency_table/1"``. Loads check it
and raise :class:`ArtifactError` naming the file and the field.
"""

from __future__ import annotations

import json
import os
import stat
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


def load_json(path: str | os.PathLike, schema: str | None = None, *, max_bytes: int | None = None,
              what: str = "JSON artifact") -> dict:
    """Load a JSON object, checking ``schema`` (``name/major``) when given, refusing a file
    over ``max_bytes`` before reading it and JSON nested past Python's recursion limit.

    Raises :class:`ArtifactError` with a one-line message naming the file (and field).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise ArtifactError(f"{path}: {path.stat().st_size} bytes is too large for a {what}")
    try:
        obj = json.loads(path.read_bytes())
    except RecursionError:
        raise ArtifactError(f"{path}: not a {what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ArtifactError(f"{path}: not valid JSON ({first})") from None
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


# -- refuse before destroying ----------------------------------------------------------------
_BUNDLE_KIND = "edgedyn.bundle"  # edgedyn.deploy's BUNDLE_SCHEMA, without importing deploy here
_BUNDLE_MANIFEST = "manifest.json"
_MAX_INSPECT_BYTES = 256 << 20  # an artifact this large is not read whole to learn its kind


def _kind(schema: str) -> str:
    return schema.split("/", 1)[0]


def _found_kind(path: Path) -> str:
    """What the regular file at ``path`` is, as the schema kind it declares or a few words."""
    size = path.stat().st_size
    if size > _MAX_INSPECT_BYTES:
        return f"a file of {size} bytes, too large to be checked"
    try:
        obj = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "not a JSON artifact"
    found = obj.get("schema") if isinstance(obj, dict) else None
    if not isinstance(found, str):
        return "a JSON file without a 'schema' field"
    return _kind(found)


def _bundle_of(path: Path) -> Path | None:
    """The bundle directory ``path`` lies in (its folder holds a bundle manifest), or None."""
    manifest = path.parent / _BUNDLE_MANIFEST
    try:
        if not manifest.is_file() or manifest.stat().st_size > _MAX_INSPECT_BYTES:
            return None
        obj = json.loads(manifest.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    found = obj.get("schema") if isinstance(obj, dict) else None
    return path.parent if isinstance(found, str) and _kind(found) == _BUNDLE_KIND else None


def refuse_foreign(path: str | os.PathLike, schema: str, *, allow: bool = False, hint: str = "") -> None:
    """Refuse (one-line :class:`ArtifactError`) to write an artifact of ``schema``'s kind over
    something that is not one: another schema, a file that is not JSON, a directory, a FIFO
    or device, or any existing file of a deployed bundle (a folder holding a bundle
    ``manifest.json``), unless the artifact written is a bundle manifest itself.

    ``schema`` is ``name/major`` or ``name``; kinds are compared without the version, so an
    older table may be replaced by a newer one. A missing ``path`` is fine. ``allow=True``
    (an ``--overwrite`` flag) skips the check. ``hint`` ends the message ("; pass --overwrite").
    Nothing is opened that is not a regular file (a FIFO would block the open).
    """
    if allow:
        return
    path = Path(path)
    kind = _kind(schema)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise ArtifactError(f"{path}: cannot check it before writing a {kind} ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        found = "a directory"
    elif not stat.S_ISREG(st.st_mode):
        found = "not a regular file"
    elif kind != _BUNDLE_KIND and (bundle := _bundle_of(path)) is not None:
        found = f"a file of the bundle {bundle}"
    else:
        try:
            found = _found_kind(path)
        except OSError as err:
            raise ArtifactError(f"{path}: cannot check it before writing a {kind} ({err.strerror})") from None
        if found == kind:
            return
        if "." in found and " " not in found:
            found = f"a {found} artifact"
    raise ArtifactError(f"{path}: refusing to overwrite it with a {kind}: it is {found}{hint}")
