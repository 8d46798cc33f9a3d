"""``digits``: scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .core import DataSplits, InMemoryDataset, _carve, _channel_stats, _stratified_split

DIGITS_TEST_FRACTION = 0.2


def load_digits(input_size: int, seed: int, holdout_fraction: float, limit: int | None) -> DataSplits:
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

