"""Channel ranking (noise and L1) on depthwise and grouped convs, a concat and a per-channel
parameter (ConvNeXt's layer scale): the noise branch is exact and reordering keeps the function."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgedyn.dynamic import DynamicNet
from edgedyn.search.ranking import NoiseInjection, apply_order, l1_orders


def _cbr(c_in: int, c_out: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class Tiny(nn.Module):
    """Stem, a grouped 3x3 (4 channels per group), a depthwise 3x3, a residual, a two-branch concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.grouped = _cbr(16, 16, 3, groups=4)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.left = _cbr(16, 8)
        self.right = nn.Sequential(_cbr(16, 8), _cbr(8, 12, 3))
        self.head = _cbr(20, 24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.dw(self.grouped(x)))
        x = self.head(torch.cat([self.left(x), self.right(x)], 1))
        return self.fc(x.mean((2, 3)))


class Scaled(nn.Module):
    """A ConvNeXt-like residual: a depthwise conv and a 1x1, scaled per channel (``layer_scale``).

    Kept apart from ``Tiny``: with a per-channel parameter and a concat in one model,
    Torch-Pruning's groups tie the concat's branches wrongly and the concat freezes (a
    dynamic-core limitation, reported separately)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.layer_scale = nn.Parameter(torch.linspace(0.5, 1.5, 16).view(16, 1, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.layer_scale * self.pw(self.dw(x))
        return self.fc(x.mean((2, 3)))


def _net(cls: type = Tiny) -> DynamicNet:
    torch.manual_seed(0)
    return DynamicNet(cls().eval(), torch.zeros(1, 3, 8, 8))


def test_tiny_models_have_the_layer_kinds():
    net = _net()
    assert net.layers["grouped.0"].groups == 4 and net.layers["dw.0"].depthwise
    assert len(net.layers["head.0"].in_parts) == 2
    assert not net.frozen_groups()
    net = _net(Scaled)
    assert net.layers["layer_scale"].kind == "param" and net.layers["dw"].depthwise
    assert not net.frozen_groups()


@pytest.mark.parametrize("layer", ["grouped.0", "dw.0", "head.0", "left.0", "Scaled:dw", "Scaled:pw"])
def test_noise_branch_equals_the_layer_with_noisy_weights(layer):
    """``layer(x; W + a*n) == layer(x; W) + a * layer(x; n)`` at a reduced width, per output channel."""
    net = _net(Scaled) if layer.startswith("Scaled:") else _net()
    layer = layer.removeprefix("Scaled:")
    spec = net.uniform_spec(0.5)
    net.set_subnet(spec)
    mod = dict(net.model.named_modules())[layer]
    info = net.layers[layer]
    with NoiseInjection(net) as noise:
        noise.alphas[info.out_group].data.uniform_(0.5, 1.5)
        mod.train()
        x = torch.randn(2, mod.active_in, 8, 8)
        torch.manual_seed(7)
        y = mod(x)
        w, groups = mod.active_weight()
        torch.manual_seed(7)
        n = torch.randn_like(w) * w.std()
        a = noise.alphas[info.out_group][: mod.active_out].detach().view(-1, 1, 1, 1)
        bias = mod.bias[: mod.active_out] if mod.bias is not None else None
        want = F.conv2d(x, w + a * n, bias, mod.stride, mod.padding, mod.dilation, groups)
    assert y.shape == want.shape
    assert torch.allclose(y, want, atol=1e-5)


@pytest.mark.parametrize("model", [Tiny, Scaled])
@pytest.mark.parametrize("ranking", ["noise", "l1"])
def test_ranking_and_reordering_keep_the_function(ranking, model):
    net = _net(model)
    x = torch.randn(4, 3, 8, 8)
    if ranking == "noise":
        with NoiseInjection(net) as noise:
            net.train()
            opt = torch.optim.SGD(noise.parameters(), lr=0.1)
            for _ in range(3):
                net.set_subnet(net.random_spec(int(torch.randint(0, 100, ()).item())))
                loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            orders = noise.orders()
            assert any(a.detach().abs().sum() > 0 for a in noise.alphas)
    else:
        orders = l1_orders(net)
    assert [len(o) for o in orders] == [g.channels for g in net.groups]
    net.eval()
    net.set_subnet(net.full_spec())
    with torch.no_grad():
        before = net(x)
    assert any(not torch.equal(o, torch.arange(len(o))) for o in orders)  # something moves
    apply_order(net, orders)
    with torch.no_grad():
        after = net(x)
    assert torch.allclose(before, after, atol=1e-4)
