"""The files a bundle lists: their sha256 records, and the check that every one is intact."""

from __future__ import annotations

import hashlib
import os
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


def verify_files(manifest: Manifest) -> None:
    """Raise a one-line ArtifactError naming the file unless every listed file exists with its sha256."""
    root = manifest.root
    for label, rec in manifest.all_files():
        path = root / rec["path"]
        if not path.is_file():
            raise ArtifactError(f"{path}: file listed in {manifest.path} ({label}) is missing")
        digest = sha256_file(path)
        if digest != rec["sha256"]:
            raise ArtifactError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                                f"{rec['sha256'][:12]}... ({label}); the bundle was modified")
