"""Model references (names, file and module factories), their hashes, and loading weights."""

import os
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from edgedyn.dynamic import DynamicNet
from edgedyn.errors import ArtifactError, EdgedynError, ModelError
from edgedyn.models import ModelRef, resolve_model, torchvision_names

from helpers import settle_bn

FIXTURE = Path(__file__).parent / "fixtures" / "my_net.py"
SEVEN = ["resnet20", "resnet56", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11_bn"]

SMALL = textwrap.dedent("""
    from torch import nn

    def build(num_classes=3):
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, num_classes))

    def sized(input_size=16, **kwargs):
        return build(kwargs.get("num_classes", 3))

    def bare():
        return build()

    def raises(num_classes=3):
        raise RuntimeError("no such layer\\nsecond line")

    def not_a_module():
        return {"conv": 1}
""")


@pytest.fixture()
def factory_file(tmp_path):
    path = tmp_path / "user_models.py"
    path.write_text(SMALL)
    return path


def test_every_torchvision_classifier_and_the_seven_names_resolve():
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    assert set(names) == set(torchvision_names()) and "resnext50_32x4d" in names
    for name in SEVEN + names:
        ref = resolve_model(name)
        assert ref.kind == "builtin" and ref.source_sha256 is None and ref.to_dict() == {"ref": name,
                                                                                         "source_sha256": None}
    assert resolve_model("resnet20").default_input_size == 32 and resolve_model("inception_v3").min_input_size == 75


def test_unknown_name_suggests_close_names():
    with pytest.raises(ModelError, match="unknown model 'resnet_18'; did you mean resnet18") as err:
        resolve_model("resnet_18")
    assert "\n" not in str(err.value)


def test_factory_from_file_passes_only_accepted_kwargs(factory_file):
    ref = resolve_model(f"{factory_file}:build")
    assert ref.kind == "file" and ref.source == factory_file.resolve()
    assert ref.default_num_classes == 3 and ref.default_input_size == 224
    assert ref.build(num_classes=7, input_size=16)[-1].out_features == 7  # input_size not accepted: not passed
    assert resolve_model(f"{factory_file}:sized").default_input_size == 16
    assert resolve_model(f"{factory_file}:sized").build(5, 16)[-1].out_features == 5  # through **kwargs
    assert resolve_model(f"{factory_file}:bare").build(5, 16)[-1].out_features == 3
    net = DynamicNet.from_name(f"{factory_file}:build", num_classes=4, input_size=12)
    assert net.num_classes == 4 and net.name == f"{factory_file}:build" and net.input_shape == (1, 3, 12, 12)
    assert net.config()["model_sha256"] == ref.source_sha256


def test_relative_file_reference(monkeypatch):
    monkeypatch.chdir(FIXTURE.parents[2])
    net = DynamicNet.from_name("tests/fixtures/my_net.py:build")
    assert net.name == "tests/fixtures/my_net.py:build" and net.input_shape == (1, 3, 32, 32)
    assert net.num_classes == 10


def test_factory_from_module(tmp_path, monkeypatch):
    pkg = tmp_path / "edgedyn_test_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(SMALL)
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = resolve_model("edgedyn_test_pkg.nets:build")
    assert ref.kind == "module" and ref.source == (pkg / "nets.py").resolve()
    net = DynamicNet.from_name("edgedyn_test_pkg.nets:build", num_classes=2, input_size=10)
    assert net.num_classes == 2 and len(net.groups) == 1


@pytest.mark.parametrize("suffix,message", [
    ("missing.py:build", "file .*missing.py not found"),
    ("{file}:nothing", "user_models.py has no function 'nothing'"),
    ("{file}:raises", "the factory raised RuntimeError: no such layer"),
    ("{file}:not_a_module", "the factory returned dict, not a torch.nn.Module"),
    ("no_such_package_xyz.mod:build", "module 'no_such_package_xyz' not found"),
    ("{file}:", "expected path/to/file.py:function"),
])
def test_bad_references_fail_in_one_line(factory_file, tmp_path, suffix, message):
    ref = suffix.format(file=factory_file) if "{file}" in suffix else (
        str(tmp_path / suffix) if suffix.endswith(".py:build") else suffix)
    with pytest.raises(ModelError, match=message) as err:
        DynamicNet.from_name(ref, input_size=8)
    assert "\n" not in str(err.value)


def test_changed_factory_file_is_refused(factory_file, tmp_path):
    ref = resolve_model(f"{factory_file}:build")
    recorded = ref.to_dict()
    assert ModelRef.from_dict(recorded, "subnets.json").source_sha256 == ref.source_sha256
    net = DynamicNet.from_name(ref, input_size=8)
    path = net.save(tmp_path / "w.pt")
    assert torch.equal(DynamicNet.load(path).model[0].weight, net.model[0].weight)
    factory_file.write_text(SMALL + "\n# edited\n")
    with pytest.raises(ArtifactError, match=f"subnets.json: model file {factory_file} changed since") as err:
        ModelRef.from_dict(recorded, "subnets.json")
    assert "\n" not in str(err.value)
    with pytest.raises(ArtifactError, match=f"w.pt: model file {factory_file} changed since"):
        DynamicNet.load(path)


def test_user_model_slices_extracts_and_exports(tmp_path):
    """tests/fixtures/my_net.py: residual, depthwise-separable + SE, two-branch concat, hardswish."""
    from edgedyn.export import run_onnxruntime

    net = settle_bn(DynamicNet.from_name(f"{FIXTURE}:build"), 32)
    assert not net.frozen_groups()
    assert len(net.layers["head.0"].in_parts) == 2  # the concat: a prefix of each branch
    assert net.layers["sep.depthwise.0"].depthwise
    assert net.macs(net.min_spec()) < net.macs(net.full_spec()) / 4
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for i, spec in enumerate([net.random_spec(0), net.uniform_spec(0.5), net.min_spec()]):
        net.set_subnet(spec)
        with torch.no_grad():
            a = net(x)
            b = net.extract(spec)(x)
        assert (a - b).abs().max().item() <= 1e-4
        path = net.export_onnx(spec, tmp_path / f"{i}.onnx", batch=2)
        assert abs(run_onnxruntime(path, x.numpy()) - a.numpy()).max() <= 1e-4


# -- weights --------------------------------------------------------------------------------
@pytest.fixture()
def small_net(factory_file):
    return DynamicNet.from_name(f"{factory_file}:build", input_size=8)


def _state(net):
    torch.manual_seed(3)
    return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in net.model.state_dict().items()}


