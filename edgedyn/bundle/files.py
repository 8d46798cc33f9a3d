"""The files a bundle lists: their sha256 records, and the check that every one is intact."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from .manifest import Manifest


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(root: Path, path: Path) -> dict[str, Any]:
    """``{"path": relative path, "sha256", "bytes"}`` of a file inside the bundle ``root``."""
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _mismatch(path: Path, digest: str, rec: dict[str, Any], label: str, manifest: Manifest) -> ArtifactError:
    return ArtifactError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                         f"{rec['sha256'][:12]}... ({label}); the bundle was modified")


def _listed(manifest: Manifest, label: str, rec: dict[str, Any]) -> Path:
    path = manifest.root / rec["path"]
    if not path.is_file():
        raise ArtifactError(f"{path}: file listed in {manifest.path} ({label}) is missing")
    return path


def verify_files(manifest: Manifest, skip: Collection[str] = ()) -> None:
    """Raise a one-line ArtifactError naming the file unless every listed file exists with its
    sha256; the files whose labels are in ``skip`` are left to :func:`read_verified`."""
    for label, rec in manifest.all_files():
        if label in skip:
            continue
        path = _listed(manifest, label, rec)
        digest = sha256_file(path)
        if digest != rec["sha256"]:
            raise _mismatch(path, digest, rec, label, manifest)


def read_verified(manifest: Manifest, label: str, rec: dict[str, Any]) -> bytes:
    """The bytes of a listed file, read once and checked against its sha256: whoever uses them
    uses what was verified (a file swapped after the check is never read)."""
    path = _listed(manifest, label, rec)
    with open(path, "rb") as fh:  # one open, one read: hashed and returned together
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != rec["sha256"]:
        raise _mismatch(path, digest, rec, label, manifest)
    return data
