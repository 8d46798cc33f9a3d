"""``fashion-mnist[:DIR]`` and ``idx:DIR``: MNIST-format (idx) files, raw or gzipped.

A folder holds four files (each may end in ``.gz``)::

    train-images-idx3-ubyte   train-labels-idx1-ubyte
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte

Images are grey ``H x W`` uint8. They are fitted to the model's input by zero-padding
to the next size at or above ``input_size`` with the image centred (28 -> 32: two
pixels each side, as LeNet and the CIFAR-style ResNets expect), then resized when
that size is not ``input_size``, and the grey channel is replicated to the 3 channels
every edgedyn model takes (replicating costs the first conv about 2 % of resnet20's
MACs and keeps one stem for every data source). Pixels stay uint8 in memory (60,000
images x 3 x 32 x 32 = 184 MB) and are scaled and normalised a whole batch at a time.

Files are parsed with numpy alone (the idx format is a 4-byte magic, big-endian
dimensions and raw bytes): a bad magic, a truncated file, counts that disagree or a
label outside the class range raise one line naming the file. Only regular files are
read, the header is checked against the file's real size before the data is read, and a
gzip stream is decompressed in bounded chunks (:mod:`edgedyn.data.files`).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import IO, cast

import numpy as np
import torch

from .core import DataError, DataSplits, InMemoryDataset, _carve, _channel_stats_uint8, _describe
from .files import open_regular, read_exact

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install dataset-fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MAGIC_IMAGES = 0x00000803  # unsigned byte, 3 dimensions
_MAGIC_LABELS = 0x00000801  # unsigned byte, 1 dimension
NUM_CLASSES = 10
GZIP_MAX_RATIO = 1032  # deflate expands at most ~1032:1; a header declaring more is corrupt


def find_idx_files(root: Path, hint: str) -> dict[str, Path]:
    """The four idx files in ``root`` (raw preferred over ``.gz``); one-line error naming a missing one.
    A name that exists but is no regular file (a FIFO, say) is found here and refused when read."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; {hint}")
    found = {}
    for key, name in IDX_FILES.items():
        for cand in (root / name, root / f"{name}.gz"):
            if os.path.lexists(cand):
                found[key] = cand
                break
        else:
            raise DataError(f"{root / name}[.gz]: file not found; {hint}")
    return found


def _product(dims: tuple[int, ...]) -> int:
    return math.prod(dims)  # Python ints: no overflow, whatever the header says


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One idx file as a uint8 array of the dimensions its header declares.

    Only a regular file is opened; the header is read first, and the data is read only when
    its declared size (exact integer arithmetic) matches the file: the raw file's real size,
    or for ``.gz`` at most :data:`GZIP_MAX_RATIO` times the compressed size, read in bounded
    chunks and refused as soon as it runs past the declared size (a gzip bomb stops there).
    """
    kind = "images" if magic == _MAGIC_IMAGES else "labels"
    gz = path.suffix == ".gz"
    with open_regular(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        try:
            fh = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if gz else raw
            with fh:
                return _read_idx_stream(fh, path, magic, kind, size, gz)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: cannot read ({_describe(exc)})") from None


def _read_idx_stream(fh: IO[bytes], path: Path, magic: int, kind: str, size: int, gz: bool) -> np.ndarray:
    ndim = magic & 0xFF
    head_len = 4 + 4 * ndim
    head = fh.read(head_len)
    if len(head) < 4 or int.from_bytes(head[:4], "big") != magic:
        found = f"0x{int.from_bytes(head[:4], 'big'):08x}" if len(head) >= 4 else f"{len(head)} bytes"
        if len(head) < 4:
            raise DataError(f"{path}: truncated header ({found})")
        raise DataError(f"{path}: bad magic {found}, expected 0x{magic:08x} (idx {kind}, unsigned byte)")
    if len(head) < head_len:
        raise DataError(f"{path}: truncated header ({len(head)} bytes)")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if kind == "images" and 0 in dims[1:]:
        raise DataError(f"{path}: header declares zero-sized images ({'x'.join(map(str, dims))})")
    want = _product(dims)
    shape = "x".join(map(str, dims))
    room = GZIP_MAX_RATIO * size if gz else size - head_len
    if want > room or (not gz and want != room):
        holds = f"at most {room} once decompressed" if gz else str(room)
        raise DataError(f"{path}: header declares {shape} = {want} bytes of data, the file holds {holds} "
                        "(truncated or corrupt)")
    data = read_exact(fh, want, path, f"the header ({shape})")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, H, W], int64 [N]) from one images file and its labels file, cross-checked."""
    images = read_idx(images_path, _MAGIC_IMAGES)
    labels = read_idx(labels_path, _MAGIC_LABELS).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    if labels.max() >= NUM_CLASSES:
        bad = int(np.flatnonzero(labels >= NUM_CLASSES)[0])
        raise DataError(f"{labels_path}: label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}")
    return images, labels


def to_model_input(grey: np.ndarray, input_size: int) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, 3, S, S]: centred zero padding to a square of 8/7 the
    image side (28 -> 32); any other ``input_size`` is reached by resizing per batch on access."""
    n, h, w = grey.shape
    side = round(max(h, w) * 8 / 7)  # 28 -> 32
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((n, 3, side, side), np.uint8)
    out[:, :, top:top + h, left:left + w] = grey[:, None]
    return out


def load_idx(root: Path, input_size: int, seed: int, holdout_fraction: float, limit: int | None, *,
             name: str, hint: str) -> DataSplits:
    files = find_idx_files(root, hint)
    train_x, train_y = read_split(files["train_images"], files["train_labels"])
    test_x, test_y = read_split(files["test_images"], files["test_labels"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{files['test_images']}: images are {test_x.shape[1:]}, the training images "
                        f"{train_x.shape[1:]}")
    train_x, test_x = to_model_input(train_x, input_size), to_model_input(test_x, input_size)
    train_idx, hold_idx = _carve(train_y, holdout_fraction, seed, limit, f"{name} {root}")
    # normalisation from the training part only (the holdout and the test split stay unseen)
    mean, std = _channel_stats_uint8(train_x[train_idx])
    full = InMemoryDataset(torch.from_numpy(train_x), torch.from_numpy(train_y), size=input_size, mean=mean, std=std)
    test = InMemoryDataset(torch.from_numpy(test_x), torch.from_numpy(test_y), size=input_size, mean=mean, std=std)
    return DataSplits(train=full.subset(train_idx), holdout=full.subset(hold_idx), test=test,
                      num_classes=NUM_CLASSES, input_size=input_size, name=f"{name}:{root.resolve()}",
                      mean=mean, std=std)


def load_fashion_mnist(root: Path | None, input_size: int, seed: int, holdout_fraction: float,
                       limit: int | None) -> DataSplits:
    root = root or FASHION_MNIST_DIR
    hint = (f"install Fashion-MNIST with '{FASHION_MNIST_APT}' (files in {FASHION_MNIST_DIR}/) "
            "or pass fashion-mnist:DIR")
    return load_idx(root, input_size, seed, holdout_fraction, limit, name="fashion-mnist", hint=hint)


def load_idx_folder(root: Path, input_size: int, seed: int, holdout_fraction: float,
                    limit: int | None) -> DataSplits:
    hint = f"idx:DIR needs {', '.join(IDX_FILES.values())} (each may end in .gz)"
    return load_idx(root, input_size, seed, holdout_fraction, limit, name="idx", hint=hint)
