"""Write INT8 calibration samples taken from a dataset's TRAIN split as a float32 NCHW .npy.

Default: 256 samples of ``digits`` at input size 32 -> ``calib/digits_32.npy`` (about 3 MB).
The samples are preprocessed exactly as :func:`edgedyn.data.load_data` feeds the model, so
``edgedyn.data.load_calibration`` accepts the file as is. Run from anywhere:

    python tools/make_calib.py [--spec digits] [--input-size 32] [--count 256] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgedyn.artifacts import atomic_write_bytes  # noqa: E402
from edgedyn.data import load_data  # noqa: E402
from edgedyn.errors import EdgedynError  # noqa: E402


def make_calibration(spec: str, input_size: int, count: int, seed: int) -> np.ndarray:
    """``count`` training samples of ``spec`` (a seeded random pick), float32 [count, 3, S, S]."""
    train = load_data(spec, input_size, seed=seed).train
    if count < 1 or count > len(train):
        raise EdgedynError(f"--count must be between 1 and {len(train)} (the {spec} train split), got {count}")
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:count])
    return torch.stack([train[int(i)][0] for i in pick]).numpy().astype(np.float32, copy=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="digits", help="dataset spec for edgedyn.data.load_data (default: digits)")
    parser.add_argument("--input-size", type=int, default=32, help="H == W of the samples (default: 32)")
    parser.add_argument("--count", type=int, default=256, help="number of samples (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="split and pick seed (default: 0)")
    parser.add_argument("--out", type=Path, default=None, help="output .npy (default: calib/<spec>_<size>.npy)")
    args = parser.parse_args(argv)
    out = args.out or REPO / "calib" / f"{args.spec.split(':')[0]}_{args.input_size}.npy"
    try:
        samples = make_calibration(args.spec, args.input_size, args.count, args.seed)
    except EdgedynError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    buf = io.BytesIO()
    np.save(buf, samples)
    atomic_write_bytes(out, buf.getvalue())
    out.chmod(0o644)  # a shipped data file, not a private temp file
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out}: {samples.shape[0]} samples {tuple(samples.shape[1:])} float32, {size_mb:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
