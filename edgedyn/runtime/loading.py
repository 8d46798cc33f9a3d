"""Loading a bundle for serving: verify it, then load every sub-net once, from the bytes verified.

:func:`open_manifest` reads the manifest once (a bundle that is a symlink, as deploy swaps them,
is resolved first, so one version is read throughout) and, with a key, checks its signature
(:mod:`edgedyn.bundle.signature`). :func:`verify_bundle` refuses (one-line
:class:`~edgedyn.errors.EdgedynError` naming the file or field) a modified or missing file, a
bundle made for another device fingerprint (unless ``allow_other_device``), or for another
backend than the one asked for. :func:`load_runners` reads each sub-net's model once, checks
its sha256 and hands *those bytes* to the backend: a file swapped after the check is never
served. ONNX Runtime builds its sessions from the bytes; a backend that only loads from a path
(TensorRT) gets a private copy of the verified bytes in a folder only this process can write.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Manifest, load_manifest, read_verified, verify_files
from ..bundle.signature import KeySource
from ..errors import EdgedynError


@dataclass
class LoadedRunners:
    """A bundle's sub-nets, loaded and activated, in manifest order."""

    runners: list[Any]
    shared: Any = None  # what the runners share (TensorRT: one activation buffer), else None
    exec_lock: threading.Lock | None = None  # serialises executions when the runners share something


def current_fingerprint(kind: str) -> str:
    """This machine's fingerprint for a ``kind`` device (cpu, cuda, jetson)."""
    from ..device import device_fingerprint, device_info

    return device_fingerprint(device_info(kind))


def open_manifest(bundle: str | os.PathLike, verify_key: KeySource | None = None) -> Manifest:
    """The bundle's manifest, read once; a symlinked bundle (deploy's atomic swap) is resolved
    first, so a deploy swapping a new version in meanwhile changes nothing this load reads."""
    path = Path(bundle)
    folder = path if path.is_dir() else path.parent
    if folder.is_symlink():
        real = folder.resolve()
        path = real if folder == path else real / path.name
    return load_manifest(path, verify_key)


def _model_labels(manifest: Manifest) -> list[str]:
    return [f"subnets[{s.index}].files.model" for s in manifest.subnets]


def verify_bundle(manifest: Manifest, backend: str | None = None, allow_other_device: bool = False) -> None:
    """Check the backend asked for, every file's sha256 but the models' (:func:`load_runners`
    checks those as it reads them) and the device fingerprint."""
    where = str(manifest.path)
    name = manifest.backend.get("name")
    if backend is not None and name != backend:
        raise EdgedynError(f"{where}: field 'backend.name' is {name!r}, but backend {backend!r} was asked for")
    verify_files(manifest, skip=set(_model_labels(manifest)))
    if allow_other_device:
        return
    kind = str(manifest.device.get("kind", "cpu"))
    try:
        here = current_fingerprint(kind)
    except EdgedynError as err:
        raise EdgedynError(f"{where}: field 'fingerprint' is {manifest.fingerprint!r}, but this machine "
                           f"has no {kind} device ({err})") from None
    if here != manifest.fingerprint:
        raise EdgedynError(f"{where}: field 'fingerprint' is {manifest.fingerprint!r}, this device is "
                           f"{here!r}; re-deploy here (or pass allow_other_device=True)")


def read_models(manifest: Manifest) -> list[bytes]:
    """Every sub-net's model bytes, each read once and checked against its sha256."""
    return [read_verified(manifest, label, s.files["model"]) for label, s in zip(_model_labels(manifest),
                                                                                 manifest.subnets)]


def load_runners(manifest: Manifest, threads: int | None = None, allow_other_device: bool = False,
                 memory_device: str = "cuda", models: list[bytes] | None = None) -> LoadedRunners:
    """Load every sub-net of a verified bundle once, with ``threads`` (else the manifest's) CPU threads.

    ``models``: the verified model bytes (default: :func:`read_models`). ``memory_device`` is
    where a backend that shares activation memory between its runners (TensorRT) puts it
    ("cuda"; tests use "cpu").
    """
    from ..backends import BackendOptions, backend_class, get_backend

    name = str(manifest.backend.get("name"))
    kind = str(manifest.device.get("kind", "cpu"))
    cls = backend_class(name)
    device = cls.serving_device or ("cpu" if kind == "cpu" else "cuda")
    options = BackendOptions(device=device, precision=manifest.precision,
                             threads=threads or manifest.threads, extra={"memory_device": memory_device})
    backend = get_backend(name, options)
    version = backend.version()
    if cls.artifacts_bound_to_version and version != manifest.backend.get("version") and not allow_other_device:
        raise EdgedynError(f"{manifest.path}: field 'backend.version' is {manifest.backend.get('version')!r}, "
                           f"{name} here is {version!r}; its artifacts only load on the version that built them")
    data = read_models(manifest) if models is None else models
    root = manifest.root
    if hasattr(backend, "load_bytes"):  # ONNX Runtime: sessions built from the verified bytes
        runners = [backend.load_bytes(b, manifest.input_shape, str(root / s.model_file)).activate()
                   for b, s in zip(data, manifest.subnets)]
        return LoadedRunners(runners, None, None)
    with tempfile.TemporaryDirectory(prefix="edgedyn-verified-") as private:  # mode 0700: only we write it
        paths = []
        for i, (b, s) in enumerate(zip(data, manifest.subnets)):
            p = Path(private) / f"{i}-{Path(s.model_file).name}"
            p.write_bytes(b)
            paths.append(p)
        runners, shared = backend.load_for_serving(paths, manifest.input_shape)
    return LoadedRunners(list(runners), shared, None if shared is None else threading.Lock())


__all__ = ["LoadedRunners", "current_fingerprint", "load_runners", "open_manifest", "read_models", "verify_bundle"]
