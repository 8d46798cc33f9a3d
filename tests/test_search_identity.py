"""Same seed, same ``subnets.json``: each search method against its recorded golden.

The goldens (``tests/golden/search/<cpu>/*.json``) were recorded by ``tools/check_search_identity.py
--write`` before ``edgedyn/search`` was reshaped into one file per method; a change that moves a
pick, a path point, an accuracy or one weight's bits fails here. PyTorch's CPU kernels round
differently per vector ISA, so there is one set per CPU capability (``avx512``: recorded before
the reshape; ``avx2``: recorded on 2026-12-03 from the same code, when the dev VM turned out AVX2).
``autoslim``'s default then changed (L6, averaged sandwich losses): its AVX2 golden was recorded
again, and its AVX-512 one removed (no AVX-512 machine to record it on). Where a golden is
missing the test is skipped, saying how to record it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_search_identity as identity  # noqa: E402


def _goldens() -> Path:
    import torch

    return ROOT / "tests" / "golden" / "search" / torch.backends.cpu.get_cpu_capability().lower()


@pytest.mark.parametrize("method", identity.METHODS)
def test_search_is_byte_for_byte_the_recorded_one(method, tmp_path):
    golden = _goldens() / f"{method}.json"
    if not golden.is_file():
        pytest.skip(f"no goldens for this CPU ({golden.parent.name}): record them, before a change, with "
                    f"python tools/check_search_identity.py --write {golden.parent.relative_to(ROOT)}")
    want = golden.read_text()
    got = json.dumps(identity.run_one(method, tmp_path), indent=1, sort_keys=True) + "\n"
    assert got == want
