"""Refuse before destroying (issue 23), for ``search`` and ``profile``.

- ``search`` into a folder that holds an earlier run refuses (one line) unless ``--resume``
  or ``--overwrite``; ``subnets.json`` never records ``overwrite``;
- a search holds an exclusive lock on its run directory, a profile on its table (``--resume``
  and ``--merge`` included): a second writer is refused at once, naming the holder's pid;
- ``profile --out`` over a file that is not a latency table refuses unless ``--overwrite``;
- a profile resumed with other settings than its partial's refuses, naming the setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import test_profile
from click.testing import CliRunner
from test_profile import cfg
from test_search import MockLatency, small_config

from edgedyn.cli import cli
from edgedyn.errors import EdgedynError
from edgedyn.locks import LockedError, exclusive_lock
from edgedyn.profile.profiler import Profiler
from edgedyn.search import run_search

ROOT = Path(__file__).resolve().parents[1]
fake = test_profile.fake  # the fixture: the profiler with a deterministic backend
QUIET = {"log": lambda m: None, "progress": False}


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    out = res.output.strip()
    assert "Traceback" not in res.output and len(out.splitlines()) == 1, res.output
    assert out.startswith("error: ")
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _earlier_run(folder: Path) -> Path:
    """A run directory an interrupted search left: its checkpoint and its log."""
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    (folder / "search.log").write_text("an earlier run's log\n")
    return folder


# -- 1. a search into an existing run directory ---------------------------------------------
def test_search_into_an_earlier_run_refuses_and_touches_nothing(tmp_path):
    run = _earlier_run(tmp_path / "run")
    before = _files(run)
    with pytest.raises(EdgedynError, match=r"earlier search run.*checkpoint\.pt.*--resume.*--overwrite") as info:
        run_search(small_config(run), MockLatency())
    assert "\n" not in str(info.value) and str(run) in str(info.value)
    assert _files(run) == before
    with pytest.raises(EdgedynError, match="--resume or --overwrite, not both"):
        run_search(small_config(run, resume=True, overwrite=True), MockLatency())
    assert _files(run) == before


def test_search_into_a_finished_run_refuses_for_each_output(tmp_path):
    for name in ("subnets.json", "weights.pt", "search.log", "checkpoint.pt"):
        run = tmp_path / name.replace(".", "_")
        run.mkdir()
        (run / name).write_text("kept")
        with pytest.raises(EdgedynError, match=name.replace(".", r"\.")):
            run_search(small_config(run), MockLatency())
        assert _files(run) == {name: b"kept"}


def test_cli_search_into_an_earlier_run_is_one_line(tmp_path):
    run = _earlier_run(tmp_path / "run")
    before = _files(run)
    args = ["search", "--data", "synthetic", "--data-limit", "64", "--cost", "flops", "--out", str(run)]
    out = _one_line_error(CliRunner().invoke(cli, args))
    assert "--resume" in out and "--overwrite" in out
    out = _one_line_error(CliRunner().invoke(cli, [*args, "--resume", "--overwrite"]))
    assert "not both" in out
    assert _files(run) == before


def test_search_overwrite_replaces_an_earlier_run_and_records_nothing_new(tmp_path):
    run = _earlier_run(tmp_path / "run")
    config = small_config(run, method="usnet", budgets="0.7,1.0", pretrain_epochs=0, train_epochs=0, overwrite=True)
    run_search(config, MockLatency())
    doc = json.loads((run / "subnets.json").read_text())
    assert "overwrite" not in doc["config"] and doc["config"]["resume"] is False
    assert "an earlier run's log" not in (run / "search.log").read_text()  # a fresh log
    assert "overwrite" not in config.identity() and "overwrite" not in config.to_dict()


# -- 2. locks --------------------------------------------------------------------------------
def test_a_second_search_into_a_locked_run_directory_is_refused_at_once(tmp_path):
    run = tmp_path / "run"
    with exclusive_lock(run, "search run directory"), \
            pytest.raises(LockedError, match=rf"pid {os.getpid()}\b") as info:  # the lock: a search running there
        run_search(small_config(run, resume=True), MockLatency())
    assert "\n" not in str(info.value) and str(run) in str(info.value)
    assert not run.exists()  # nothing loaded, nothing written


def test_profile_holds_its_table_lock_while_it_runs(fake, tmp_path):
    seen: list[str] = []
    real = Profiler._blocks

    def blocks(self, table, whole):
        with pytest.raises(LockedError) as info, exclusive_lock(tmp_path / "t.json", "latency table"):
            pass  # a second writer of the same table, mid-run
        seen.append(str(info.value))
        return real(self, table, whole)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Profiler, "_blocks", blocks)
        Profiler(cfg(tmp_path, validate=0, threads=1), **QUIET).run()
    assert len(seen) == 1 and f"pid {os.getpid()}" in seen[0]
    with exclusive_lock(tmp_path / "t.json", "latency table"):  # released at the end
        pass


def test_two_concurrent_profile_resumes_the_second_is_refused_and_the_table_whole(fake, tmp_path):
    """The first ``profile --resume`` holds the table (here: this process, through the lock a
    profile takes); a second, a real ``edgedyn profile --resume`` process, is refused at once in
    one line naming the holder's pid, and neither the table nor the partial changes."""
    table = tmp_path / "t.json"
    Profiler(cfg(tmp_path, validate=0, threads=1), **QUIET).run()
    fake.fail_after = fake.block_calls = 0  # the next profile stops at its first block: a partial
    with pytest.raises(EdgedynError, match="--resume"):
        Profiler(cfg(tmp_path, validate=0, threads=1, out=tmp_path / "u.json"), **QUIET).run()
    (tmp_path / "u.json.partial.json").rename(tmp_path / "t.json.partial.json")
    before = _files(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "edgedyn.cli", "profile", "--model", "resnet20", "--input-size", "16",
            "--threads", "1", "--calibrate", "4", "--passes", "1", "--quiet", "--out", str(table)]
    with exclusive_lock(table, "latency table"):
        proc = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"pid {os.getpid()}" in lines[0] and str(table) in lines[0]
    assert _files(tmp_path) == before
    json.loads(table.read_text())  # still a whole table