@pytest.mark.parametrize("shape", ["bare", "state_dict", "model", "ddp"])
def test_checkpoint_shapes_load(small_net, tmp_path, shape):
    state = _state(small_net)
    blob = {"bare": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state, "opt": {}},
            "ddp": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}[shape]
    torch.save(blob, tmp_path / "ck.pt")
    small_net.load_checkpoint(tmp_path / "ck.pt")
    assert torch.equal(small_net.model[0].weight, state["0.weight"])


def test_edgedyn_weights_file_still_loads(small_net, tmp_path):
    state = _state(small_net)
    small_net.model.load_state_dict(state)
    path = small_net.save(tmp_path / "w.pt")
    other = DynamicNet.from_name(small_net.model_ref, input_size=8)
    other.load_checkpoint(path)
    assert torch.equal(other.model[0].weight, state["0.weight"])


def test_bad_checkpoints_fail_in_one_line(small_net, tmp_path):
    state = _state(small_net)
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "1.running_var"}, "missing keys: 1.running_var"),
        "unexpected": ({**state, "extra.weight": torch.zeros(1)}, "unexpected keys: extra.weight"),
        "shape": ({**state, "0.weight": torch.zeros(2, 2)}, "tensor '0.weight' has shape \\[2, 2\\]"),
        "nan": ({**state, "5.bias": torch.tensor([0.0, float("nan"), 1.0])}, "tensor '5.bias' holds non-finite"),
        "empty": ({"epoch": 3}, "no state dict found"),
    }
    for name, (blob, message) in cases.items():
        torch.save(blob, tmp_path / f"{name}.pt")
        with pytest.raises(ArtifactError, match=f"{name}.pt: {message}") as err:
            small_net.load_checkpoint(tmp_path / f"{name}.pt")
        assert "\n" not in str(err.value)


