"""``imagefolder:DIR``: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``, loaded lazily.

Folders are walked as torchvision's ``ImageFolder`` walks them (symlinks followed, the same
order), except that a folder reached twice (a symlink loop) is walked once, and a name with
an image extension that is not a regular file (a FIFO, a device, a dangling or looping
link) is refused in one line when the folder is scanned, before anything is opened. Images
are opened under PIL's decompression-bomb limit (:func:`edgedyn.data.files.load_rgb_image`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .core import DataError, DataSplits, _as_int64, _carve, image_transform
from .files import is_image_file, load_rgb_image


def load_imagefolder(
    root: Path, input_size: int, seed: int, holdout_fraction: float, limit: int | None
) -> DataSplits:
    layout = f"put images in {root}/train/<class>/*.jpg|png and {root}/val/<class>/*.jpg|png"
    if not root.is_dir():
        raise DataError(f"imagefolder: directory {root} does not exist; {layout}")
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(f"imagefolder: missing folder {d}; {layout}")
    transform = image_transform(input_size)
    try:
        train = _SafeImageFolder(str(train_dir), transform=transform, target_transform=_as_int64, loader=load_image,
                                 is_valid_file=_is_image)
    except FileNotFoundError:
        raise DataError(f"imagefolder: no images in {train_dir}; {layout}") from None
    extra = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and d.name not in train.class_to_idx)
    if extra:
        raise DataError(f"imagefolder: {val_dir} has class folders not in {train_dir}: {', '.join(extra)}")
    try:
        test = _FixedClassImageFolder(
            str(val_dir), train.class_to_idx, transform=transform, target_transform=_as_int64, loader=load_image,
            is_valid_file=_is_image,
        )
    except FileNotFoundError:
        raise DataError(f"imagefolder: no images in {val_dir}; {layout}") from None
    if len(test) == 0:
        raise DataError(f"imagefolder: no images in {val_dir}; {layout}")
    targets = np.asarray(train.targets, dtype=np.int64)
    train_idx, hold_idx = _carve(targets, holdout_fraction, seed, limit, f"imagefolder {train_dir}")
    return DataSplits(
        train=Subset(train, train_idx.tolist()),
        holdout=Subset(train, hold_idx.tolist()),
        test=test,
        num_classes=len(train.classes),
        input_size=input_size,
        name=f"imagefolder:{root.resolve()}",
    )


def _is_image(path: str) -> bool:
    return is_image_file(path, IMG_EXTENSIONS)


def _walk_once(top: str) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` under ``top`` as ``os.walk(top, followlinks=True)`` gives them,
    each real folder once (a symlink back up is not walked again), unreadable folders skipped."""
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        files: list[str] = []
        subdirs: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks; False for a loop or a dangling link
            except OSError:
                is_dir = False
            (subdirs if is_dir else files).append(entry.name)
        yield folder, files
        stack.extend(os.path.join(folder, d) for d in reversed(subdirs))


class _SafeImageFolder(ImageFolder):
    """ImageFolder whose walk visits each real folder once (see the module docstring)."""

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int],
                     extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        valid = is_valid_file or _is_image
        instances: list[tuple[str, int]] = []
        found: set[str] = set()
        for cls in sorted(class_to_idx):
            target = os.path.join(os.path.expanduser(directory), cls)
            if not os.path.isdir(target):
                continue
            for folder, names in sorted(_walk_once(target)):
                for name in sorted(names):
                    path = os.path.join(folder, name)
                    if valid(path):
                        instances.append((path, class_to_idx[cls]))
                        found.add(cls)
        empty = sorted(set(class_to_idx) - found)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}.")
        return instances


class _FixedClassImageFolder(_SafeImageFolder):
    """ImageFolder that uses a given class -> index map (the train split's); classes may be absent."""

    def __init__(self, root: str, class_to_idx: dict[str, int], **kwargs: Any) -> None:
        self._fixed_class_to_idx = dict(class_to_idx)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(self._fixed_class_to_idx, key=self._fixed_class_to_idx.__getitem__)
        return classes, dict(self._fixed_class_to_idx)


def load_image(path: str) -> Any:
    """An image file as RGB; anything else raises one line naming it (not a traceback, not a hang)."""
    return load_rgb_image(path)
