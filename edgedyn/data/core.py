"""The pieces every data source shares: splits, the in-memory dataset, loaders and checks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import transforms

from ..errors import EdgedynError


class DataError(EdgedynError):
    """A dataset or calibration input that is missing, malformed or asked for wrongly."""


Stats = tuple[float, float, float]

DATASET_SPECS = ("digits", "synthetic", "cifar10:DIR", "imagefolder:DIR")
MIN_INPUT_SIZE = 8
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class DataSplits:
    """Train / holdout / test splits of one dataset, plus what a deployment must know.

    ``mean``/``std`` are the per-channel normalisation applied to every image (in the
    0..1 pixel scale); deployment preprocessing must use the same values.
    """

    train: Dataset
    holdout: Dataset
    test: Dataset
    num_classes: int
    input_size: int
    name: str
    mean: Stats = IMAGENET_MEAN
    std: Stats = IMAGENET_STD


class InMemoryDataset(Dataset):
    """Images and int64 labels held as tensors; indexing accepts an int or a batch of indices.

    ``images`` is either float32 ``[N, 3, S, S]`` already final, or uint8 ``[N, 3, h, w]``
    (0..255) that is scaled, resized to ``size`` and normalised with ``mean``/``std`` on
    access, which keeps large sets such as CIFAR-10 at a quarter of the memory.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        size: int | None = None,
        mean: Stats | None = None,
        std: Stats | None = None,
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"images must be [N, 3, H, W] with N labels, got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        if images.dtype == torch.uint8:
            if size is None or mean is None or std is None:
                raise DataError("uint8 images need size, mean and std to be normalised on access")
        elif images.dtype != torch.float32:
            raise DataError(f"images must be float32 or uint8, got {images.dtype}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.size = int(size) if size is not None else int(images.shape[-1])
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, (int, np.integer)):
            return self._finish(self.images[int(index)].unsqueeze(0))[0], self.labels[int(index)]
        idx = torch.as_tensor(index, dtype=torch.int64)
        return self._finish(self.images[idx]), self.labels[idx]

    def subset(self, indices: np.ndarray | Sequence[int]) -> InMemoryDataset:
        """A new dataset holding the given samples (copied), with the same preprocessing."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        images, labels = self.images[idx].clone(), self.labels[idx].clone()
        return InMemoryDataset(images, labels, size=self.size, mean=self.mean, std=self.std)

    def _finish(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8 or self.mean is None or self.std is None:
            return batch
        x = batch.to(torch.float32).div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)


def make_loader(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A single-process DataLoader whose order depends only on ``seed``.

    Batches are ``(images [B, 3, S, S] float32, labels [B] int64)``. Re-iterating a
    shuffling loader gives a new (still seed-determined) order each epoch. An
    :class:`InMemoryDataset` is sliced a whole batch at a time instead of per sample.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if isinstance(ds, InMemoryDataset):
        base = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
        return DataLoader(ds, batch_size=None, sampler=BatchSampler(base, batch_size, drop_last), num_workers=0)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last, num_workers=0
    )


def image_transform(input_size: int) -> Callable[[Any], torch.Tensor]:
    """PIL image -> float32 ``[3, S, S]``: RGB, short side resized to S, center crop, ImageNet norm."""
    _check_input_size(input_size)
    return transforms.Compose(
        [
            transforms.Lambda(_to_rgb),
            transforms.Resize(input_size, antialias=True),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _as_int64(label: int) -> torch.Tensor:
    return torch.tensor(label, dtype=torch.int64)


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB")


# --------------------------------------------------------------------------- helpers


def _check_input_size(input_size: int) -> None:
    if not isinstance(input_size, (int, np.integer)) or isinstance(input_size, bool) or input_size < MIN_INPUT_SIZE:
        raise DataError(f"input_size must be an integer >= {MIN_INPUT_SIZE}, got {input_size!r}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")


def _spread(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` items, spread evenly (all of them without a limit)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, taken) with ``fraction`` of each class taken (at least one overall)."""
    taken: list[np.ndarray] = []
    classes = np.unique(labels)
    counts = {int(c): int((labels == c).sum()) for c in classes}
    quota = {c: int(round(fraction * k)) for c, k in counts.items()}
    if sum(quota.values()) == 0 and len(labels) > 1:
        quota[max(counts, key=counts.__getitem__)] = 1
    for c in classes:
        idx = np.flatnonzero(labels == c)
        taken.append(rng.permutation(idx)[: quota[int(c)]])
    take = np.sort(np.concatenate(taken)) if taken else np.empty(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), take)
    return rest.astype(np.int64), take.astype(np.int64)


def _holdout_cap(limit: int, holdout_fraction: float) -> int:
    return max(1, math.ceil(limit * holdout_fraction / (1.0 - holdout_fraction)))


def _carve(
    labels: np.ndarray, holdout_fraction: float, seed: int, limit: int | None, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) index arrays into ``labels``: a stratified holdout, then ``limit``."""
    rng = np.random.default_rng([int(seed), 2])
    train, hold = _stratified_split(labels, holdout_fraction, rng)
    if limit is not None:
        train = np.sort(rng.permutation(train)[:limit])
        hold = np.sort(rng.permutation(hold)[: _holdout_cap(limit, holdout_fraction)])
    if len(train) == 0 or len(hold) == 0:
        raise DataError(f"{what}: {len(labels)} training samples are too few for holdout_fraction={holdout_fraction}")
    return train, hold


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 120 characters, for one-line errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120] if lines else ''}".rstrip(": ")


def _channel_stats(images: torch.Tensor) -> tuple[Stats, Stats]:
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return _triple(mean), _triple(std)


def _channel_stats_uint8(images: np.ndarray) -> tuple[Stats, Stats]:
    """Per-channel mean/std of uint8 [N, 3, H, W] in the 0..1 scale, exact, from value histograms."""
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = np.empty(3)
    std = np.empty(3)
    for ch in range(3):
        counts = np.bincount(images[:, ch].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean[ch] = (counts * values).sum() / total
        std[ch] = max(math.sqrt((counts * (values - mean[ch]) ** 2).sum() / total), 1e-6)
    return _triple(torch.from_numpy(mean)), _triple(torch.from_numpy(std))


def _triple(t: torch.Tensor) -> Stats:
    a, b, c = (float(v) for v in t.tolist())
    return (a, b, c)

