"""Each layer kind beyond plain prefix slicing, on a tiny model: set_subnet == extract == ONNX Runtime."""

import pytest
import torch
from torch import nn

from edgedyn.dynamic import DynamicNet
from edgedyn.errors import ModelError, SpecError

from helpers import settle_bn


def _check_equivalence(net, size, tmp_path, specs=None):
    """set_subnet output equals the extracted sub-net's and its ONNX Runtime output (1e-4)."""
    from edgedyn.export import run_onnxruntime

    settle_bn(net, size)
    x = torch.randn(2, net.input_shape[1], size, size, generator=torch.Generator().manual_seed(0))
    specs = specs or [net.min_spec(), net.uniform_spec(0.5), net.random_spec(1), net.random_spec(2)]
    for i, spec in enumerate(specs):
        net.set_subnet(spec)
        with torch.no_grad():
            a = net(x)
            sub = net.extract(spec)
            b = sub(x)
        assert (a - b).abs().max().item() <= 1e-4, spec
        assert net.params(spec) == sum(p.numel() for p in sub.parameters())
        path = net.export_onnx(spec, tmp_path / f"{i}.onnx", batch=2)
        assert abs(run_onnxruntime(path, x.numpy()) - a.numpy()).max() <= 1e-4, spec
    net.set_subnet(net.full_spec())


def _compute_widths(net, layer, spec, size):
    """(input channels, output channels) the layer really sees under ``spec``."""
    seen = {}
    mod = dict(net.model.named_modules())[layer]
    h = mod.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].shape[1], out=o.shape[1]))
    try:
        net.set_subnet(spec)
        with torch.no_grad():
            net(torch.zeros(1, net.input_shape[1], size, size))
    finally:
        h.remove()
        net.set_subnet(net.full_spec())
    return seen["inp"], seen["out"]


class Grouped(nn.Module):
    """ResNeXt-style: 1x1 -> grouped 3x3 (8 groups of 4) -> 1x1."""

    def __init__(self):
        super().__init__()
        self.reduce = nn.Conv2d(3, 32, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv = nn.Conv2d(32, 32, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.expand = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.reduce(x)))
        x = torch.relu(self.bn2(self.conv(x)))
        return self.fc(self.expand(x).mean((2, 3)))


def test_grouped_conv_keeps_whole_groups(tmp_path):
    net = DynamicNet(Grouped(), torch.zeros(1, 3, 8, 8), channel_groups=4)
    g = net.groups[net.layers["conv"].out_group]
    # the grouped conv ties its input and output: one coupling group, widths in whole conv groups
    assert net.layers["conv"].in_group == g.index and g.unit == 4
    assert g.grid == (8, 16, 24, 32) and all(w % 4 == 0 for w in g.grid)
    spec = net.full_spec().replace(g.index, 8)
    assert _compute_widths(net, "conv", spec, 8) == (8, 8)
    assert net.extract(spec).conv.groups == 2  # the group count shrinks, 4 channels per group stay
    _check_equivalence(net, 8, tmp_path)


