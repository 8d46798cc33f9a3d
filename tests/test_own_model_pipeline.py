"""A model of the user's own (``tests/fixtures/my_net.py:build``) through search, deploy and
run from the command line, and a changed factory file refused at deploy (issue 22)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from click.testing import CliRunner

from edgedyn.cli import cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "my_net.py"


def test_own_model_searches_deploys_serves_and_a_changed_file_is_refused(tmp_path):
    torch.set_num_threads(1)
    factory = tmp_path / "my_net.py"
    shutil.copy(FIXTURE, factory)
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    res = CliRunner().invoke(cli, [
        "search", "--model", f"{factory}:build", "--cost", "flops", "--data", "synthetic", "--data-limit", "200",
        "--input-size", "32", "--budgets", "0.5,1.0", "--pretrain-epochs", "1", "--train-epochs", "1",
        "--batches-per-epoch", "2", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "subnets.json").is_file() and (run / "weights.pt").is_file()
    res = CliRunner().invoke(cli, ["deploy", "--run", str(run), "--out", str(bundle), "--threads", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["run", "--bundle", str(bundle), "--policy", "fixed", "--requests", "20"])
    assert res.exit_code == 0, res.output
    assert "all" in res.output
    factory.write_text(factory.read_text() + "\n# edited after the search\n")
    res = CliRunner().invoke(cli, ["deploy", "--run", str(run), "--out", str(tmp_path / "b2"), "--threads", "1"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and str(factory) in line and "changed" in line
