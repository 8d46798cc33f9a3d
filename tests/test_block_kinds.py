"""The profiler's blocks for the layer kinds beyond plain convs: grouped convs, concatenations,
squeeze-and-excitation scales, hardswish and other activations, LayerNorm and NHWC transposes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgedyn.blocks import BlockKey, Layout, all_keys, model_blocks, subnet_keys
from edgedyn.blocks.models import block_onnx, block_torch
from edgedyn.dynamic import DynamicNet
from edgedyn.errors import ModelError
from edgedyn.profile.grid import interpolate, subsample_keys
from edgedyn.profile.table import Entry

MY_NET = str(Path(__file__).parent / "fixtures" / "my_net.py") + ":build"


class Grouped(nn.Module):
    """A ResNeXt-like block: 1x1, a grouped 3x3 (4 channels per group), 1x1, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.c(self.b(self.a(x))))
        return self.fc(x.mean((2, 3)))


class NextLike(nn.Module):
    """A ConvNeXt-like block: depthwise 7x7, NHWC LayerNorm, two linear layers with GELU, layer scale."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, 2)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.up, self.act, self.down = nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)
        self.layer_scale = nn.Parameter(torch.full((16, 1, 1), 0.5))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(self.stem(x), 3, 1, 1)  # Inception's branch pool
        y = self.down(self.act(self.up(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        x = x + self.layer_scale * y
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DenseLike(nn.Module):
    """What DenseNet, GoogLeNet and Inception V3 add: a pool whose ceil_mode rounds up, a
    BatchNorm + ReLU that follow a concat (pre-activation), 1x7 and 7x1 kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)  # 16 -> 8 (floor: 7)
        self.branch = nn.Sequential(nn.Conv2d(16, 8, (1, 7), padding=(0, 3)), nn.ReLU(),
                                    nn.Conv2d(8, 8, (7, 1), padding=(3, 0)), nn.ReLU())
        self.norm, self.relu = nn.BatchNorm2d(24), nn.ReLU()
        self.conv = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = torch.cat([x, self.branch(x)], 1)
        x = self.conv(self.relu(self.norm(x)))
        return self.fc(x.mean((2, 3)))


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv(x))  # tanh has no latency block
        return self.fc(x.mean((2, 3)))


def _net(model: nn.Module, size: int = 16) -> DynamicNet:
    model.eval()
    return DynamicNet(model, torch.zeros(1, 3, size, size))