def test_profile_merge_takes_the_table_lock_too(fake, tmp_path):
    table = tmp_path / "t.json"
    Profiler(cfg(tmp_path, validate=0, threads=1), **QUIET).run()
    before = table.read_bytes()
    fake.block_calls = 0
    with exclusive_lock(table, "latency table"), pytest.raises(LockedError, match=rf"pid {os.getpid()}\b"):
        Profiler(cfg(tmp_path, validate=0, threads=1, merge=True), **QUIET).run()
    assert table.read_bytes() == before and fake.block_calls == 0


# -- 3. profile --out over a file that is not a latency table ---------------------------------
FOREIGN = {
    "subnets.json": json.dumps({"schema": "edgedyn.search_result/1", "subnets": []}),
    "manifest.json": json.dumps({"schema": "edgedyn.bundle/1", "subnets": []}),
    "notes.txt": "not JSON at all",
    "plain.json": json.dumps({"entries": {}}),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_profile_out_over_a_foreign_file_refuses_unless_overwrite(fake, tmp_path, name):
    target = tmp_path / name
    target.write_text(FOREIGN[name])
    args = ["profile", "--model", "resnet20", "--input-size", "16", "--threads", "1", "--calibrate", "4",
            "--passes", "1", "--quiet", "--out", str(target)]
    out = _one_line_error(CliRunner().invoke(cli, args))
    assert str(target) in out and "--overwrite" in out
    assert target.read_text() == FOREIGN[name] and fake.block_calls == 0
    for extra in (["--resume"], ["--merge"]):
        _one_line_error(CliRunner().invoke(cli, [*args, *extra]))
        assert target.read_text() == FOREIGN[name] and fake.block_calls == 0
    res = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads(target.read_text())["schema"].startswith("edgedyn.latency_table/")


# -- 4. resuming a profile with other settings ------------------------------------------------
@pytest.mark.parametrize("setting, first, then", [
    ("input_size", 32, 16), ("batch", 1, 2), ("precision", "fp32", "fp16"), ("threads", 1, 2),
    ("channel_groups", 8, 4), ("backend", "onnxruntime", "torch"), ("model", "resnet20", "resnet18"),
])
def test_resume_with_other_settings_refuses_naming_the_setting(fake, tmp_path, setting, first, then):
    start = {"input_size": 32, "threads": 1, "validate": 0, setting: first}
    fake.fail_after = 30  # interrupted early: a partial with some timings
    with pytest.raises(EdgedynError, match="--resume"):
        Profiler(cfg(tmp_path, **start), **QUIET).run()
    partial = tmp_path / "t.json.partial.json"
    before = partial.read_bytes()
    fake.fail_after, fake.block_calls = None, 0
    with pytest.raises(EdgedynError) as info:
        Profiler(cfg(tmp_path, **{**start, setting: then, "resume": True}), **QUIET).run()
    msg = str(info.value)
    flag = "--" + setting.replace("_", "-")
    assert f"{flag} {first}" in msg and str(then) in msg and str(partial) in msg and "\n" not in msg
    assert fake.block_calls == 0 and partial.read_bytes() == before and not (tmp_path / "t.json").exists()
    resumed = Profiler(cfg(tmp_path, **start, resume=True), **QUIET).run()  # the same settings resume
    assert resumed.entries and not partial.exists()


def test_resume_with_the_model_default_spelled_out_is_the_same_setting(fake, tmp_path):
    fake.fail_after = 30
    with pytest.raises(EdgedynError, match="--resume"):
        Profiler(replace(cfg(tmp_path, threads=1, validate=0), input_size=None), **QUIET).run()
    fake.fail_after = None
    Profiler(cfg(tmp_path, threads=1, validate=0, input_size=32, resume=True), **QUIET).run()
    assert (tmp_path / "t.json").is_file()
