"""INT8 calibration inputs: a ``.npy`` of preprocessed tensors or a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import IMAGE_EXTENSIONS, DataError, _check_input_size, _check_limit, _describe, _spread, image_transform
from .files import load_rgb_image


def load_calibration(path: str | Path, input_size: int, *, limit: int | None = None) -> np.ndarray:
    """INT8 calibration inputs as float32 ``[N, 3, S, S]``, preprocessed like the model's input.

    ``path`` is a ``.npy`` of already preprocessed float32 NCHW tensors, or a folder searched
    recursively for jpg/png/bmp images that get :func:`image_transform` (as ``imagefolder``).
    ``limit`` keeps at most that many samples, spread evenly over the array / sorted files.
    """
    _check_input_size(input_size)
    _check_limit(limit)
    p = Path(path).expanduser()
    expect = f"a folder of jpg/png/bmp images or a .npy of float32 [N, 3, {input_size}, {input_size}] tensors"
    if not p.exists():
        raise DataError(f"calibration data {p} does not exist; pass {expect}")
    if p.is_dir():
        return _calibration_from_images(p, input_size, limit)
    if p.suffix.lower() != ".npy":
        raise DataError(f"calibration data {p} is neither a folder nor a .npy file; pass {expect}")
    return _calibration_from_npy(p, input_size, limit)


def _calibration_from_npy(path: Path, input_size: int, limit: int | None) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # malformed header, pickled object arrays, truncated file
        raise DataError(f"calibration file {path} is not a readable .npy array ({_describe(exc)})") from None
    want = f"float32 [N, 3, {input_size}, {input_size}]"
    if arr.ndim != 4:
        raise DataError(f"calibration file {path} has ndim {arr.ndim} (shape {arr.shape}), expected 4: {want}")
    if arr.shape[1] != 3:
        raise DataError(
            f"calibration file {path} has C={arr.shape[1]} at dim 1 (shape {arr.shape}), expected 3: {want}"
        )
    if arr.shape[2] != input_size or arr.shape[3] != input_size:
        raise DataError(
            f"calibration file {path} has H x W = {arr.shape[2]} x {arr.shape[3]} at dims 2, 3, "
            f"expected {input_size} x {input_size} (input_size): {want}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"calibration file {path} has dtype {arr.dtype}, expected preprocessed {want}")
    if arr.shape[0] == 0:
        raise DataError(f"calibration file {path} holds no samples; expected {want}")
    return np.ascontiguousarray(arr[_spread(arr.shape[0], limit)], dtype=np.float32)


def _calibration_from_images(folder: Path, input_size: int, limit: int | None) -> np.ndarray:
    files = sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
    )
    if not files:
        kinds = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
        raise DataError(
            f"calibration folder {folder} has no images; put a few hundred {kinds} files in it "
            "(subfolders are searched)"
        )
    transform = image_transform(input_size)
    out = []
    for i in _spread(len(files), limit):  # regular files only (is_file), opened under PIL's pixel limit
        try:
            img = load_rgb_image(files[i])
        except DataError as exc:
            raise DataError(f"calibration image {exc}") from None
        out.append(transform(img).numpy())
    return np.stack(out).astype(np.float32, copy=False)

