"""Datasets the progressive search trains and evaluates on, and INT8 calibration data.

:func:`load_data` turns a dataset spec into :class:`DataSplits` with three disjoint splits:

- ``train``   trains the dynamic network,
- ``holdout`` a held-out part of the *training* data that scores search candidates,
- ``test``    never used for any decision, only for the final report.

Every sample is ``(image, label)``: a float32 tensor ``[3, input_size, input_size]``
normalised with per-channel mean/std, and a 0-dim int64 tensor. Specs:

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, shipped inside
    scikit-learn). A seeded stratified 20 % test split, the holdout carved from the rest;
    bilinear resize to ``input_size``, grey replicated to 3 channels. Kept in memory.
``synthetic``
    a generated, seedable 10-class texture-in-clutter task (see :func:`make_synthetic`),
    harder than digits so that network width matters. 5000 training-pool / 1000 test
    images by default. Kept in memory.
``cifar10:DIR``
    the CIFAR-10 python batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``)
    in ``DIR`` or ``DIR/cifar-10-batches-py``. Kept in memory as uint8 and
    resized/normalised per batch on access. Never downloaded.
``imagefolder:DIR``
    ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (val is the test split), loaded
    lazily, resized (short side) and center-cropped to ``input_size``, ImageNet
    normalisation.

``limit`` caps the training split (and shrinks the holdout in proportion) for quick runs;
the test split is never affected by ``limit`` or ``holdout_fraction``.

Failures raise :class:`DataError` with a one-line message naming the path and what to put
where. Nothing is ever downloaded.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from .errors import EdgedynError

__all__ = [
    "CIFAR10_TEST_FILE",
    "CIFAR10_TRAIN_FILES",
    "DATASET_SPECS",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_INPUT_SIZE",
    "DataError",
    "DataSplits",
    "InMemoryDataset",
    "image_transform",
    "load_calibration",
    "load_data",
    "make_loader",
    "make_synthetic",
]


class DataError(EdgedynError):
    """A dataset or calibration input that is missing, malformed or asked for wrongly."""


Stats = tuple[float, float, float]

DATASET_SPECS = ("digits", "synthetic", "cifar10:DIR", "imagefolder:DIR")
MIN_INPUT_SIZE = 8
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_DIRNAME = "cifar-10-batches-py"
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_TRAIN_SIZE = 5000
SYNTHETIC_TEST_SIZE = 1000


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


# --------------------------------------------------------------------------- public API


def load_data(
    spec: str,
    input_size: int,
    *,
    seed: int = 0,
    holdout_fraction: float = 0.1,
    limit: int | None = None,
) -> DataSplits:
    """Load the dataset named by ``spec`` (see the module docstring) as train/holdout/test.

    ``seed`` fixes every random choice (test split of digits, holdout, synthetic images);
    ``holdout_fraction`` of the training data becomes the holdout; ``limit`` caps the
    training split. Raises :class:`DataError` on any bad input.
    """
    _check_input_size(input_size)
    fraction_ok = isinstance(holdout_fraction, (int, float)) and not isinstance(holdout_fraction, bool)
    if not fraction_ok or not 0 < holdout_fraction < 1:
        raise DataError(f"holdout_fraction must be a number strictly between 0 and 1, got {holdout_fraction!r}")
    _check_limit(limit)
    _check_seed(seed)
    kind, sep, arg = str(spec).partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    valid = ", ".join(DATASET_SPECS)
    if kind in ("digits", "synthetic"):
        if sep:
            raise DataError(f"dataset spec {spec!r}: {kind} takes no directory; valid specs: {valid}")
        if kind == "digits":
            return _load_digits(input_size, seed, holdout_fraction, limit)
        return _load_synthetic(input_size, seed, holdout_fraction, limit)
    if kind in ("cifar10", "imagefolder"):
        if not arg:
            raise DataError(f"dataset spec {spec!r}: {kind} needs a directory, write {kind}:DIR")
        root = Path(arg).expanduser()
        if kind == "cifar10":
            return _load_cifar10(root, input_size, seed, holdout_fraction, limit)
        return _load_imagefolder(root, input_size, seed, holdout_fraction, limit)
    raise DataError(f"unknown dataset spec {spec!r}; valid specs: {valid}")


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


def make_synthetic(n: int, input_size: int, *, seed: int = 0, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` images of the synthetic task: float32 ``[n, 3, S, S]`` (not normalised), int64 labels.

    Each image is a "textured object in clutter":

    - Primitives are oriented sinusoidal gratings: 6 orientations (30 degrees apart) x 2
      spatial frequencies (3 and 6.5 cycles per image width) = 12 primitives.
    - The class (10, balanced) is a *pair* of primitives superposed inside one Gaussian
      envelope (a plaid). Pairs overlap between classes (e.g. class 0 = {0, 2}, class 1 =
      {0, 4}), so no single orientation or frequency identifies a class.
    - Nuisances per sample: object position (+-25 % of the width), envelope size, each
      grating's phase, +-7 degree orientation jitter, +-15 % frequency jitter, component
      amplitudes, a random signed colour per object (colour carries no class information),
      a smooth coloured background wave, a random colour offset, and i.i.d. pixel noise.
    - Two distractors: single gratings of random primitives in their own envelopes at random
      positions. Global orientation statistics therefore cannot tell the class; a model has
      to find which two gratings share one location, which needs width. In a check with a
      5-conv CNN of base width 4 / 16 / 32, 10 epochs on the default 4500 training images,
      test accuracy was 43 % / 60 % / 71 %; a linear model on the pixels stays at chance.

    Content is defined in image-relative units, so other ``input_size`` values render the
    same task at another resolution. Images come in chunks seeded by ``(seed, stream,
    chunk)``, so a smaller ``n`` yields a prefix of a larger one.
    """
    if n < 0:
        raise DataError(f"synthetic: sample count must be >= 0, got {n}")
    _check_input_size(input_size)
    _check_seed(seed)
    _check_seed(stream)
    n_chunks = math.ceil(n / _SYN_CHUNK)
    images = np.empty((n_chunks * _SYN_CHUNK, 3, input_size, input_size), np.float32)
    labels = np.empty(n_chunks * _SYN_CHUNK, np.int64)
    for c in range(n_chunks):
        rng = np.random.default_rng([int(seed), int(stream), c])
        sl = slice(c * _SYN_CHUNK, (c + 1) * _SYN_CHUNK)
        images[sl], labels[sl] = _synthetic_chunk(rng, _SYN_CHUNK, input_size)
    return images[:n], labels[:n]