def _conv_channels(model: nn.Module) -> list[tuple[int, int, int]]:
    return [(m.in_channels, m.out_channels, m.groups) for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_my_net_blocks_follow_the_extracted_subnet():
    net = DynamicNet.from_name(MY_NET, num_classes=10, input_size=32)
    ops = [t.op for t in model_blocks(net)]
    for op in ("conv", "gap", "scale", "concat", "linear"):
        assert op in ops
    acts = {t.act for t in model_blocks(net)}
    assert {"hardswish", "sigmoid", "relu"} <= acts
    for seed in range(4):
        spec = net.random_spec(seed)
        keys = [k for k in subnet_keys(net, spec) if k.op == "conv"]
        assert [(k.c_in, k.c_out) for k in keys] == [(i, o) for i, o, _ in _conv_channels(net.extract(spec))]
        cat = next(k for k in subnet_keys(net, spec) if k.op == "concat")
        head = next(k for t, k in zip(model_blocks(net), subnet_keys(net, spec)) if t.name == "head.0")
        assert cat.c_in == head.c_in and cat.parts == 2  # the layer after the concat reads its sum


def test_grouped_conv_keeps_whole_groups():
    net = _net(Grouped())
    grouped = next(t for t in model_blocks(net) if t.name == "b.0")
    assert grouped.group_width == 4 and not grouped.depthwise
    spec = net.uniform_spec(0.5)
    key = grouped.key(spec)
    extracted = [c for c in _conv_channels(net.extract(spec)) if c[2] > 1][0]
    assert (key.c_in, key.c_out, key.c_in // key.group_width) == extracted
    assert key.macs() == 16 * 16 * 9 * 4 * key.c_out  # each output reads one group of 4 channels
    assert not Layout("nchwc", 16).applies(net)  # grouped convs stay plain (no NCHWc form)


def test_convnext_like_blocks():
    net = _net(NextLike(), 32)
    ops = [t.op for t in model_blocks(net)]
    assert ops[:7] == ["conv", "avgpool", "conv", "to_nhwc", "layernorm", "linear", "linear"]
    pool = model_blocks(net)[1]
    assert (pool.kernel, pool.stride, pool.padding, pool.in_h) == (3, 1, 1, 16)
    assert {"to_nchw", "scale", "add", "gap"} <= set(ops)
    up = next(t for t in model_blocks(net) if t.name == "up")
    assert up.act == "gelu" and (up.in_h, up.in_w) == (16, 16)
    key = up.key(net.full_spec())
    assert key.macs() == 16 * 16 * 16 * 64


def test_ceil_pools_non_square_kernels_and_a_batchnorm_after_a_concat():
    net = _net(DenseLike(), 16)
    blocks = {t.name: t for t in model_blocks(net)}
    pool, wide, tall = blocks["pool"], blocks["branch.0"], blocks["branch.2"]
    assert pool.ceil and pool.key(net.full_spec()).out_hw == (8, 8)  # floor would give 7
    assert (wide.kernel, wide.kernel_w, wide.padding, wide.padding_w) == (1, 7, 0, 3)
    assert (tall.kernel, tall.kernel_w, tall.padding, tall.padding_w) == (7, 1, 3, 0)
    norm = blocks["norm"]
    assert norm.op == "affine" and norm.act == "relu" and len(norm.in_parts) == 2
    assert not Layout("nchwc", 16).applies(net)
    for seed in range(3):
        spec = net.random_spec(seed)
        sub = net.extract(spec).eval()
        convs = [m for m in sub.modules() if isinstance(m, nn.Conv2d)]
        keys = [k for k in subnet_keys(net, spec) if k.op == "conv"]
        assert [(k.c_in, k.c_out, k.kernel_hw, k.padding_hw) for k in keys] == [
            (m.in_channels, m.out_channels, m.kernel_size, m.padding) for m in convs]
        key = wide.key(spec)
        assert key.macs() == 8 * 8 * 7 * key.c_in * key.c_out
        bn = next(k for t, k in zip(model_blocks(net), subnet_keys(net, spec)) if t.name == "norm")
        assert bn.c_in == sub.norm.num_features  # the channels the concat gives it in this sub-net


def test_unknown_op_fails_in_one_line_naming_the_layer():
    net = _net(Odd())
    with pytest.raises(ModelError) as err:
        model_blocks(net)
    assert "tanh" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("model", [MY_NET, "grouped", "nextlike", "denselike"])
def test_every_key_builds_and_runs(model):
    ort = pytest.importorskip("onnxruntime")
    net = {"grouped": lambda: _net(Grouped()), "nextlike": lambda: _net(NextLike(), 32),
           "denselike": lambda: _net(DenseLike(), 16)}.get(
        model, lambda: DynamicNet.from_name(model, num_classes=10, input_size=32))()
    kinds: dict[tuple, BlockKey] = {}
    for k in all_keys(net):
        kinds.setdefault((k.op, k.act, k.group_width > 0, k.depthwise, k.residual, k.parts, k.kernel_hw, k.ceil), k)
    for k in kinds.values():
        sess = ort.InferenceSession(block_onnx(k).SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.random.rand(*i.shape).astype(np.float32) for i in sess.get_inputs()}
        module, inputs = block_torch(k)
        out = sess.run(None, feeds)[0]
        assert out.shape == tuple(module(*inputs).shape), k.to_str()
        if len(out.shape) == 4 and k.op not in ("to_nhwc", "layernorm", "linear"):
            assert out.shape[2:] == k.out_hw, k.to_str()  # the key's geometry is what runs


def test_key_text_is_unchanged_for_old_kinds_and_round_trips_new_fields():
    old = BlockKey("conv", 16, 32, 8, 8, 3, 1, 1)
    assert "group_width" not in old.to_str() and "parts" not in old.to_str()
    assert all(f not in old.to_str() for f in ("kernel_w", "padding_w", "ceil"))
    assert BlockKey.from_str(old.to_str()) == old
    for k in (BlockKey("conv", 32, 32, 8, 8, 3, 1, 1, group_width=4),
              BlockKey("concat", 48, 48, 8, 8, parts=3), BlockKey("act", 8, 8, 4, 4, act="hardswish"),
              BlockKey("conv", 16, 8, 8, 8, 1, 1, 0, kernel_w=7, padding_w=3), BlockKey("affine", 8, 8, 4, 4, act="relu"),
              BlockKey("maxpool", 8, 8, 15, 15, 3, 2, ceil=True)):
        assert BlockKey.from_str(k.to_str()) == k


def test_subsample_interpolates_blocks_sharing_a_geometry():
    """Two blocks of one geometry with different width grids (a conv before a concat and one
    after it): each grid is subsampled on its own, and every skipped key is interpolated."""
    geo = dict(op="conv", in_h=8, in_w=8)
    keys = [BlockKey(c_in=ci, c_out=co, **geo) for ci in (4, 8, 12, 16) for co in (3, 6, 9, 12)]
    keys += [BlockKey(c_in=ci, c_out=co, **geo) for ci in (6, 12, 18, 24) for co in (8, 16, 24, 32)]
    measure, interp = subsample_keys(keys, 2)
    assert interp and set(measure) | set(interp) == set(keys)
    entries = {k: Entry(float(k.c_in * k.c_out), "measured") for k in measure}
    filled = interpolate(entries, interp)
    for k in interp:  # c_in x c_out is bilinear: interpolation is exact
        assert filled[k].ms == pytest.approx(k.c_in * k.c_out)
    # one channel axis (a BatchNorm after a concat, a pool): every step-th width and the ends
    diag = [BlockKey("affine", c, c, 8, 8) for c in range(8, 40)]
    measure, interp = subsample_keys(diag, 4)
    assert [k.c_in for k in measure] == [8, 12, 16, 20, 24, 28, 32, 36, 39] and len(interp) == 32 - 9
    filled = interpolate({k: Entry(2.0 * k.c_in, "measured") for k in measure}, interp)
    assert all(filled[k].ms == pytest.approx(2.0 * k.c_in) for k in interp)


def test_interpolation_far_from_any_measured_cell_uses_the_scattered_points():
    """A geometry shared by blocks with different width grids (GoogLeNet's 1x1 convs after
    concatenations): a key with no measured cell around it is interpolated over the measured
    points' triangles (exact for a plane), quickly, instead of searched over every cell."""
    geo = dict(op="conv", in_h=4, in_w=4)
    measured = [BlockKey(c_in=ci, c_out=co, **geo) for ci, co in
                [(10, 4), (20, 8), (30, 4), (400, 16), (600, 8), (520, 32), (40, 64)]]
    entries = {k: Entry(1.0 + 0.01 * k.c_in + 0.1 * k.c_out, "measured") for k in measured}
    wanted = [BlockKey(c_in=514, c_out=12, **geo), BlockKey(c_in=25, c_out=6, **geo)]
    filled = interpolate(entries, wanted)
    for k in wanted:
        assert filled[k].ms == pytest.approx(1.0 + 0.01 * k.c_in + 0.1 * k.c_out)
    outside = BlockKey(c_in=900, c_out=2, **geo)  # beyond every measured point: the nearest one
    assert interpolate(entries, [outside])[outside].ms == pytest.approx(entries[BlockKey(c_in=600, c_out=8, **geo)].ms)
