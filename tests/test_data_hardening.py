"""Bounded, safe data readers (issue 23): every probe of the issue against the data sources, as
a test. An idx header is checked against the file's real size with overflow-safe arithmetic; a
gzip stream is decompressed in bounded chunks, its magic checked first; CIFAR labels must be
ints in range; an imagefolder reads only regular files (a FIFO must not hang, a symlink loop
must not explode) and opens images under PIL's decompression-bomb limit. Each failure is one
DataError line naming the file."""

from __future__ import annotations

import gzip
import os
import pickle
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgedyn.data import DataError, load_calibration, load_data, make_loader
from edgedyn.data.idx import IDX_FILES
from test_data_sources import _idx_bytes, write_idx_set


def _refused(spec: str, *needles: str, size: int = 32) -> str:
    with pytest.raises(DataError) as err:
        load_data(spec, size, holdout_fraction=0.25)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _header(magic: int, *dims: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


# -- idx ------------------------------------------------------------------------------------------
def test_idx_header_whose_size_product_overflows_is_refused(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    images = tmp_path / IDX_FILES["train_images"]
    images.write_bytes(_header(0x0803, 2 ** 22, 2 ** 21, 2 ** 21))  # no data
    # the int64 product 2**22 * 2**21 * 2**21 = 2**64 wraps to 0, the bytes the file holds
    _refused(f"idx:{tmp_path}", str(images), "header declares")


def test_idx_header_declaring_zero_sized_images_is_refused(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    images = tmp_path / IDX_FILES["train_images"]
    images.write_bytes(_header(0x0803, 120, 0, 28))
    _refused(f"idx:{tmp_path}", str(images), "zero-sized images")


def _bomb(path: Path, head: bytes, zeros: int) -> None:
    """A gzip file of ``head`` then ``zeros`` zero bytes, written without holding them."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    with open(path, "wb") as fh:
        fh.write(comp.compress(head))
        for _ in range(zeros >> 20):
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("head, needle", [
    (b"PK\x03\x04", "bad magic"),                              # not idx at all: refused on the first bytes
    (_header(0x0803, 120, 28, 28), "more data than"),        # a right header, then far more than it declares
    (_header(0x0803, 2 ** 31, 2 ** 16, 2 ** 16), "header declares"),  # more than the stream can hold
])
def test_a_gzip_bomb_is_refused_quickly_with_bounded_memory(tmp_path: Path, head: bytes, needle: str) -> None:
    write_idx_set(tmp_path, gz=True)
    images = tmp_path / (IDX_FILES["train_images"] + ".gz")
    _bomb(images, head, 768 << 20)  # 768 MiB of zeros in under a MiB
    assert images.stat().st_size < 2 << 20
    tracemalloc.start()
    start = time.monotonic()
    try:
        _refused(f"idx:{tmp_path}", str(images), needle)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak  # never the whole stream
    assert time.monotonic() - start < 20


def test_gzip_idx_still_loads_and_a_short_stream_is_refused(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, gz=True)
    s = load_data(f"idx:{tmp_path}", 32, holdout_fraction=0.25)
    assert len(s.test) == len(arrays["test_labels"])
    labels = tmp_path / (IDX_FILES["test_labels"] + ".gz")
    labels.write_bytes(gzip.compress(_idx_bytes(arrays["test_labels"])[:-3]))
    _refused(f"idx:{tmp_path}", str(labels), "holds 37")


def test_idx_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    images = tmp_path / IDX_FILES["test_images"]
    images.unlink()
    os.mkfifo(images)
    _refused(f"idx:{tmp_path}", str(images), "not a regular file")


# -- CIFAR-10 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [
    ["a"] * 20, [1.5] * 20, [[1, 2]] * 20, b"\x01" * 20, {i: 1 for i in range(20)}, [True] * 20,
    [2 ** 70] * 20, [-1] * 20, "0123456789" * 2, np.zeros((20, 2), np.int64),
])
def test_cifar_labels_that_are_not_ints_in_range_are_refused(tmp_path: Path, labels) -> None:
    from edgedyn.data import CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES

    rng = np.random.default_rng(0)
    for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
        batch = {b"labels": list(range(10)) * 2, b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8)}
        if name == "data_batch_3":
            batch[b"labels"] = labels
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(batch, fh)
    _refused(f"cifar10:{tmp_path}", str(tmp_path / "data_batch_3"), "labels")


# -- imagefolder --------------------------------------------------------------------------------------
def _folder(root: Path, n: int = 3) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(d / f"{i}.png")
    return root


def _drain(spec: str) -> None:
    s = load_data(spec, 16, holdout_fraction=0.3)
    for ds in (s.train, s.holdout, s.test):
        for _ in make_loader(ds, 4, shuffle=False):
            pass


@pytest.mark.timeout(30)
def test_a_fifo_in_an_imagefolder_is_refused_not_waited_on(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    fifo = root / "train" / "a" / "9.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file") as err:
        _drain(f"imagefolder:{root}")
    assert str(fifo) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.timeout(30)
def test_a_device_and_a_looping_symlink_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / "train" / "b" / "9.png").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="not a regular file"):
        _drain(f"imagefolder:{root}")
    (root / "train" / "b" / "9.png").unlink()
    loop = root / "train" / "b" / "8.png"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="cannot read") as err:
        _drain(f"imagefolder:{root}")
    assert str(loop) in str(err.value)


@pytest.mark.timeout(60)
def test_symlink_loops_between_folders_do_not_explode(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    a = root / "train" / "a"
    for name in ("x", "y", "z"):  # three links back up: os.walk(followlinks=True) visits 3**40 folders
        (a / name).symlink_to(a)
    start = time.monotonic()
    s = load_data(f"imagefolder:{root}", 16, holdout_fraction=0.3)
    assert len(s.train) + len(s.holdout) == 6  # each image once
    assert time.monotonic() - start < 20


def test_a_linked_class_folder_and_linked_images_still_load(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    elsewhere = _folder(tmp_path / "other") / "train" / "a"
    (root / "train" / "c").symlink_to(elsewhere)
    (root / "train" / "b" / "7.png").symlink_to(elsewhere / "0.png")
    s = load_data(f"imagefolder:{root}", 16, holdout_fraction=0.3)
    assert s.num_classes == 3 and len(s.train) + len(s.holdout) == 10


@pytest.mark.parametrize("side", [40, 100])  # past the limit: PIL warns below 2x, raises above
def test_images_past_the_decompression_bomb_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              side: int) -> None:
    from PIL import Image

    root = _folder(tmp_path)
    big = root / "val" / "a" / "big.png"
    Image.new("RGB", (side, side)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="decompression bomb") as err:
        _drain(f"imagefolder:{root}")
    assert str(big) in str(err.value)
    with pytest.raises(DataError, match="decompression bomb"):
        load_calibration(root / "val", 16)


def test_calibration_folder_with_a_fifo_does_not_hang(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    os.mkfifo(root / "val" / "a" / "5.png")
    x = load_calibration(root / "val", 16)  # the FIFO is no image file: skipped, never opened
    assert x.shape == (6, 3, 16, 16)
