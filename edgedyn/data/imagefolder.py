"""``imagefolder:DIR``: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``, loaded lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from .core import DataError, DataSplits, _as_int64, _carve, _describe, image_transform


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
        train = ImageFolder(str(train_dir), transform=transform, target_transform=_as_int64, loader=load_image)
    except FileNotFoundError:
        raise DataError(f"imagefolder: no images in {train_dir}; {layout}") from None
    extra = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and d.name not in train.class_to_idx)
    if extra:
        raise DataError(f"imagefolder: {val_dir} has class folders not in {train_dir}: {', '.join(extra)}")
    try:
        test = _FixedClassImageFolder(
            str(val_dir), train.class_to_idx, transform=transform, target_transform=_as_int64, loader=load_image
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


class _FixedClassImageFolder(ImageFolder):
    """ImageFolder that uses a given class -> index map (the train split's); classes may be absent."""

    def __init__(self, root: str, class_to_idx: dict[str, int], **kwargs: Any) -> None:
        self._fixed_class_to_idx = dict(class_to_idx)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(self._fixed_class_to_idx, key=self._fixed_class_to_idx.__getitem__)
        return classes, dict(self._fixed_class_to_idx)



def load_image(path: str) -> Any:
    """An image file as RGB; a file PIL cannot decode raises one line naming it (not a traceback)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode the image ({_describe(exc)}); remove or replace it") from None
