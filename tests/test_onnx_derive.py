"""Sub-nets' ONNX graphs derived from one export of the full network (edgedyn.dynamic.onnx_derive)."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from edgedyn import export
from edgedyn.dynamic import DynamicNet, SubnetSpec
from edgedyn.dynamic.onnx_derive import DeriveError, SubnetOnnx, subnet_onnx_files


def _randomize_bn(net: DynamicNet, seed: int = 0) -> DynamicNet:
    """BatchNorm statistics and affine terms off their defaults, so the folded convs carry biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.bn_layers():
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return net


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


def _bare_graph(model: onnx.ModelProto) -> bytes:
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    for node in graph.node:
        del node.metadata_props[:]
    return graph.SerializeToString()


def _specs(net: DynamicNet):
    # the smallest and two non-uniform sub-nets (the full width derives with nothing sliced)
    return {"min": net.min_spec(), "random1": net.random_spec(seed=11), "random2": net.random_spec(seed=12, floor_p=0.3)}


# resnet20 and the fixture (depthwise and grouped-by-concat convs, squeeze-excite, hardswish)
# run by default; the torchvision models take 1-2 minutes each on a 2-core VM (-m slow)
MODELS = [pytest.param("resnet20", 32, id="resnet20"),
          pytest.param("tests/fixtures/my_net.py:build", 32, id="my_net"),
          pytest.param("mobilenet_v2", 32, id="mobilenet_v2", marks=pytest.mark.slow),
          pytest.param("vgg11_bn", 32, id="vgg11_bn", marks=pytest.mark.slow),
          pytest.param("resnet18", 64, id="resnet18", marks=pytest.mark.slow)]


@pytest.mark.parametrize("model,size", MODELS)
def test_derived_graph_equals_the_sub_nets_own_export(model, size, tmp_path):
    net = _randomize_bn(DynamicNet.from_name(model, num_classes=10, input_size=size))
    example = torch.zeros(1, 3, size, size)
    derived = SubnetOnnx.export(net, example)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    specs = _specs(net)
    assert len(set(specs.values())) == len(specs)
    jobs = [(net.extract(s), example, tmp_path / f"{n}.onnx") for n, s in specs.items()]
    workers = 1 if ".py:" in model else 2  # a model loaded from a file does not unpickle in a worker
    exported = [onnx.load(str(p)) for p in export.export_many(jobs, workers=workers)]
    for (name, spec), reference in zip(specs.items(), exported):
        model_d = derived.derive(spec, check=True)
        assert [n.op_type for n in model_d.graph.node] == [n.op_type for n in reference.graph.node], name
        # the same graph, byte for byte, but for the exporter's notes on each node (its trace's text)
        assert _bare_graph(model_d) == _bare_graph(reference), name
        got, want = _run(model_d, x), _run(reference, x)
        assert np.abs(want).max() > 1e-3  # a real output, not zeros
        assert np.abs(got - want).max() <= 1e-5, f"{model} {name} {spec}"
        shapes = {t.name: tuple(t.dims) for t in model_d.graph.initializer}
        assert shapes == {t.name: tuple(t.dims) for t in reference.graph.initializer}, name


def test_derived_mobilenet_v2_computes_what_its_extracted_sub_nets_compute():
    """The default run's torchvision check (depthwise convs, ReLU6 as Clip): against torch, no export per sub-net."""
    net = _randomize_bn(DynamicNet.from_name("mobilenet_v2", num_classes=10, input_size=32))
    derived = SubnetOnnx.export(net, torch.zeros(1, 3, 32, 32))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for name, spec in _specs(net).items():
        with torch.no_grad():
            want = net.extract(spec)(torch.from_numpy(x)).numpy()
        got = _run(derived.derive(spec, check=True), x)
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), name


def test_grouped_convs_get_their_group_count_and_value_info_the_widths():
    net = DynamicNet.from_name("tests/fixtures/my_net.py:build", num_classes=10, input_size=32)
    derived = SubnetOnnx.export(net, torch.zeros(1, 3, 32, 32))
    spec = net.min_spec()
    model = derived.derive(spec, check=True)
    depthwise = net.layers["sep.depthwise.0"]
    width = spec[depthwise.out_group]
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "sep.depthwise.0.weight")
    assert onnx.helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == width < 16
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.value_info}
    assert dims[conv.output[0]][1] == width