class _Code:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_with_code_is_refused(small_net, tmp_path):
    torch.save({"state_dict": _state(small_net), "hook": _Code()}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="evil.pt: refused, the pickle holds Python code or objects") as err:
        small_net.load_checkpoint(tmp_path / "evil.pt")
    assert "getcwd" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, EdgedynError)


def test_nn_module_classifier_kwargs_not_passed_to_builtins():
    net = DynamicNet.from_name("squeezenet1_1", num_classes=4, input_size=32)
    assert net.num_classes == 4 and isinstance(net.model, nn.Module)


FROZEN = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.LayerNorm([8, 6, 6])
            self.mid = nn.Conv2d(8, 16, 3, padding=1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(self.mid(self.norm(self.conv(x))).mean((2, 3)))

    def build(input_size=6):
        return Net()
""")


def test_inspect_says_what_is_sliced_and_what_is_frozen(tmp_path):
    from click.testing import CliRunner

    from edgedyn.cli import cli
    from edgedyn.inspect import describe

    (tmp_path / "frozen_net.py").write_text(FROZEN)
    ref = f"{tmp_path / 'frozen_net.py'}:build"
    desc = describe(ref, channel_groups=4)
    status = {x["name"]: (x["status"], x["why"]) for x in desc["layers"]}
    assert status["norm"][0] == "frozen" and "LayerNorm over [8, 6, 6]" in status["norm"][1]
    assert status["conv"][0] == "frozen" and status["mid"][0] == "partly frozen"
    assert status["fc"][0] == "sliced" and desc["counts"]["frozen"] == 2
    assert [g["frozen"] is not None for g in desc["groups"]] == [True, False]
    result = CliRunner().invoke(cli, ["inspect", "--model", ref])
    assert result.exit_code == 0 and "FROZEN: layer 'norm'" in result.output
    result = CliRunner().invoke(cli, ["inspect", "--model", f"{tmp_path / 'frozen_net.py'}:nothing"])
    assert result.exit_code == 2 and "has no function 'nothing'" in result.output


def _sweep_names():
    import re

    return [n for n in torchvision_names() if not re.match(r"^(vit_|swin_|maxvit_)", n)]


@pytest.mark.slow
@pytest.mark.parametrize("name", _sweep_names())
def test_every_torchvision_cnn_sweep(name):
    """set_subnet, extract and ONNX Runtime agree (1e-4) on a random and a uniform spec at 64x64;
    ShuffleNet V2 is the one refusal (its channel shuffle), in one line that says so."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from model_coverage import check_model

    record = check_model(name, size=64)
    if name.startswith("shufflenet"):
        assert record["status"] == "refused" and "channel shuffle" in record["why"]
        return
    assert record["status"] in ("works", "frozen layers"), record
    assert record["min_macs_ratio"] < 0.5, record  # something really is sliced


def test_factory_file_imports_its_neighbours_and_import_errors_are_one_line(tmp_path):
    (tmp_path / "blocks_xyz.py").write_text("from torch import nn\n\ndef stem():\n    return nn.Conv2d(3, 4, 3)\n")
    (tmp_path / "net_xyz.py").write_text(textwrap.dedent("""
        from torch import nn
        from blocks_xyz import stem

        def build(num_classes=2):
            return nn.Sequential(stem(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    """))
    assert DynamicNet.from_name(f"{tmp_path / 'net_xyz.py'}:build", input_size=8).num_classes == 2
    (tmp_path / "broken_xyz.py").write_text("import no_such_module_xyz\n")
    with pytest.raises(ModelError, match="importing .*broken_xyz.py raised ModuleNotFoundError") as err:
        resolve_model(f"{tmp_path / 'broken_xyz.py'}:build")
    assert "\n" not in str(err.value)
