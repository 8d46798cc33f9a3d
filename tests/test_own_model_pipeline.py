"""A model of the user's own (``tests/fixtures/my_net.py:build``) through inspect, profile,
search with the table, deploy and run from the command line, and a changed factory file
refused at deploy (issue 22)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgedyn.bundle import Manifest
from edgedyn.cli import cli
from edgedyn.errors import ArtifactError
from edgedyn.profile import LatencyTable

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "my_net.py"


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_own_model_profiles_searches_deploys_serves_and_a_changed_file_is_refused(tmp_path):
    torch.set_num_threads(1)
    factory = tmp_path / "my_net.py"
    shutil.copy(FIXTURE, factory)
    ref = f"{factory}:build"
    table, run, bundle = tmp_path / "table.json", tmp_path / "run", tmp_path / "bundle"
    assert "branches" in _ok(["inspect", "--model", ref, "--input-size", "32"])
    # a tiny profile: one pass, every 4th width timed, two calibration sub-nets, one thread
    _ok(["profile", "--model", ref, "--input-size", "32", "--threads", "1", "--passes", "1", "--subsample", "4",
         "--calibrate", "2", "--out", str(table), "--quiet"])
    recorded = json.loads(table.read_text())
    assert any(k.startswith("op=concat|") for k in recorded["entries"])
    assert any(k.startswith("op=scale|") for k in recorded["entries"])
    sha = hashlib.sha256(factory.read_bytes()).hexdigest()
    [cal] = recorded["calibration"].values()
    assert cal["model_ref"] == {"ref": ref, "source_sha256": sha}
    # a one-pass table's own error sets no margin worth testing here (it can reach 20 %)
    _ok(["search", "--model", ref, "--budget-table", str(table), "--data", "synthetic", "--data-limit", "200",
         "--input-size", "32", "--budgets", "0.5,1.0", "--pretrain-epochs", "1", "--train-epochs", "1",
         "--batches-per-epoch", "2", "--budget-margin", "0.02", "--out", str(run)])
    assert (run / "subnets.json").is_file() and (run / "weights.pt").is_file()
    summary = json.loads((run / "subnets.json").read_text())
    assert summary["cost"]["name"] == "latency" and summary["cost"]["unit"] == "ms"  # steered by the table
    _ok(["deploy", "--run", str(run), "--out", str(bundle), "--threads", "1"])
    assert Manifest.load(bundle).model["ref"] == {"ref": ref, "source_sha256": sha}
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["model"]["ref"] = {"ref": 1}
    with pytest.raises(ArtifactError, match="field 'model.ref'"):
        Manifest.from_dict(doc, bundle / "manifest.json")
    del doc["model"]["ref"]  # a bundle written before the reference was recorded
    assert "ref" not in Manifest.from_dict(doc, bundle / "manifest.json").model
    assert "all" in _ok(["run", "--bundle", str(bundle), "--policy", "fixed", "--requests", "20"])
    factory.write_text(factory.read_text() + "\n# edited after the search\n")
    res = CliRunner().invoke(cli, ["deploy", "--run", str(run), "--out", str(tmp_path / "b2"), "--threads", "1"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and str(factory) in line and "changed" in line


def test_model_ref_is_optional_in_tables_and_manifests_and_checked_when_present(tmp_path):
    """Tables and bundles written before the reference was recorded still load; a malformed one
    is refused in one line naming the file and the field."""
    from edgedyn.dynamic import DynamicNet
    from edgedyn.profile.calibration import Calibration

    net = DynamicNet.from_name(f"{FIXTURE}:build", input_size=32)
    table = LatencyTable(device={"kind": "cpu"}, backend={"name": "onnxruntime"})
    table.calibration[net.arch_signature()] = Calibration("my_net@32", {"block_sum": 1.0}, 0.0, 2,
                                                          model_ref=net.model_ref.to_dict())
    path = table.save(tmp_path / "t.json")
    assert LatencyTable.load(path).calibration[net.arch_signature()].model_ref == net.model_ref.to_dict()
    obj = json.loads(path.read_text())
    del obj["calibration"][net.arch_signature()]["model_ref"]  # an older table
    path.write_text(json.dumps(obj))
    assert LatencyTable.load(path).calibration[net.arch_signature()].model_ref is None
    obj["calibration"][net.arch_signature()]["model_ref"] = {"ref": 3}
    path.write_text(json.dumps(obj))
    with pytest.raises(ArtifactError, match=f"{path}: calibration.*field 'model_ref'") as err:
        LatencyTable.load(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("command", ["inspect", "profile", "search"])  # deploy rebuilds its run's model
def test_every_model_option_says_what_it_takes(command):
    out = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
    assert "torchvision classification model" in out and "path/to/file.py:function" in out