def _swap_op(derived: SubnetOnnx, old: str, new: str) -> SubnetOnnx:
    node = next(n for n in derived.skeleton.graph.node if n.op_type == old)
    node.op_type = new
    return derived


@pytest.fixture(scope="module")
def r20():
    net = DynamicNet.from_name("resnet20", num_classes=10, input_size=32)
    return net, SubnetOnnx.export(net, torch.zeros(1, 3, 32, 32))


def test_an_operator_without_a_rule_on_sliced_channels_raises(r20):
    net, derived = r20
    broken = SubnetOnnx(net, derived.derive(net.full_spec()))
    _swap_op(broken, "Relu", "Softmax")
    with pytest.raises(DeriveError, match="Softmax node .* no rule derives it"):
        broken.derive(net.min_spec())
    broken.derive(net.full_spec())  # nothing is sliced: any operator is left as it is


def test_a_conv_fed_other_channels_than_its_layer_expects_raises(r20):
    net, derived = r20
    broken = SubnetOnnx(net, derived.derive(net.full_spec()))
    nodes = broken.skeleton.graph.node
    # layer2.0.conv2 reads 32-channel layer2.0.conv1 output; feed it layer3's 32-channel group instead
    target = next(n for n in nodes if n.op_type == "Conv" and n.input[1] == "layer2.1.conv1.weight")
    source = next(n for n in nodes if n.op_type == "Conv" and n.input[1] == "layer2.0.conv1.weight")
    target.input[0] = source.output[0]
    spec = net.full_spec()
    g_in = net.layers["layer2.1.conv1"].in_group
    g_other = net.layers["layer2.0.conv1"].out_group
    spec = spec.replace(g_in, net.groups[g_in].grid[0]).replace(g_other, net.groups[g_other].grid[1])
    with pytest.raises(DeriveError, match="keeps other channels than layer 'layer2.1.conv1' expects"):
        broken.derive(spec)


def test_a_sub_net_with_its_own_bn_statistics_is_derived_only_to_be_timed(r20):
    net, _ = r20
    other = DynamicNet.from_name("resnet20", num_classes=10, input_size=32)
    spec = other.min_spec()
    other.calibrate_bn(spec, [torch.randn(4, 3, 32, 32)], num_batches=1)
    derived = SubnetOnnx(other, r20[1].derive(net.full_spec()))
    with pytest.raises(DeriveError, match="BatchNorm statistics of its own"):
        derived.derive(spec)
    # to be timed, it is sliced from the full graph as a sub-net with shared statistics is
    timed = SubnetOnnx(other, r20[1].derive(net.full_spec()), timing_only=True).derive(spec, check=True)
    shared = r20[1].derive(net.min_spec())
    assert _bare_graph(timed) == _bare_graph(shared)  # both sliced from the same full graph


