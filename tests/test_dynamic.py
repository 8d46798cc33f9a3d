import numpy as np
import pytest
import torch
from torch import nn

from edgedyn.dynamic import DynamicNet, SubnetSpec
from edgedyn.errors import ModelError, SpecError

from helpers import settle_bn

FAST_MODELS = ["resnet20", "resnet56", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11_bn"]


@pytest.fixture(scope="module")
def nets():
    cache = {}

    def get(name, size=32):
        if (name, size) not in cache:
            cache[(name, size)] = settle_bn(DynamicNet.from_name(name, num_classes=10, input_size=size), size)
        return cache[(name, size)]

    return get


def test_residual_coupling_resnet18(nets):
    net = nets("resnet18")
    assert len(net.groups) == 12
    stem = net.groups[0]
    layers = {m.layer for m in stem.members}
    # the stem conv and every residual-branch output of stage 1 share one channel set
    assert {"conv1", "bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.0.conv2", "layer1.1.conv2"} <= layers
    assert ("fc", "out") not in {(m.layer, m.side) for g in net.groups for m in g.members}
    assert net.classifier == "fc" and net.layers["fc"].out_group is None


def test_depthwise_coupling_mobilenet(nets):
    net = nets("mobilenet_v2")
    dw = [i for i in net.layers.values() if i.depthwise]
    assert dw, "mobilenet_v2 has depthwise convs"
    for info in dw:
        assert info.in_group == info.out_group is not None


def test_flatten_expansion_vgg(nets):
    net = nets("vgg11_bn")
    fc0 = net.layers["classifier.0"]
    assert fc0.expand == 49 and net.groups[fc0.in_group].channels == 512


def test_slicing_really_computes_less(resnet20):
    net = resnet20
    spec = net.min_spec()
    seen = {}
    conv = net.model.layer3[0].conv1
    h = conv.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].shape[1], out=o.shape[1]))
    try:
        net.set_subnet(spec)
        net(torch.randn(1, 3, 32, 32))
    finally:
        h.remove()
        net.set_subnet(net.full_spec())
    info = net.layers["layer3.0.conv1"]
    assert seen == {"inp": spec[info.in_group], "out": spec[info.out_group]}
    assert seen["out"] < conv.out_channels


@pytest.mark.parametrize("name", FAST_MODELS)
def test_set_subnet_matches_extract(nets, name):
    net = nets(name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # the sampled models get the full 20 specs here; the rest get 20 in the slow sweep
    n_specs = 20 if name in ("resnet20", "mobilenet_v2") else 4
    for seed in range(n_specs):
        spec = net.random_spec(seed)
        net.set_subnet(spec)
        with torch.no_grad():
            a = net(x)
            sub = net.extract(spec)
            b = sub(x)
        assert (a - b).abs().max().item() <= 1e-4, (name, spec)
        assert net.params(spec) == sum(p.numel() for p in sub.parameters())
    net.set_subnet(net.full_spec())


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "resnet18"])
def test_onnx_matches_pytorch_sample(nets, name, tmp_path):
    from edgedyn.export import run_onnxruntime

    net = nets(name)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    spec = net.random_spec(100)  # one non-uniform sub-net per model (test_onnx_derive checks more)
    path = net.export_onnx(spec, tmp_path / "sub.onnx")
    net.set_subnet(spec)
    with torch.no_grad():
        ref = net(x).numpy()
    out = run_onnxruntime(path, x.numpy())
    assert abs(out - ref).max() <= 1e-4
    net.set_subnet(net.full_spec())


@pytest.mark.parametrize("name,dtype", [("resnet20", torch.float32), ("vgg11_bn", torch.float32),
                                        ("mobilenet_v2", torch.float64), ("resnet50", torch.float64)])
def test_permutation_preserves_function(nets, name, dtype):
    # The deep nets run in float64: fp32 re-association of permuted sums alone moves their
    # outputs by ~1e-5 (mobilenet_v2) to ~1e-4 (resnet50; 2.9e-13 in float64), which would
    # make the 1e-5 bound a test of rounding. A wrong permutation changes outputs by O(1).
    net = nets(name).to(dtype)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=dtype)
    net.set_subnet(net.full_spec())
    with torch.no_grad():
        ref = net(x)
    mid = net.uniform_spec(0.5)
    net.set_subnet(mid)
    with torch.no_grad():
        before_mid = net(x)
    gen = torch.Generator().manual_seed(4)
    for g in net.groups:
        net.permute_channels(g.index, torch.randperm(g.channels, generator=gen))
    net.set_subnet(net.full_spec())
    with torch.no_grad():
        assert (net(x) - ref).abs().max().item() <= 1e-5
    net.set_subnet(mid)
    with torch.no_grad():  # a new order changes which channels a sub-net keeps
        assert (net(x) - before_mid).abs().max().item() > 1e-3
    net.set_subnet(net.full_spec())


def test_permutation_rejects_non_permutation(resnet20):
    with pytest.raises(SpecError, match="not a permutation"):
        resnet20.permute_channels(0, [0] * 16)


def test_spec_validation_messages(resnet20):
    net = resnet20
    full = net.full_spec()
    with pytest.raises(SpecError, match="3 widths, model 'resnet20' has 12"):
        net.set_subnet(SubnetSpec((16, 16, 16)))
    with pytest.raises(SpecError, match="group 0 \\(conv1\\): width 18 exceeds the maximum 16"):
        net.check_spec(full.replace(0, 18))
    with pytest.raises(SpecError, match="below the floor 2"):
        net.check_spec(full.replace(0, 1))
    with pytest.raises(SpecError, match="off the channel grid"):
        net.check_spec(full.replace(0, 3))
    assert net.active_spec == full  # a rejected spec changes nothing