def test_grouped_conv_permutation_moves_whole_groups():
    net = DynamicNet(Grouped(), torch.zeros(1, 3, 8, 8), channel_groups=4)
    g = net.layers["conv"].out_group
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
    blocks = torch.tensor([3, 0, 7, 1, 2, 6, 5, 4])
    net.permute_channels(g, (blocks[:, None] * 4 + torch.arange(4)).flatten())
    with torch.no_grad():
        assert (net(x) - ref).abs().max().item() <= 1e-5
    # any other order is taken to the nearest one that moves whole conv groups: function unchanged
    net.permute_channels(g, torch.randperm(32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert (net(x) - ref).abs().max().item() <= 1e-5
    with pytest.raises(SpecError, match="not a permutation"):
        net.permute_channels(g, [0] * 32)


def test_whole_units_projection():
    from edgedyn.dynamic.slicing import whole_units

    # channels 4-7 (unit 1) come first in the order, then unit 0, then unit 2
    perm = torch.tensor([4, 6, 5, 0, 7, 1, 2, 3, 8, 9, 10, 11])
    assert whole_units(perm, 4).tolist() == [4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11]
    block = torch.tensor([8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7])
    assert torch.equal(whole_units(block, 4), block)


class Concat(nn.Module):
    """Two branches concatenated, then a BatchNorm and a conv over the concat (DenseNet-like)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(24)
        self.head = nn.Conv2d(24, 12, 1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        y = self.norm(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(self.head(torch.relu(y)).mean((2, 3)))


def test_concat_takes_a_prefix_of_each_input(tmp_path):
    net = DynamicNet(Concat(), torch.zeros(1, 3, 8, 8), channel_groups=4)
    head = net.layers["head"]
    ga, gb = net.layers["a"].out_group, net.layers["b"].out_group
    assert head.in_group is None and head.in_parts == ((ga, 0, 8), (gb, 8, 16))
    assert not net.frozen_groups()
    spec = net.full_spec().replace(ga, 2).replace(gb, 12)
    assert _compute_widths(net, "head", spec, 8) == (14, spec[net.layers["head"].out_group])
    sub = net.extract(spec)
    # the sub-net's head takes channels 0-1 of a and 8-19 (b's first 12) of the full head
    assert torch.equal(sub.head.weight, torch.cat([net.model.head.weight[:spec[head.out_group], :2],
                                                  net.model.head.weight[:spec[head.out_group], 8:20]], 1))
    _check_equivalence(net, 8, tmp_path)


def test_concat_permutation_preserves_function():
    net = settle_bn(DynamicNet(Concat(), torch.zeros(1, 3, 8, 8), channel_groups=4), 8)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
    gen = torch.Generator().manual_seed(1)
    for g in net.groups:
        net.permute_channels(g.index, torch.randperm(g.channels, generator=gen))
    with torch.no_grad():
        assert (net(x) - ref).abs().max().item() <= 1e-5


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: a LayerNorm over channels with its own forward."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, 2)
        self.norm = LayerNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.ln = nn.LayerNorm(16)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)
        self.layer_scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.norm(self.stem(x))
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        y = self.down(nn.functional.gelu(self.up(y))).permute(0, 3, 1, 2)
        return self.fc((x + self.layer_scale * y).mean((2, 3)))


def test_layernorm_over_channels_and_layer_scale(tmp_path):
    net = DynamicNet(ConvNeXtish(), torch.zeros(1, 3, 8, 8), channel_groups=4)
    stream = net.layers["stem"].out_group
    assert not net.frozen_groups()
    assert {"norm", "ln", "layer_scale"} <= {m.layer for m in net.groups[stream].members}
    assert net.layers["layer_scale"].kind == "param" and net.layers["ln"].kind == "ln"
    spec = net.uniform_spec(0.25)
    sub = net.extract(spec)
    assert sub.ln.normalized_shape == (4,) and sub.norm.weight.shape == (4,) and sub.layer_scale.shape == (4, 1, 1)
    assert type(sub.norm) is LayerNorm2d and type(sub) is ConvNeXtish  # plain classes again
    _check_equivalence(net, 8, tmp_path)


class Frozen(nn.Module):
    """A LayerNorm over (C, H, W) cannot be sliced: its group freezes, the rest stays searchable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm([8, 6, 6])
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        x = self.mid(self.norm(self.conv(x)))
        return self.fc(torch.relu(self.bn(x)).mean((2, 3)))


def test_unsliceable_layer_freezes_its_group(tmp_path):
    net = DynamicNet(Frozen(), torch.zeros(1, 3, 6, 6), channel_groups=4)
    frozen = net.frozen_groups()
    assert [g.name for g in frozen] == ["conv"] and "layer 'norm'" in frozen[0].frozen
    assert frozen[0].grid == (8,) and frozen[0].floor == 8
    assert "norm" in net.frozen_layers() and "mid" in net.frozen_layers()
    mid = net.groups[net.layers["mid"].out_group]
    assert not mid.frozen and len(mid.grid) == 4  # the search continues on the rest
    spec = net.min_spec()
    assert spec[frozen[0].index] == 8 and _compute_widths(net, "mid", spec, 6) == (8, 4)
    _check_equivalence(net, 6, tmp_path)


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.after = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.after(x).mean((2, 3)))


def test_channel_shuffle_frozen_or_refused(tmp_path):
    """A traceable shuffle freezes the groups it interleaves; torchvision's ShuffleNet V2, whose
    shuffle Torch-Pruning cannot map, is refused in one line that says why."""
    net = DynamicNet(Shuffle(), torch.zeros(1, 3, 4, 4), channel_groups=4)
    conv = net.groups[net.layers["conv"].out_group]
    assert conv.frozen and "shuffle" in conv.frozen and conv.grid == (8,)
    _check_equivalence(net, 4, tmp_path)
    with pytest.raises(ModelError, match="channel shuffle .* interleaves channels") as err:
        DynamicNet.from_name("shufflenet_v2_x0_5", num_classes=10, input_size=32)
    assert "\n" not in str(err.value)
