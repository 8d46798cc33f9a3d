"""``cifar10:DIR``: the CIFAR-10 python batches, read with a restricted unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .core import DataError, DataSplits, InMemoryDataset, _carve, _channel_stats_uint8, _describe
from .files import open_regular

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_DIRNAME = "cifar-10-batches-py"

# What a CIFAR-10 python batch pickles: a dict of bytes, lists and one numpy uint8 array.
# Anything else (a callable such as os.system, any other class) is refused before it is built.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only the types the CIFAR-10 format uses (pickle.load would run any code)."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} (not part of the CIFAR-10 format)")


def load_cifar10(root: Path, input_size: int, seed: int, holdout_fraction: float, limit: int | None) -> DataSplits:
    what = (
        f"put the CIFAR-10 python batches ({', '.join(CIFAR10_TRAIN_FILES)}, {CIFAR10_TEST_FILE}"
        f" from cifar-10-python.tar.gz) in it"
    )
    if not root.is_dir():
        raise DataError(f"cifar10: directory {root} does not exist; {what}")
    folder = root
    if not (root / CIFAR10_TRAIN_FILES[0]).exists() and (root / CIFAR10_DIRNAME).is_dir():
        folder = root / CIFAR10_DIRNAME
    for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
        if not os.path.lexists(folder / name):  # a FIFO or a device is found, and refused when read
            raise DataError(f"cifar10: missing batch file {folder / name}; {what}")
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(folder / CIFAR10_TEST_FILE)
    mean, std = _channel_stats_uint8(train_x)
    full = InMemoryDataset(torch.from_numpy(train_x), torch.from_numpy(train_y), size=input_size, mean=mean, std=std)
    test = InMemoryDataset(torch.from_numpy(test_x), torch.from_numpy(test_y), size=input_size, mean=mean, std=std)
    train_idx, hold_idx = _carve(train_y, holdout_fraction, seed, limit, f"cifar10 {folder}")
    return DataSplits(
        train=full.subset(train_idx),
        holdout=full.subset(hold_idx),
        test=test,
        num_classes=10,
        input_size=input_size,
        name=f"cifar10:{folder.resolve()}",
        mean=mean,
        std=std,
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 pickle batch as uint8 [N, 3, 32, 32] and int64 [N]."""
    try:
        with open_regular(path) as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(
            f"cifar10: cannot read batch file {path} ({_describe(exc)}); "
            "replace it with the original from cifar-10-python.tar.gz"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(
            f"cifar10: batch file {path} holds a {type(batch).__name__}, "
            "expected the CIFAR-10 dict with b'data' and b'labels'"
        )
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"cifar10: batch file {path} has no b'data' / b'labels' entries; is it a CIFAR-10 batch?")
    y = _labels(labels, path)
    try:
        data = np.asarray(data)
    except Exception as exc:  # an object that numpy cannot make an array of
        raise DataError(f"cifar10: batch file {path} has b'data' that is no array ({_describe(exc)})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(y) != len(data):
        raise DataError(
            f"cifar10: batch file {path} has data {data.dtype} {data.shape} and {len(y)} labels, "
            "expected uint8 [N, 3072] and N labels"
        )
    return data.reshape(-1, 3, 32, 32), y


def _labels(labels: object, path: Path) -> np.ndarray:
    """b'labels' as int64 [N]: a list of ints in 0..9 (numpy ints accepted, bools and floats not)."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        values: list = labels.tolist()
    elif isinstance(labels, (list, tuple)):
        values = list(labels)
    else:
        raise DataError(f"cifar10: batch file {path} has b'labels' of type {type(labels).__name__}, "
                        "expected a list of ints in 0..9")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"cifar10: batch file {path} has b'labels'[{i}] = {_short(v)} "
                            f"({type(v).__name__}), expected an int in 0..9")
        if not 0 <= v <= 9:
            raise DataError(f"cifar10: batch file {path} has labels outside 0..9 (b'labels'[{i}] = {_short(v)})")
    return np.asarray(values, dtype=np.int64).reshape(len(values))


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
