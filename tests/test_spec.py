import json

import pytest

from edgedyn.dynamic import SubnetSpec, channel_grid
from edgedyn.errors import SpecError


def test_spec_is_frozen_hashable_and_round_trips():
    a = SubnetSpec((8, 16, 32))
    b = SubnetSpec.from_json(a.to_json())
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    with pytest.raises(Exception):
        a.widths = (1,)  # frozen
    assert SubnetSpec.from_dict([8, 16, 32]) == a
    assert json.loads(a.to_json()) == {"widths": [8, 16, 32]}


def test_spec_rejects_non_integers_and_bad_json():
    with pytest.raises(SpecError, match="integer"):
        SubnetSpec((8, 1.5))
    with pytest.raises(SpecError, match="not valid JSON"):
        SubnetSpec.from_json("[8, 16", where="x.json")
    with pytest.raises(SpecError, match="'widths' is missing"):
        SubnetSpec.from_dict({"w": [1]})


def test_replace_and_contains():
    a = SubnetSpec((8, 16))
    b = a.replace(1, 8)
    assert b == SubnetSpec((8, 8)) and a.contains(b) and not b.contains(a)


@pytest.mark.parametrize(
    "channels,parts,size,expected",
    [
        (64, 8, None, (8, 16, 24, 32, 40, 48, 56, 64)),
        (16, 8, None, (2, 4, 6, 8, 10, 12, 14, 16)),
        (20, 8, None, (3, 5, 8, 10, 13, 15, 18, 20)),
        (64, 8, 16, (16, 32, 48, 64)),
        (40, 8, 16, (16, 32, 40)),
        (4, 8, None, (1, 2, 3, 4)),
    ],
)
def test_channel_grid(channels, parts, size, expected):
    assert channel_grid(channels, parts, size) == expected
