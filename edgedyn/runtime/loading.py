"""Loading a bundle for serving: verify it, then load every sub-net once.

:func:`verify_bundle` refuses (one-line :class:`~edgedyn.errors.EdgedynError` naming the file or
field) a modified or missing file, a bundle made for another device fingerprint (unless
``allow_other_device``), or for another backend than the one asked for.
:func:`load_runners` loads the sub-nets through the backend's
:meth:`~edgedyn.backends.base.Backend.load_for_serving`, which says what the runners share.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..bundle import Manifest, verify_files
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


def verify_bundle(manifest: Manifest, backend: str | None = None, allow_other_device: bool = False) -> None:
    """Check the backend asked for, every file's sha256 and the device fingerprint."""
    where = str(manifest.path)
    name = manifest.backend.get("name")
    if backend is not None and name != backend:
        raise EdgedynError(f"{where}: field 'backend.name' is {name!r}, but backend {backend!r} was asked for")
    verify_files(manifest)
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


def load_runners(manifest: Manifest, threads: int | None = None, allow_other_device: bool = False,
                 memory_device: str = "cuda") -> LoadedRunners:
    """Load every sub-net of a verified bundle once, with ``threads`` (else the manifest's) CPU threads.

    ``memory_device`` is where a backend that shares activation memory between its runners
    (TensorRT) puts it ("cuda"; tests use "cpu").
    """
    from ..backends import BackendOptions, get_backend

    name = str(manifest.backend.get("name"))
    options = BackendOptions(device="cpu" if name == "onnxruntime" else "cuda", precision=manifest.precision,
                             threads=threads or manifest.threads, extra={"memory_device": memory_device})
    backend = get_backend(name, options)
    version = backend.version()
    if name == "tensorrt" and version != manifest.backend.get("version") and not allow_other_device:
        raise EdgedynError(f"{manifest.path}: field 'backend.version' is {manifest.backend.get('version')!r}, "
                           f"TensorRT here is {version!r}; engines only load on the version that built them")
    root = manifest.root
    runners, shared = backend.load_for_serving([root / s.model_file for s in manifest.subnets],
                                               manifest.input_shape)
    return LoadedRunners(list(runners), shared, None if shared is None else threading.Lock())
