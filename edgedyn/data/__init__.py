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
``fashion-mnist[:DIR]``
    Fashion-MNIST (Zalando; 60,000 training and 10,000 test images, 28x28 grey, 10
    classes, MIT licence) from ``DIR``, by default ``/usr/share/datasets/fashion-mnist``
    where ``apt-get install dataset-fashion-mnist`` puts it. Zero-padded to 32x32, grey
    replicated to 3 channels (:mod:`edgedyn.data.idx`). Kept in memory as uint8.
``idx:DIR``
    any folder of MNIST-format files (``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
    ``t10k-labels-idx1-ubyte[.gz]``), treated as Fashion-MNIST is.
``cifar10:DIR``
    the CIFAR-10 python batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``)
    in ``DIR`` or ``DIR/cifar-10-batches-py``, read with a restricted unpickler. Kept in memory as uint8 and
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

from pathlib import Path

from .calibration import load_calibration
from .cifar import CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES
from .core import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_INPUT_SIZE,
    DataError,
    DataSplits,
    InMemoryDataset,
    _check_input_size,
    _check_limit,
    _check_seed,
    image_transform,
    make_loader,
)
from .synthetic import make_synthetic

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

DATASET_SPECS = ("digits", "synthetic", "fashion-mnist[:DIR]", "idx:DIR", "cifar10:DIR", "imagefolder:DIR")


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
    kind = kind.strip().lower().replace("_", "-")
    arg = arg.strip()
    valid = ", ".join(DATASET_SPECS)
    args = (input_size, seed, holdout_fraction, limit)
    if kind in ("digits", "synthetic"):
        if sep:
            raise DataError(f"dataset spec {spec!r}: {kind} takes no directory; valid specs: {valid}")
        if kind == "digits":
            from .digits import load_digits

            return load_digits(*args)
        from .synthetic import load_synthetic

        return load_synthetic(*args)
    if kind == "fashion-mnist":
        from .idx import load_fashion_mnist

        return load_fashion_mnist(Path(arg).expanduser() if arg else None, *args)
    if kind in ("cifar10", "imagefolder", "idx"):
        if not arg:
            raise DataError(f"dataset spec {spec!r}: {kind} needs a directory, write {kind}:DIR")
        root = Path(arg).expanduser()
        if kind == "cifar10":
            from .cifar import load_cifar10

            return load_cifar10(root, *args)
        if kind == "idx":
            from .idx import load_idx_folder

            return load_idx_folder(root, *args)
        from .imagefolder import load_imagefolder

        return load_imagefolder(root, *args)
    raise DataError(f"unknown dataset spec {spec!r}; valid specs: {valid}")
