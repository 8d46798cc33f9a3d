"""Same seed, same ``subnets.json``: each search method against its recorded golden.

The goldens (``tests/golden/search/*.json``) were recorded by ``tools/check_search_identity.py
--write`` before ``edgedyn/search`` was reshaped into one file per method; a change that moves a
pick, a path point, an accuracy or one weight's bits fails here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_search_identity as identity  # noqa: E402


@pytest.mark.parametrize("method", identity.METHODS)
def test_search_is_byte_for_byte_the_recorded_one(method, tmp_path):
    want = (ROOT / "tests" / "golden" / "search" / f"{method}.json").read_text()
    got = json.dumps(identity.run_one(method, tmp_path), indent=1, sort_keys=True) + "\n"
    assert got == want