# --------------------------------------------------------------------------- synthetic task

_SYN_CHUNK = 250
_SYN_ORIENTATIONS = np.arange(6) * (np.pi / 6)
_SYN_FREQS = np.array([3.0, 6.5])  # cycles per image width
# class -> (primitive a, primitive b); primitive p = orientation p % 6, frequency p // 6
_SYN_CLASSES = np.array([(0, 2), (0, 4), (1, 3), (1, 5), (2, 7), (3, 8), (6, 9), (6, 10), (7, 11), (4, 9)])
_SYN_NUM_CLASSES = len(_SYN_CLASSES)
_SYN_DISTRACTORS = 2
_SYN_NOISE = 0.3
_SYN_JITTER = np.deg2rad(7.0)


def _synthetic_chunk(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = ((np.arange(size) - (size - 1) / 2) / size).astype(np.float32)  # image-relative, [-0.5, 0.5]
    labels = rng.permutation(np.arange(n) % _SYN_NUM_CLASSES).astype(np.int64)
    img = np.zeros((n, 3, size, size), np.float32)

    # smooth coloured background wave and a global colour offset
    wave = _grating(rng, coords, rng.uniform(0.0, np.pi, n), rng.uniform(0.5, 2.0, n))
    img += _colour(rng, n, 0.4, signed_normal=True) * wave[:, None]
    img += _colour(rng, n, 0.3, signed_normal=True)

    # the object: a plaid of the class's two primitives inside one envelope
    env = _envelope(coords, rng.uniform(-0.25, 0.25, n), rng.uniform(-0.25, 0.25, n), rng.uniform(0.10, 0.18, n))
    texture = np.zeros((n, size, size), np.float32)
    for prim in (_SYN_CLASSES[labels, 0], _SYN_CLASSES[labels, 1]):
        texture += rng.uniform(0.6, 1.0, n).astype(np.float32)[:, None, None] * _primitive(rng, coords, prim)
    img += _colour(rng, n, 1.0) * (env * texture)[:, None]

    # distractors: single random primitives elsewhere
    for _ in range(_SYN_DISTRACTORS):
        prim = rng.integers(0, 2 * len(_SYN_ORIENTATIONS), n)
        denv = _envelope(coords, rng.uniform(-0.45, 0.45, n), rng.uniform(-0.45, 0.45, n), rng.uniform(0.08, 0.16, n))
        img += _colour(rng, n, 1.3) * (denv * _primitive(rng, coords, prim))[:, None]

    img += _SYN_NOISE * rng.standard_normal(img.shape, dtype=np.float32)
    return img, labels


def _primitive(rng: np.random.Generator, coords: np.ndarray, prim: np.ndarray) -> np.ndarray:
    n = len(prim)
    theta = _SYN_ORIENTATIONS[prim % len(_SYN_ORIENTATIONS)] + rng.normal(0.0, _SYN_JITTER, n)
    freq = _SYN_FREQS[prim // len(_SYN_ORIENTATIONS)] * rng.uniform(0.85, 1.15, n)
    return _grating(rng, coords, theta, freq)


def _grating(rng: np.random.Generator, coords: np.ndarray, theta: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """cos(2 pi f (x cos t + y sin t) + phase) as [n, S, S], built from 1-D factors."""
    phase = rng.uniform(0.0, 2 * np.pi, len(theta))
    ax = 2 * np.pi * (freq * np.cos(theta))[:, None] * coords[None] + phase[:, None]  # [n, S] over x
    ay = 2 * np.pi * (freq * np.sin(theta))[:, None] * coords[None]  # [n, S] over y
    cx, sx = np.cos(ax).astype(np.float32), np.sin(ax).astype(np.float32)
    cy, sy = np.cos(ay).astype(np.float32), np.sin(ay).astype(np.float32)
    return cy[:, :, None] * cx[:, None, :] - sy[:, :, None] * sx[:, None, :]


def _envelope(coords: np.ndarray, cx: np.ndarray, cy: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blob as [n, S, S]."""
    gx = np.exp(-((coords[None] - cx[:, None]) ** 2) / (2 * sigma[:, None] ** 2)).astype(np.float32)
    gy = np.exp(-((coords[None] - cy[:, None]) ** 2) / (2 * sigma[:, None] ** 2)).astype(np.float32)
    return gy[:, :, None] * gx[:, None, :]


def _colour(rng: np.random.Generator, n: int, scale: float, *, signed_normal: bool = False) -> np.ndarray:
    """Per-sample RGB factor as [n, 3, 1, 1]: normal, or random sign x uniform(0.3, 1)."""
    if signed_normal:
        c = rng.normal(0.0, scale, (n, 3))
    else:
        c = scale * rng.uniform(0.3, 1.0, (n, 3)) * rng.choice([-1.0, 1.0], (n, 3))
    return c.astype(np.float32)[:, :, None, None]


# --------------------------------------------------------------------------- loaders


def _load_digits(input_size: int, seed: int, holdout_fraction: float, limit: int | None) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    labels = np.asarray(bunch.target, dtype=np.int64)
    if input_size != grey.shape[-1]:
        grey = F.interpolate(grey, size=(input_size, input_size), mode="bilinear", align_corners=False)
    images = grey.expand(-1, 3, -1, -1).contiguous()
    pool, test_idx = _stratified_split(labels, DIGITS_TEST_FRACTION, np.random.default_rng([int(seed), 1]))
    mean, std = _channel_stats(images[torch.as_tensor(pool)])
    images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    full = InMemoryDataset(images, torch.from_numpy(labels))
    train_idx, hold_idx = _carve(labels[pool], holdout_fraction, seed, limit, "digits")
    return DataSplits(
        train=full.subset(pool[train_idx]),
        holdout=full.subset(pool[hold_idx]),
        test=full.subset(test_idx),
        num_classes=10,
        input_size=input_size,
        name="digits",
        mean=mean,
        std=std,
    )


def _load_synthetic(input_size: int, seed: int, holdout_fraction: float, limit: int | None) -> DataSplits:
    n_pool = SYNTHETIC_TRAIN_SIZE
    if limit is not None:
        # just enough images that the stratified holdout (per-class rounding loses at most
        # half a sample per class) and the training part both reach their capped sizes
        slack = _SYN_NUM_CLASSES // 2 + 1
        cap = _holdout_cap(limit, holdout_fraction)
        need = max((cap + slack) / holdout_fraction, (limit + slack) / (1.0 - holdout_fraction))
        n_pool = min(n_pool, math.ceil(need))
    pool_x, pool_y = make_synthetic(n_pool, input_size, seed=seed, stream=0)
    test_x, test_y = make_synthetic(SYNTHETIC_TEST_SIZE, input_size, seed=seed, stream=1)
    # statistics from the first chunk of the training stream: fixed per seed, whatever limit is
    ref = pool_x if n_pool >= _SYN_CHUNK else make_synthetic(_SYN_CHUNK, input_size, seed=seed, stream=0)[0]
    mean, std = _channel_stats(torch.from_numpy(ref[:_SYN_CHUNK]))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pool = InMemoryDataset((torch.from_numpy(pool_x) - m) / s, torch.from_numpy(pool_y))
    test = InMemoryDataset((torch.from_numpy(test_x) - m) / s, torch.from_numpy(test_y))
    train_idx, hold_idx = _carve(pool_y, holdout_fraction, seed, limit, "synthetic")
    return DataSplits(
        train=pool.subset(train_idx),
        holdout=pool.subset(hold_idx),
        test=test,
        num_classes=_SYN_NUM_CLASSES,
        input_size=input_size,
        name="synthetic",
        mean=mean,
        std=std,
    )


def _load_cifar10(root: Path, input_size: int, seed: int, holdout_fraction: float, limit: int | None) -> DataSplits:
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
        if not (folder / name).is_file():
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
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
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
    data = np.asarray(data)
    y = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(y) != len(data):
        raise DataError(
            f"cifar10: batch file {path} has data {data.dtype} {data.shape} and {len(y)} labels, "
            "expected uint8 [N, 3072] and N labels"
        )
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"cifar10: batch file {path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), y


def _load_imagefolder(
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
        train = ImageFolder(str(train_dir), transform=transform, target_transform=_as_int64)
    except FileNotFoundError:
        raise DataError(f"imagefolder: no images in {train_dir}; {layout}") from None
    extra = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and d.name not in train.class_to_idx)
    if extra:
        raise DataError(f"imagefolder: {val_dir} has class folders not in {train_dir}: {', '.join(extra)}")
    try:
        test = _FixedClassImageFolder(
            str(val_dir), train.class_to_idx, transform=transform, target_transform=_as_int64
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


def _as_int64(label: int) -> torch.Tensor:
    return torch.tensor(label, dtype=torch.int64)


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB")


# --------------------------------------------------------------------------- calibration


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
    from PIL import Image, UnidentifiedImageError

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
    for i in _spread(len(files), limit):
        try:
            with Image.open(files[i]) as img:
                out.append(transform(img).numpy())
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"calibration image {files[i]} cannot be read ({_describe(exc)})") from None
    return np.stack(out).astype(np.float32, copy=False)


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