def test_spec_helpers(resnet20):
    net = resnet20
    assert net.min_spec().widths == tuple(g.floor for g in net.groups)
    assert net.random_spec(7) == net.random_spec(7)
    assert any(net.random_spec(s) != net.random_spec(7) for s in range(3))
    assert net.macs(net.min_spec()) < net.macs(net.uniform_spec(0.5)) < net.macs(net.full_spec())
    # floor-heavy random specs: floor_p=1 is the smallest sub-net; 0.5 floors about half the groups
    assert net.random_spec(3, floor_p=1.0) == net.min_spec()
    assert net.random_spec(3, floor_p=0.0) == net.random_spec(3)
    floors = [sum(w == g.floor for w, g in zip(net.random_spec(s, floor_p=0.5).widths, net.groups))
              for s in range(40)]
    uniform = [sum(w == g.floor for w, g in zip(net.random_spec(s).widths, net.groups)) for s in range(40)]
    assert 0.4 < np.mean(floors) / len(net.groups) < 0.7 and np.mean(uniform) / len(net.groups) < 0.25
    with pytest.raises(SpecError, match="floor_p"):
        net.random_spec(0, floor_p=1.5)


def test_group_size_and_floor_options():
    net = DynamicNet.from_name("resnet18", num_classes=10, input_size=32, group_size=32, min_groups=2)
    g = net.groups[0]
    assert g.grid == (32, 64) and g.floor == 64
    assert net.groups[-1].grid == tuple(range(32, 513, 32)) and net.groups[-1].floor == 64


def test_resnet18_macs_known_figure():
    net = DynamicNet.from_name("resnet18", num_classes=1000, input_size=224)
    assert round(net.macs(net.full_spec()) / 1e9, 2) == 1.82
    assert net.params(net.full_spec()) == 11_689_512  # torchvision's published count


def test_calibrate_bn_keeps_per_subnet_stats(resnet20):
    net = resnet20
    spec = net.uniform_spec(0.5)
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(3)]
    shared = net.model.bn1.running_mean.clone()
    # the first BN sees conv1's output: its calibrated mean is the average of batch means
    net.set_subnet(spec)
    with torch.no_grad():
        expect = torch.stack([net.model.conv1(b).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert net.calibrate_bn(spec, batches, num_batches=10) == 3
    assert torch.allclose(net.bn_stats[spec]["bn1"][0], expect, atol=1e-5)
    assert torch.equal(net.model.bn1.running_mean, shared)  # shared stats untouched
    x = batches[0][:1]
    net.set_subnet(spec)
    with torch.no_grad():
        a = net(x)
        b = net.extract(spec)(x)
    assert (a - b).abs().max().item() <= 1e-4
    assert torch.allclose(net.extract(spec).bn1.running_mean, expect, atol=1e-5)
    net.bn_stats.clear()
    net.set_subnet(net.full_spec())


def test_save_load_round_trip(tmp_path, resnet20):
    net = resnet20
    spec = net.uniform_spec(0.5)
    net.calibrate_bn(spec, [torch.randn(4, 3, 32, 32)], num_batches=1)
    path = net.save(tmp_path / "w.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["schema"] == "edgedyn.dynamic_weights/1"
    other = DynamicNet.load(path)
    x = torch.randn(1, 3, 32, 32)
    for s in (net.full_spec(), spec):
        net.set_subnet(s)
        other.set_subnet(s)
        with torch.no_grad():
            assert torch.equal(net(x), other(x))
    net.bn_stats.clear()
    net.set_subnet(net.full_spec())


def test_corrupt_weights_file(tmp_path):
    from edgedyn.errors import ArtifactError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="bad.pt: not a readable weights file"):
        DynamicNet.load(bad)
    with pytest.raises(ArtifactError, match="not found"):
        DynamicNet.load(tmp_path / "missing.pt")


def test_refused_layers_name_the_layer():
    """What cannot be sliced nor frozen is refused in one line naming the layer."""
    class Reflect(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    with pytest.raises(ModelError, match="layer 'conv': padding_mode 'reflect'"):
        DynamicNet(Reflect(), torch.zeros(1, 3, 8, 8))


def test_untraceable_model_names_the_layer():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(9, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    with pytest.raises(ModelError, match="layer 'fc' failed"):
        DynamicNet(Bad(), torch.zeros(1, 3, 8, 8))


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'resnet999'"):
        DynamicNet.from_name("resnet999")


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [(n, 32) for n in FAST_MODELS] + [("resnet18", 224), ("mobilenet_v2", 224)])
def test_full_equivalence_sweep_with_onnx(name, size, tmp_path):
    """All supported models, 20 random specs each: set_subnet == extract == ONNX Runtime."""
    from edgedyn.export import run_onnxruntime

    net = settle_bn(DynamicNet.from_name(name, num_classes=10, input_size=size), size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    for seed in range(20):
        spec = net.random_spec(seed)
        net.set_subnet(spec)
        with torch.no_grad():
            a = net(x)
            sub = net.extract(spec)
            b = sub(x)
        path = net.export_onnx(spec, tmp_path / "m.onnx")
        c = run_onnxruntime(path, x.numpy())
        assert (a - b).abs().max().item() <= 1e-4
        assert abs(c - a.numpy()).max() <= 1e-4, (name, spec)
