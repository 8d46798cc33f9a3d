"""Bundle authenticity: an HMAC-SHA256 signature over the manifest (``manifest.sig``).

The manifest records every file's sha256, so a signature over the manifest covers every file:
whoever can write the bundle but does not hold the key cannot replace an ONNX file and
recompute its sha256 in the manifest without the signature failing.

``manifest.sig`` (schema ``"edgedyn.bundle_signature/1"``)::

    {"schema": "edgedyn.bundle_signature/1", "algorithm": "hmac-sha256",
     "key_id": 16 hex digits (an HMAC of a fixed label under the key: names the key, reveals nothing),
     "manifest_sha256": sha256 of the canonical manifest bytes, "signature": 64 hex digits}

The signed bytes are the manifest's *canonical* form: its JSON object serialised with sorted
keys, no whitespace, ASCII only (``json.dumps(obj, sort_keys=True, separators=(",", ":"))``).
Re-indenting the file keeps the signature valid; changing any value does not.

:func:`load_manifest` reads ``manifest.json`` once, checks the signature over the object it
parsed, and builds the :class:`~edgedyn.bundle.Manifest` from that same object. The key is a
file of at least 16 bytes, used as is (``head -c 32 /dev/urandom > bundle.key``); keep it
outside the bundle.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, load_json, require
from ..errors import ArtifactError
from .manifest import BUNDLE_SCHEMA, MANIFEST_NAME, Manifest

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_SCHEMA = "edgedyn.bundle_signature/1"
ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 1 << 16
MAX_MANIFEST_BYTES = 64 << 20

KeySource = str | os.PathLike | bytes


def read_key(key: KeySource) -> bytes:
    """The key itself (``bytes``), or the bytes of a key file; one line if unusable."""
    if isinstance(key, bytes):
        data, where = key, "the key"
    else:
        path = Path(key)
        where = str(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: key file not found (or not a regular file)")
        if path.stat().st_size > MAX_KEY_BYTES:
            raise ArtifactError(f"{path}: a key file of {path.stat().st_size} bytes is not a key (at most "
                                f"{MAX_KEY_BYTES})")
        data = path.read_bytes()
    if len(data) < MIN_KEY_BYTES:
        raise ArtifactError(f"{where}: a key needs at least {MIN_KEY_BYTES} bytes, this one has {len(data)} "
                            f"(make one with: head -c 32 /dev/urandom > KEYFILE)")
    return data


def canonical_bytes(obj: Any) -> bytes:
    """The bytes a signature covers: ``obj`` as sorted, compact, ASCII JSON."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def key_id(key: bytes) -> str:
    return hmac.new(key, b"edgedyn bundle key id", hashlib.sha256).hexdigest()[:16]


def _signature(key: bytes, canonical: bytes) -> str:
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _read_json(path: Path, schema: str, what: str) -> dict[str, Any]:
    """The JSON object at ``path`` of ``schema``, read once (one-line ArtifactError naming the file)."""
    return load_json(path, schema, max_bytes=MAX_MANIFEST_BYTES, what=what)


def _read_manifest(path: Path) -> dict[str, Any]:
    return _read_json(path, BUNDLE_SCHEMA, "bundle manifest")


def sign_bundle(root: str | os.PathLike, key: KeySource) -> Path:
    """Write ``root/manifest.sig``: the HMAC-SHA256 of the canonical ``root/manifest.json``."""
    root = Path(root)
    secret = read_key(key)
    canonical = canonical_bytes(_read_manifest(root / MANIFEST_NAME))
    return atomic_write_json(root / SIGNATURE_NAME, {
        "schema": SIGNATURE_SCHEMA, "algorithm": ALGORITHM, "key_id": key_id(secret),
        "manifest_sha256": hashlib.sha256(canonical).hexdigest(), "signature": _signature(secret, canonical)})


def verify_signature(manifest_path: Path, obj: dict[str, Any], key: KeySource) -> None:
    """Refuse (one line) unless ``manifest_path``'s ``manifest.sig`` signs ``obj`` under ``key``."""
    secret = read_key(key)
    sig_path = manifest_path.parent / SIGNATURE_NAME
    if not sig_path.is_file():
        raise ArtifactError(f"{sig_path}: missing: the bundle is not signed (deploy --sign KEYFILE); "
                            f"refusing it (--verify-key)")
    doc = _read_json(sig_path, SIGNATURE_SCHEMA, "bundle signature")
    where = str(sig_path)
    algorithm = require(doc, "algorithm", str, where)
    if algorithm != ALGORITHM:
        raise ArtifactError(f"{where}: field 'algorithm' is {algorithm!r}, expected {ALGORITHM!r}")
    signature = require(doc, "signature", str, where)
    expected = _signature(secret, canonical_bytes(obj))
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        other = doc.get("key_id") != key_id(secret)
        why = ("it was signed with another key" if other else
               "the manifest was modified after it was signed")
        raise ArtifactError(f"{where}: the signature does not match {manifest_path} under this key ({why}); "
                            f"refusing the bundle (--verify-key)")


def load_manifest(path: str | os.PathLike, verify_key: KeySource | None = None) -> Manifest:
    """Load a bundle's manifest (``path``: the bundle directory or its ``manifest.json``),
    reading it once; with ``verify_key``, refuse it unless ``manifest.sig`` signs exactly the
    object the :class:`Manifest` is built from."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    obj = _read_manifest(path)
    if verify_key is not None:
        verify_signature(path, obj, verify_key)
    return Manifest.from_dict(obj, path)


__all__ = ["SIGNATURE_NAME", "SIGNATURE_SCHEMA", "canonical_bytes", "load_manifest", "read_key", "sign_bundle",
           "verify_signature"]
