"""Tests for edgedyn.data: dataset specs, splits, loaders, calibration inputs and errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from edgedyn.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    DataSplits,
    InMemoryDataset,
    image_transform,
    load_calibration,
    load_data,
    make_loader,
    make_synthetic,
)
from edgedyn.errors import EdgedynError

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _all(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys)


def _row_keys(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


def _check_split(ds: Dataset, size: int, num_classes: int) -> None:
    x, y = ds[0]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    xs, ys = _all(ds)
    assert torch.isfinite(xs).all()
    assert int(ys.min()) >= 0 and int(ys.max()) < num_classes


def _write_cifar_batch(path: Path, n: int, offset: int) -> None:
    """A batch in the real files' format: dict with b"data" uint8 [N, 3072] (R, G, B planes) and b"labels"."""
    data = np.random.default_rng(offset).integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [(offset + i) % 10 for i in range(n)]
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"fake", b"data": data, b"labels": labels}, fh)


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


def _fake_cifar(root: Path, per_batch: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", per_batch, offset=i * 100)
    _write_cifar_batch(folder / "test_batch", 10, offset=7)
    return folder


def _normalised_rgb(r: float, g: float, b: float) -> torch.Tensor:
    return (torch.tensor([r, g, b]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 12), fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def _fake_imagefolder(root: Path) -> Path:
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for cls, colour in colours.items():
        for i in range(6):
            _png(root / "train" / cls / f"{i}.png", colour)
    _png(root / "val" / "dog" / "a.png", colours["dog"])
    _png(root / "val" / "dog" / "b.png", colours["dog"])
    return root


# --------------------------------------------------------------------------- digits / synthetic


def test_digits_shapes_dtypes_labels_and_normalisation() -> None:
    splits = load_data("digits", 16)
    assert isinstance(splits, DataSplits)
    assert (splits.num_classes, splits.input_size, splits.name) == (10, 16, "digits")
    assert len(splits.train) + len(splits.holdout) + len(splits.test) == 1797
    assert abs(len(splits.test) - 0.2 * 1797) <= 10
    assert abs(len(splits.holdout) - 0.1 * (1797 - len(splits.test))) <= 10
    for ds in (splits.train, splits.holdout, splits.test):
        _check_split(ds, 16, 10)
    xs, ys = _all(splits.train)
    assert set(ys.tolist()) == set(range(10))
    # grey replicated to 3 channels, normalised with the training pool's statistics
    assert torch.equal(xs[:, 0], xs[:, 1]) and torch.equal(xs[:, 0], xs[:, 2])
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1.0) < 0.05
    assert splits.mean[0] == splits.mean[1] == splits.mean[2]


def test_digits_native_size_matches_sklearn_pixels() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = bunch.images.reshape(len(bunch.images), -1) / 16.0
    splits = load_data("digits", 8)
    xs, ys = _all(splits.test)
    pixels = (xs[:, 0] * splits.std[0] + splits.mean[0]).flatten(1).numpy()
    dist = np.abs(pixels[:, None, :] - raw[None]).max(-1)  # [test, all digits]
    match = dist.argmin(1)
    assert dist.min(1).max() < 1e-5  # every test image is an unmodified sklearn digit
    assert len(set(match.tolist())) == len(match)
    assert np.array_equal(bunch.target[match], ys.numpy())


def test_digits_splits_disjoint_and_test_fixed_for_seed() -> None:
    a = load_data("digits", 8, seed=0)
    keys = [_row_keys(_all(ds)[0]) for ds in (a.train, a.holdout, a.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    # the test split depends on the seed only, not on holdout_fraction or limit
    b = load_data("digits", 8, seed=0, holdout_fraction=0.3, limit=50)
    assert torch.equal(_all(a.test)[0], _all(b.test)[0])
    assert len(b.train) == 50 and len(b.holdout) == 22  # ceil(50 * 0.3 / 0.7)
    assert _row_keys(_all(b.train)[0]) <= keys[0] | keys[1]
    c = load_data("digits", 8, seed=1)
    assert _row_keys(_all(c.test)[0]) != keys[2]


def test_synthetic_shapes_dtypes_labels() -> None:
    splits = load_data("synthetic", 24, limit=200)
    assert (splits.num_classes, splits.input_size, splits.name) == (10, 24, "synthetic")
    assert len(splits.train) == 200 and len(splits.holdout) == 23 and len(splits.test) == 1000
    for ds in (splits.train, splits.holdout, splits.test):
        _check_split(ds, 24, 10)
    _, ys = _all(splits.test)
    assert torch.bincount(ys, minlength=10).tolist() == [100] * 10  # balanced classes
    keys = [_row_keys(_all(ds)[0]) for ds in (splits.train, splits.holdout, splits.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_synthetic_default_sizes() -> None:
    # no time limit here: a timed unit test fails on a busy machine (speed lives in tools/ benchmarks)
    splits = load_data("synthetic", 32)
    assert len(splits.train) + len(splits.holdout) == 5000 and len(splits.holdout) == 500
    assert len(splits.test) == 1000


def test_synthetic_seeded() -> None:
    a = load_data("synthetic", 16, seed=3, limit=120)
    b = load_data("synthetic", 16, seed=3, limit=120)
    c = load_data("synthetic", 16, seed=4, limit=120)
    for name in ("train", "holdout", "test"):
        xa, ya = _all(getattr(a, name))
        xb, yb = _all(getattr(b, name))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(_all(a.train)[0], _all(c.train)[0])
    assert not torch.equal(_all(a.test)[0], _all(c.test)[0])
    # the test split does not move with limit
    d = load_data("synthetic", 16, seed=3, limit=40)
    assert torch.equal(_all(a.test)[0], _all(d.test)[0])


def test_make_synthetic_prefix_stable_and_raw() -> None:
    x_small, y_small = make_synthetic(300, 16, seed=5)
    x_big, y_big = make_synthetic(700, 16, seed=5)
    assert x_small.dtype == np.float32 and y_small.dtype == np.int64
    assert x_small.shape == (300, 3, 16, 16)
    assert np.array_equal(x_small, x_big[:300]) and np.array_equal(y_small, y_big[:300])
    x_other, _ = make_synthetic(300, 16, seed=5, stream=1)
    assert not np.array_equal(x_small, x_other)


def test_synthetic_is_harder_than_digits_for_a_linear_model() -> None:
    from sklearn.linear_model import LogisticRegression

    def linear_accuracy(spec: str) -> float:
        splits = load_data(spec, 8, limit=400)
        xtr, ytr = _all(splits.train)
        xte, yte = _all(splits.test)
        clf = LogisticRegression(max_iter=300, C=0.1).fit(xtr.flatten(1).numpy(), ytr.numpy())
        return float(clf.score(xte.flatten(1).numpy(), yte.numpy()))

    assert linear_accuracy("digits") > 0.85
    assert linear_accuracy("synthetic") < 0.4


# --------------------------------------------------------------------------- loaders


def test_make_loader_batches_and_determinism() -> None:
    splits = load_data("synthetic", 16, limit=100)
    loader = make_loader(splits.train, 32, shuffle=True, seed=7)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    x, y = batches[0]
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (32,) and y.dtype == torch.int64
    assert batches[-1][0].shape[0] == 4
    order = torch.cat([b[1] for b in batches])
    assert sorted(order.tolist()) == sorted(splits.train.labels.tolist())
    again = torch.cat([b[1] for b in make_loader(splits.train, 32, shuffle=True, seed=7)])
    assert torch.equal(order, again)
    images = torch.cat([b[0] for b in make_loader(splits.train, 32, shuffle=True, seed=7)])
    assert torch.equal(images, torch.cat([b[0] for b in batches]))
    other = torch.cat([b[0] for b in make_loader(splits.train, 32, shuffle=True, seed=8)])
    assert not torch.equal(images, other)
    # unshuffled loader walks the dataset in order; drop_last drops the short batch
    seq = list(make_loader(splits.train, 32, shuffle=False))
    assert torch.equal(torch.cat([b[0] for b in seq]), _all(splits.train)[0])
    assert len(list(make_loader(splits.train, 32, shuffle=True, drop_last=True))) == 3
    with pytest.raises(DataError):
        make_loader(splits.train, 0, shuffle=False)


def test_make_loader_on_lazy_dataset(tmp_path: Path) -> None:
    splits = load_data(f"imagefolder:{_fake_imagefolder(tmp_path)}", 8, holdout_fraction=0.34)
    first = [b[1].tolist() for b in make_loader(splits.train, 3, shuffle=True, seed=1)]
    second = [b[1].tolist() for b in make_loader(splits.train, 3, shuffle=True, seed=1)]
    assert first == second
    x, y = next(iter(make_loader(splits.train, 3, shuffle=False)))
    assert x.shape == (3, 3, 8, 8) and y.dtype == torch.int64


# --------------------------------------------------------------------------- cifar10


@pytest.mark.parametrize("point_at_batches", [False, True])
def test_cifar10_fake_batches(tmp_path: Path, point_at_batches: bool) -> None:
    folder = _fake_cifar(tmp_path)
    root = folder if point_at_batches else tmp_path
    splits = load_data(f"cifar10:{root}", 32, holdout_fraction=0.2)
    assert splits.name == f"cifar10:{folder.resolve()}"
    assert splits.num_classes == 10
    assert len(splits.train) == 80 and len(splits.holdout) == 20 and len(splits.test) == 10
    for ds in (splits.train, splits.holdout, splits.test):
        _check_split(ds, 32, 10)
    # test split = test_batch in file order, CHW layout, normalised with the train statistics
    raw = _read_pickle(folder / "test_batch")
    expected = torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    expected = (expected - torch.tensor(splits.mean).view(1, 3, 1, 1)) / torch.tensor(splits.std).view(1, 3, 1, 1)
    xs, ys = _all(splits.test)
    assert torch.allclose(xs, expected, atol=1e-5)
    assert ys.tolist() == raw[b"labels"]
    train_pixels = np.concatenate([_read_pickle(folder / f"data_batch_{i}")[b"data"] for i in range(1, 6)])
    assert np.isclose(splits.mean[0], train_pixels[:, :1024].mean() / 255.0, atol=1e-6)
    keys = [_row_keys(_all(ds)[0]) for ds in (splits.train, splits.holdout)]
    assert not (keys[0] & keys[1]) and len(keys[0] | keys[1]) == 100


def test_cifar10_resize_and_limit(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    splits = load_data(f"cifar10:{tmp_path}", 16, limit=30)
    assert len(splits.train) == 30 and len(splits.holdout) == 4
    _check_split(splits.train, 16, 10)
    x, _ = next(iter(make_loader(splits.test, 4, shuffle=False)))
    assert x.shape == (4, 3, 16, 16)


def test_cifar10_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere") as err:
        load_data(f"cifar10:{missing}", 32)
    assert str(missing) in str(err.value) and "data_batch_1" in str(err.value)
    folder = _fake_cifar(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        load_data(f"cifar10:{folder}", 32)
    assert str(folder / "data_batch_3") in str(err.value)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as err:
        load_data(f"cifar10:{folder}", 32)
    assert str(folder / "data_batch_3") in str(err.value) and "\n" not in str(err.value)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, fh)
    with pytest.raises(DataError, match="3072"):
        load_data(f"cifar10:{folder}", 32)


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder(tmp_path: Path) -> None:
    root = _fake_imagefolder(tmp_path)
    splits = load_data(f"imagefolder:{root}", 8, holdout_fraction=0.34)
    assert splits.num_classes == 2 and splits.name == f"imagefolder:{root.resolve()}"
    assert (splits.mean, splits.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert len(splits.train) == 8 and len(splits.holdout) == 4 and len(splits.test) == 2
    for ds in (splits.train, splits.holdout, splits.test):
        _check_split(ds, 8, 2)
    # val lacks "cat": its labels still follow train's class order (cat=0, dog=1)
    xs, ys = _all(splits.test)
    assert ys.tolist() == [1, 1]
    blue = _normalised_rgb(0.0, 0.0, 1.0)
    assert torch.allclose(xs[0], blue.view(3, 1, 1).expand(3, 8, 8), atol=1e-4)
    xh, yh = _all(splits.holdout)
    assert sorted(yh.tolist()) == [0, 0, 1, 1]  # stratified holdout
    red = _normalised_rgb(1.0, 0.0, 0.0)
    for x, y in zip(xh, yh):
        assert torch.allclose(x[:, 4, 4], red if int(y) == 0 else blue, atol=1e-4)
    limited = load_data(f"imagefolder:{root}", 8, holdout_fraction=0.34, limit=3)
    assert len(limited.train) == 3 and len(limited.holdout) == 2


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_data(f"imagefolder:{tmp_path / 'absent'}", 16)
    assert str(tmp_path / "absent") in str(err.value) and "train/<class>" in str(err.value)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_data(f"imagefolder:{tmp_path / 'empty'}", 16)
    assert str(tmp_path / "empty" / "train") in str(err.value) and "no images" in str(err.value)
    _png(tmp_path / "noval" / "train" / "cat" / "0.png", (1, 2, 3))
    with pytest.raises(DataError) as err:
        load_data(f"imagefolder:{tmp_path / 'noval'}", 16)
    assert str(tmp_path / "noval" / "val") in str(err.value)
    (tmp_path / "noval" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_data(f"imagefolder:{tmp_path / 'noval'}", 16)
    assert str(tmp_path / "noval" / "val") in str(err.value) and "no images" in str(err.value)
    _png(tmp_path / "noval" / "val" / "horse" / "0.png", (1, 2, 3))
    with pytest.raises(DataError, match="horse") as err:
        load_data(f"imagefolder:{tmp_path / 'noval'}", 16)
    assert str(tmp_path / "noval" / "val") in str(err.value)


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("spec", "kwargs", "needle"),
    [
        ("mnist", {}, "digits, synthetic, fashion-mnist[:DIR], idx:DIR, cifar10:DIR, imagefolder:DIR"),
        ("digits:/tmp/x", {}, "takes no directory"),
        ("cifar10", {}, "cifar10:DIR"),
        ("imagefolder:", {}, "imagefolder:DIR"),
        ("digits", {"holdout_fraction": 0.0}, "holdout_fraction"),
        ("digits", {"holdout_fraction": 1.0}, "holdout_fraction"),
        ("digits", {"holdout_fraction": -0.2}, "holdout_fraction"),
        ("digits", {"input_size": 7}, "input_size"),
        ("digits", {"limit": 0}, "limit"),
        ("synthetic", {"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_one_line_data_error(spec: str, kwargs: dict, needle: str) -> None:
    args = {"input_size": 16, **kwargs}
    with pytest.raises(DataError) as err:
        load_data(spec, **args)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, EdgedynError)


# --------------------------------------------------------------------------- calibration


def test_calibration_from_npy(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).normal(size=(10, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "calib.npy"
    np.save(path, arr)
    out = load_calibration(path, 16)
    assert out.dtype == np.float32 and np.array_equal(out, arr)
    picked = load_calibration(str(path), 16, limit=4)
    assert picked.shape == (4, 3, 16, 16)
    assert np.array_equal(picked[0], arr[0]) and np.array_equal(picked[-1], arr[-1])
    np.save(path, arr.astype(np.float64))
    assert load_calibration(path, 16).dtype == np.float32


@pytest.mark.parametrize(
    ("shape", "dtype", "needle"),
    [
        ((3, 16, 16), np.float32, "ndim 3"),
        ((4, 1, 16, 16), np.float32, "C=1"),
        ((4, 3, 16, 12), np.float32, "16 x 12"),
        ((4, 3, 32, 32), np.float32, "32 x 32"),
        ((4, 3, 16, 16), np.uint8, "dtype uint8"),
        ((0, 3, 16, 16), np.float32, "no samples"),
    ],
)
def test_calibration_npy_wrong_shape(tmp_path: Path, shape: tuple[int, ...], dtype: type, needle: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, dtype))
    with pytest.raises(DataError) as err:
        load_calibration(path, 16)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_calibration_from_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _png(folder / "a.png", (255, 0, 0), size=(30, 20))
    _png(folder / "sub" / "b.jpg", (0, 255, 0), fmt="JPEG")
    _png(folder / "sub" / "deeper" / "c.bmp", (0, 0, 255), fmt="BMP")
    (folder / "notes.txt").write_text("not an image")
    out = load_calibration(folder, 16)
    assert out.shape == (3, 3, 16, 16) and out.dtype == np.float32
    with Image.open(folder / "a.png") as img:
        assert np.allclose(out[0], image_transform(16)(img).numpy())
    assert np.allclose(out[0, :, 8, 8], _normalised_rgb(1.0, 0.0, 0.0).numpy(), atol=1e-4)
    assert load_calibration(folder, 16, limit=2).shape == (2, 3, 16, 16)


def test_calibration_errors_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as err:
        load_calibration(empty, 16)
    assert str(empty) in str(err.value) and "no images" in str(err.value)
    with pytest.raises(DataError) as err:
        load_calibration(tmp_path / "missing.npy", 16)
    assert str(tmp_path / "missing.npy") in str(err.value)
    other = tmp_path / "calib.txt"
    other.write_text("x")
    with pytest.raises(DataError) as err:
        load_calibration(other, 16)
    assert str(other) in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        load_calibration(broken, 16)
    assert str(broken / "x.png") in str(err.value)


def test_shipped_digits_calibration_file() -> None:
    path = REPO / "calib" / "digits_32.npy"
    assert path.stat().st_size < 4 * 1024 * 1024
    calib = load_calibration(path, 32)
    assert calib.shape == (256, 3, 32, 32)
    train_keys = _row_keys(_all(load_data("digits", 32).train)[0])
    assert sum(img.tobytes() in train_keys for img in calib) == 256


def test_in_memory_dataset_batch_indexing() -> None:
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    ds = InMemoryDataset(images, torch.tensor([0, 1, 2, 3]), size=4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x, y = ds[[1, 3]]
    assert x.shape == (2, 3, 4, 4) and y.tolist() == [1, 3]
    single, label = ds[1]
    assert torch.allclose(single, x[0]) and int(label) == 1
    assert len(ds.subset([0, 2])) == 2
    with pytest.raises(DataError):
        InMemoryDataset(images, torch.tensor([0, 1]))