def test_underivable_sub_nets_fall_back_to_their_own_export(r20, monkeypatch, tmp_path):
    net, derived = r20
    broken = SubnetOnnx(net, derived.derive(net.full_spec()))
    _swap_op(broken, "Relu", "Softmax")
    monkeypatch.setattr(SubnetOnnx, "export", classmethod(lambda cls, n, e, timing_only=False: broken))
    exported = []

    def fake_export_many(jobs, workers=None, progress=None):
        exported.extend(p for _, _, p in jobs)
        for _, _, p in jobs:
            p.write_bytes(b"exported")
        return [p for _, _, p in jobs]

    monkeypatch.setattr(export, "export_many", fake_export_many)
    specs = [net.full_spec(), net.min_spec()]
    lines = []
    paths = subnet_onnx_files(net, specs, torch.zeros(1, 3, 32, 32), [tmp_path / "a.onnx", tmp_path / "b.onnx"],
                              log=lines.append)
    assert paths == [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    assert exported == [tmp_path / "b.onnx"]  # the full width derives (nothing sliced); the other does not
    assert onnx.load(str(paths[0])).graph.node and paths[1].read_bytes() == b"exported"
    assert len(lines) == 1 and "1 of 2 sub-nets exported one by one" in lines[0] and "Softmax" in lines[0]


def test_profiler_builds_its_sub_nets_from_one_export(monkeypatch, tmp_path):
    from edgedyn.backends.onnxruntime import OnnxRuntimeBackend
    from edgedyn.profile.profiler import ProfileConfig, Profiler
    from test_profile import FakeRunner, fake_ms

    calls = {"export": 0, "many": 0}
    real_export = export.export_proto

    def counting_export(*a, **k):
        calls["export"] += 1
        return real_export(*a, **k)

    def no_export_many(*a, **k):
        calls["many"] += 1
        raise AssertionError("a sub-net was exported on its own")

    monkeypatch.setattr(export, "export_proto", counting_export)
    monkeypatch.setattr(export, "export_many", no_export_many)
    seen: list[tuple[int, ...]] = []

    class Ort(OnnxRuntimeBackend):
        def block_runner(self, key, workdir=None):
            return FakeRunner(fake_ms(key))

        def overhead_runner(self):
            return FakeRunner(0.01)

        def from_onnx(self, onnx_path, example):
            raise AssertionError("a derived sub-net went through a file")

        def from_onnx_model(self, model, example, workdir):
            super().from_onnx_model(model, example, workdir)  # a real session: the model must load
            widths = tuple(t.dims[0] for t in model.graph.initializer if t.name.endswith(".weight"))
            seen.append(widths)
            return FakeRunner(1e-3 * sum(widths))

    monkeypatch.setattr(Profiler, "_backend", lambda self, **kw: Ort(dataclasses.replace(self.options, **kw)))
    cfg = ProfileConfig(model="resnet20", input_size=16, out=tmp_path / "t.json", calibrate=4, validate=3,
                        passes=1, threads=1, probes=0)
    Profiler(cfg, log=lambda m: None, progress=False).run()
    assert calls == {"export": 1, "many": 0}
    assert len(seen) == 7 and len(set(seen)) == 7  # calibration + validation sub-nets, each its own widths


class _FlattenHead(torch.nn.Module):
    """A classifier on a flattened 4x4 map (a Linear whose inputs are channels x positions)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, 2, 1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16 * 16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_a_flattened_map_feeds_the_linear_layer_its_channels_positions():
    example = torch.zeros(1, 3, 8, 8)
    net = _randomize_bn(DynamicNet(_FlattenHead(), example))
    assert net.layers["fc"].expand == 16
    derived = SubnetOnnx.export(net, example)
    spec = net.min_spec()
    model = derived.derive(spec, check=True)
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    target = next(t for t in model.graph.initializer if t.name == reshape.input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [1, spec[0] * 16]  # [1, 256] in the full graph
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net.extract(spec)(torch.from_numpy(x)).numpy()
    assert np.abs(_run(model, x) - want).max() <= 1e-4


class _TwoPreActivations(torch.nn.Module):
    """DenseNet's shape: BatchNorms after concatenations of different widths, untrained (their
    weights all ones, which the exporter may store once for both)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.norm1 = torch.nn.BatchNorm2d(24)
        self.c = torch.nn.Conv2d(24, 8, 1)
        self.norm2 = torch.nn.BatchNorm2d(24)
        self.fc = torch.nn.Linear(24, 5)

    def forward(self, x):
        a = self.a(x)
        x = torch.cat([a, self.b(a)], 1)
        y = torch.cat([a, self.c(torch.relu(self.norm1(x)))], 1)
        return self.fc(torch.relu(self.norm2(y)).mean((2, 3)))


def test_batchnorms_sharing_one_constant_are_sliced_each_their_own_way():
    example = torch.zeros(1, 3, 8, 8)
    net = DynamicNet(_TwoPreActivations().eval(), example)  # untrained: every BN weight 1, bias 0
    derived = SubnetOnnx.export(net, example)
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    full, small = list(net.full_spec().widths), net.min_spec().widths
    g = net.layers["c"].out_group
    full[g] = small[g]  # norm1 reads its input unsliced, norm2 sliced: each its own constant
    for spec in [SubnetSpec(tuple(full))] + [net.random_spec(seed) for seed in range(4)]:
        with torch.no_grad():
            want = net.extract(spec)(torch.from_numpy(x)).numpy()
        assert np.abs(_run(derived.derive(spec, check=True), x) - want).max() <= 1e-4
