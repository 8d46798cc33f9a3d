"""Issue 12, part B: no user state destroyed, no tracebacks, progress off a terminal.

- a fresh ``profile`` over an existing ``<out>.partial.json`` refuses (``--resume`` / ``--overwrite``);
- stale ``edgedyn-<kind>-<pid>-*`` folders of killed runs are removed, never a live one's;
- Ctrl-C while workers export: no worker traceback; the CLI prints one line and exits 130;
- ``deploy`` checks ``--out`` before any work; ``run --json`` checks its path before serving;
- long phases print a plain line every ``EVERY_S`` seconds off a terminal.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import test_profile
from click.testing import CliRunner
from test_profile import FakeBackend, cfg

import edgedyn.progress as progress_mod
from edgedyn.cli import cli
from edgedyn.errors import EdgedynError
from edgedyn.profile.profiler import Profiler

ROOT = Path(__file__).resolve().parents[1]
fake = test_profile.fake  # the fixture: the profiler with a deterministic backend (no timing noise)
QUIET = {"log": lambda m: None, "progress": False}


def _one_line_error(res) -> str:
    out = res.output.strip()
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(out.splitlines()) == 1, res.output
    assert out.startswith("error: ")
    return out


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- 1. a fresh profile never overwrites an interrupted one's progress -------------------
def _partial(tmp_path: Path) -> Path:
    partial = tmp_path / "t.json.partial.json"
    partial.write_text(json.dumps({"schema": "edgedyn.profile_partial/1", "entries": 682}))
    return partial


def test_fresh_profile_refuses_an_existing_partial(fake, tmp_path):
    partial = _partial(tmp_path)
    before = partial.read_bytes()
    with pytest.raises(EdgedynError, match=r"t\.json\.partial\.json.*--resume.*--overwrite") as info:
        Profiler(cfg(tmp_path, validate=0), **QUIET).run()
    assert "\n" not in str(info.value)
    assert partial.read_bytes() == before and fake.block_calls == 0  # nothing measured, nothing touched
    with pytest.raises(EdgedynError, match="--resume or --overwrite, not both"):
        Profiler(cfg(tmp_path, validate=0, resume=True, overwrite=True), **QUIET).run()
    assert partial.read_bytes() == before
    table = Profiler(cfg(tmp_path, validate=0, overwrite=True), **QUIET).run()
    assert not partial.exists() and (tmp_path / "t.json").is_file() and table.entries


def test_cli_profile_refuses_a_partial_and_a_path_under_a_file(fake, tmp_path):
    partial = _partial(tmp_path)
    before = partial.read_bytes()
    args = ["profile", "--model", "resnet20", "--input-size", "16", "--threads", "1", "--calibrate", "4",
            "--passes", "1", "--quiet", "--out", str(tmp_path / "t.json")]
    out = _one_line_error(CliRunner().invoke(cli, args))
    assert "--resume" in out and "--overwrite" in out
    assert partial.read_bytes() == before and fake.block_calls == 0
    res = CliRunner().invoke(cli, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert not partial.exists() and (tmp_path / "t.json").is_file()
    (tmp_path / "a").write_text("a file")
    fake.block_calls = 0
    out = _one_line_error(CliRunner().invoke(cli, args[:-1] + [str(tmp_path / "a" / "t.json")]))
    assert "is a file" in out and fake.block_calls == 0


# -- 2. stale temporary folders ---------------------------------------------------------
def test_stale_tempdirs_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    from edgedyn.profile.profiler import owned_tempdir, remove_stale_tempdirs

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        names = {"stale": f"edgedyn-subnets-{dead}-abcd1234", "stale2": f"edgedyn-blocks-{dead}-x",
                 "mine": f"edgedyn-threads-{os.getpid()}-y", "live": f"edgedyn-subnets-{live.pid}-z",
                 "legacy": "edgedyn-subnets-k2j4h5g6", "other": f"edgedyn-nchwc-{dead}-q",
                 "unrelated": f"cache-{dead}-w"}
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.onnx").write_bytes(b"x")
        removed = remove_stale_tempdirs(tmp_path)
        assert sorted(p.name for p in removed) == sorted([names["stale"], names["stale2"]])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            v for k, v in names.items() if k not in ("stale", "stale2"))
    finally:
        live.kill()
        live.wait()
    with owned_tempdir("subnets") as d:
        assert Path(d).name.startswith(f"edgedyn-subnets-{os.getpid()}-")


def test_a_sigkilled_runs_folder_is_removed_by_the_next_profile(fake, tmp_path, monkeypatch):
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    # a run killed while it built its calibration sub-nets (SIGKILL: no clean-up of its own)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from edgedyn.profile.profiler import owned_tempdir
        d = owned_tempdir("subnets")
        open(d.name + "/model.onnx", "w").write("x")
        print(d.name, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(root)}, cwd=ROOT)
    left = Path(child.stdout.readline().strip())
    child.kill()
    child.wait()
    assert left.is_dir() and left.parent == root and left.name.startswith(f"edgedyn-subnets-{child.pid}-")
    logs: list[str] = []
    Profiler(cfg(tmp_path, validate=0), log=logs.append, progress=False).run()
    assert not left.exists()
    assert any(str(left) in m and "killed" in m for m in logs)


# -- 3. Ctrl-C: quiet workers, one line, exit 130 ---------------------------------------
_CHILD = """
import signal, sys, tempfile, time
from pathlib import Path
# Ctrl-C as a terminal-launched program gets it: a command started in the background by a
# non-interactive shell (CI, `make test &`) inherits SIGINT ignored, and Python then never
# raises KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
import edgedyn.export as ex

def job(packed):  # stands in for the exporter (seconds per sub-net): one sleep per job
    time.sleep(float(packed[1].stem.split("_")[1]))
    return packed[1]

def main():
    ex._export_packed = job
    tmp = Path(tempfile.mkdtemp())
    sleeps = [float(s) for s in sys.argv[1].split(",")]
    jobs = [(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), tmp / f"{i}_{s}.onnx") for i, s in enumerate(sleeps)]
    print("start", flush=True)
    try:
        ex.export_many(jobs, workers=2, progress=lambda: print("progress", flush=True))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print("finished", flush=True)

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("when", ["starting", "working"])
def test_ctrl_c_leaves_export_workers_quiet(tmp_path, when):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: while the spawned
    workers import torch, or while one works and the other waits for a job."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    sleeps = "0.3,0.3,0.3,0.3" if when == "starting" else "0.2,0.2,3"
    p = subprocess.Popen([sys.executable, str(script), sleeps], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "start"
        if when == "starting":
            time.sleep(0.5)  # the workers are being spawned and import torch
        else:
            assert p.stdout.readline().strip() == "progress"
            assert p.stdout.readline().strip() == "progress"  # one worker sleeps 3 s, the other waits
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, (out, err)
    assert out.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_cli_profile_interrupted_in_the_calibration_build_is_one_line_and_130(fake, tmp_path, monkeypatch):
    def interrupted(self, module, example, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(FakeBackend, "prepare", interrupted)
    out = tmp_path / "t.json"
    res = CliRunner().invoke(cli, ["profile", "--model", "resnet20", "--input-size", "16", "--threads", "1",
                                   "--calibrate", "4", "--passes", "1", "--quiet", "--out", str(out)])
    assert res.exit_code == 130, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith("interrupted") and "--resume" in lines[-1]
    assert "Traceback" not in res.output and not any(ln.startswith("error:") for ln in lines)
    partial = Path(str(out) + ".partial.json")
    assert partial.is_file() and json.loads(partial.read_text())["table"]["entries"]  # progress kept


# -- 4. deploy checks --out first; run checks --json before serving -----------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    from test_deploy import make_run_dir

    return make_run_dir(tmp_path_factory.mktemp("run") / "run", ratios=(0.5,))


def _no_build(monkeypatch):
    import edgedyn.deploy.build as build_mod

    def build(*a, **k):
        raise AssertionError("deploy built before checking --out")

    monkeypatch.setattr(build_mod, "_build", build)


def test_deploy_checks_out_before_any_work(small_run, tmp_path, monkeypatch):
    from edgedyn.deploy import deploy

    _no_build(monkeypatch)
    a_file = tmp_path / "a"
    a_file.write_text("not a bundle")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    for out, pattern in [(a_file, "exists and is a file"), (full, "not an edgedyn bundle"),
                         (a_file / "b", r"a is a file, not a folder"), (a_file / "b" / "c", "a is a file")]:
        with pytest.raises(EdgedynError, match=pattern) as info:
            deploy(small_run, out=out, threads=1)
        assert "--out" in str(info.value) and str(out) in str(info.value) and "\n" not in str(info.value)
    assert a_file.read_text() == "not a bundle" and [p.name for p in full.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "full"]  # no build folder left


def test_cli_deploy_out_under_a_file_is_one_line(small_run, tmp_path, monkeypatch):
    _no_build(monkeypatch)
    (tmp_path / "a").write_text("x")
    res = CliRunner().invoke(cli, ["deploy", "--run", str(small_run), "--out", str(tmp_path / "a" / "b"),
                                   "--threads", "1"])
    assert "is a file" in _one_line_error(res)


def test_cli_run_checks_json_path_before_serving(tmp_path, monkeypatch):
    import edgedyn.runtime as runtime

    def load(*a, **k):
        raise AssertionError("served before checking --json")

    monkeypatch.setattr(runtime.Selector, "load", load)
    (tmp_path / "a").write_text("x")
    (tmp_path / "dir").mkdir()
    for json_out, pattern in [(tmp_path / "a" / "r.json", "a is a file"), (tmp_path / "a" / "b" / "r.json", "a is a file")]:
        res = CliRunner().invoke(cli, ["run", "--bundle", str(tmp_path / "bundle"), "--requests", "5",
                                       "--json", str(json_out)])
        out = _one_line_error(res)
        assert pattern in out and "--json" in out


def test_stale_deploy_build_folders_are_removed(small_run, tmp_path, monkeypatch):
    import edgedyn.deploy.build as build_mod

    dead = _dead_pid()
    stale, other = tmp_path / f".bundle.building-{dead}", tmp_path / f".other.building-{dead}"
    for d in (stale, other):
        d.mkdir()
    _no_build(monkeypatch)
    with pytest.raises(AssertionError, match="built"):
        build_mod.deploy(small_run, out=tmp_path / "bundle", threads=1)
    assert not stale.exists() and other.exists()  # another bundle's folder is not this deploy's business


# -- 5. progress off a terminal ---------------------------------------------------------
def test_progress_prints_plain_lines_at_most_and_at_least_every_interval():
    lines: list[str] = []
    with progress_mod.Progress(total=4, desc="blocks", every_s=0.2, log=lines.append, tty=False) as bar:
        for _ in range(4):
            bar.update()  # four quick steps: no line (none is due)
        assert lines == []
        time.sleep(0.7)  # no step for a while: the heartbeat prints anyway
    assert len(lines) >= 3 and lines[0] == "blocks: 4/4 (0 s)" and lines[-1].startswith("blocks: 4/4 done (")
    assert len(lines) <= 5  # about one per 0.2 s, not one per check
    assert all(ln.startswith("blocks: 4/4") for ln in lines)

    lines.clear()
    with progress_mod.Progress(total=3, desc="train 1/8", every_s=0, log=lines.append, tty=False) as bar:
        bar.update(2)
    assert lines == ["train 1/8: 2/3 (0 s)", "train 1/8: 2/3 stopped (0 s)"]  # left before its total

    lines.clear()
    assert list(progress_mod.Progress(iter(range(3)), desc="it", every_s=0, log=lines.append, tty=False)) == [0, 1, 2]
    assert lines == ["it: 1 (0 s)", "it: 2 (0 s)", "it: 3 (0 s)", "it: 3 done (0 s)"]

    lines.clear()
    with pytest.raises(RuntimeError):
        with progress_mod.Progress(desc="[2/4] search", bar=False, every_s=0.05, log=lines.append, tty=False):
            time.sleep(0.2)
            raise RuntimeError
    assert lines[0] == "[2/4] search (0 s)" and lines[-1] == "[2/4] search: stopped (0 s)"

    lines.clear()
    with progress_mod.Progress(total=2, desc="quiet", every_s=0, disable=True, log=lines.append, tty=False) as bar:
        bar.update(2)
    assert lines == []


def test_progress_on_a_terminal_is_a_bar_and_no_lines():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream, lines = Tty(), []
    with progress_mod.Progress(total=3, desc="blocks", every_s=0, stream=stream, log=lines.append) as bar:
        bar.update(3)
    assert lines == [] and "blocks" in stream.getvalue() and "3/3" in stream.getvalue()


def test_profiler_prints_progress_lines_off_a_terminal(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)  # a line per step
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    logs: list[str] = []
    Profiler(cfg(tmp_path, calibrate=4, validate=3, probes=0), log=logs.append, progress=True).run()
    blocks = [m for m in logs if m.startswith("blocks: ")]
    assert blocks and blocks[-1].startswith("blocks: ") and " done (" in blocks[-1]
    assert any(m.startswith("calibration + validation build: 1/7 (") for m in logs)
    assert any(m.startswith("calibration + validation build: 7/7 done (") for m in logs)


def test_deploy_prints_progress_lines_off_a_terminal(small_run, tmp_path, monkeypatch):
    from test_deploy import FAST

    from edgedyn.deploy import deploy

    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    deploy(small_run, out=tmp_path / "b", threads=1, **FAST)
    lines = [ln for ln in sys.stderr.getvalue().splitlines() if ln.startswith("deploy: sub-nets built")]
    assert len(lines) == 2 and lines[0].startswith("deploy: sub-nets built: 1/1 (")
    assert lines[1].startswith("deploy: sub-nets built: 1/1 done (")


def test_demo_phases_print_a_heartbeat_off_a_terminal(tmp_path, monkeypatch):
    import edgedyn.demo as demo
    import edgedyn.profile.profiler as profiler_mod

    class Stop(Exception):
        pass

    def slow_profile(*a, **k):  # the profile step: a while, then stop the demo
        time.sleep(0.4)
        raise Stop

    monkeypatch.setattr(progress_mod, "EVERY_S", 0.1)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # the demo's log is not a terminal
    monkeypatch.setattr(profiler_mod, "profile", slow_profile)
    lines: list[str] = []
    with pytest.raises(Stop):
        demo.run_demo(tmp_path, log=lines.append)
    beats = [ln for ln in lines if ln.startswith("[1/4] profile (")]
    assert len(beats) >= 2 and lines[-1].startswith("[1/4] profile: stopped (")


# -- issue 23: a tampered checkpoint or weights file fails in one line -------------------------
def interrupted_run(folder: Path):
    """A search run stopped at its first checkpoint: its config (resume=True) and checkpoint path."""
    from dataclasses import replace

    from test_search import MockLatency, small_config

    from edgedyn.search import run_search

    class Stop(Exception):
        pass

    def stop(phase, index):
        raise Stop

    config = small_config(folder, method="usnet", budgets="0.7,1.0", train_epochs=1)
    with pytest.raises(Stop):
        run_search(config, MockLatency(), hook=stop)
    assert (folder / "checkpoint.pt").is_file()
    return replace(config, resume=True), folder / "checkpoint.pt"


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    import torch

    config, ckpt = interrupted_run(tmp_path_factory.mktemp("stopped") / "run")
    return config, ckpt, torch.load(ckpt, weights_only=True)


def _tampered_resume(stopped_run, tmp_path, tamper):
    """Resume a copy of the stopped run whose checkpoint ``tamper`` changed; the error raised."""
    import shutil
    from dataclasses import replace

    import torch
    from test_search import MockLatency

    from edgedyn.search import run_search

    config, ckpt, blob = stopped_run
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    obj = tamper({**blob, "state_dict": dict(blob["state_dict"])})
    torch.save(obj, run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(EdgedynError) as info:
        run_search(replace(config, out=str(run)), MockLatency())
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the log untouched too
    msg = str(info.value)
    assert "\n" not in msg and str(run / "checkpoint.pt") in msg, msg
    return msg


def test_resume_refuses_a_checkpoint_tensor_of_the_wrong_shape(stopped_run, tmp_path):
    import torch

    key = next(k for k, v in stopped_run[2]["state_dict"].items() if v.dim() == 4)

    def wrong_shape(blob):
        blob["state_dict"][key] = torch.zeros(3, 3)
        return blob

    msg = _tampered_resume(stopped_run, tmp_path, wrong_shape)
    assert f"state_dict.{key}" in msg and "[3, 3]" in msg


def test_resume_refuses_a_checkpoint_missing_a_tensor(stopped_run, tmp_path):
    key = next(iter(stopped_run[2]["state_dict"]))

    def missing(blob):
        del blob["state_dict"][key]
        return blob

    assert f"state_dict.{key}' is missing" in _tampered_resume(stopped_run, tmp_path, missing)


@pytest.mark.parametrize("tamper, words", [
    (lambda blob: [1, 2, 3], "schema"),
    (lambda blob: {**blob, "config": [1]}, "config"),
    (lambda blob: {**blob, "state_dict": [1]}, "state_dict"),
    (lambda blob: {k: v for k, v in blob.items() if k != "state_dict"}, "state_dict"),
    (lambda blob: {**blob, "phase": "warp"}, "phase"),
    (lambda blob: {**blob, "path": [{"widths": "x"}]}, "state"),
    (lambda blob: {**blob, "alphas": "x"}, "alphas"),
])
def test_resume_refuses_a_foreign_or_malformed_checkpoint(stopped_run, tmp_path, tamper, words):
    assert words in _tampered_resume(stopped_run, tmp_path, tamper)


def _saved_weights(tmp_path: Path, tamper) -> Path:
    import torch

    from edgedyn.dynamic import DynamicNet

    net = DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=2)
    path = net.save(tmp_path / "weights.pt")
    blob = torch.load(path, weights_only=True)
    torch.save(tamper(blob), path)
    return path


def _config_without(key):
    def tamper(blob):
        blob["config"].pop(key)
        return blob
    return tamper


def _config_set(key, value):
    def tamper(blob):
        blob["config"][key] = value
        return blob
    return tamper


def _nan_tensor(blob):
    key = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][key] = blob["state_dict"][key].clone().fill_(float("nan"))
    return blob


@pytest.mark.parametrize("tamper, words", [
    (_config_without("input_size"), "'config.input_size' is missing"),
    (_config_set("input_size", "32"), "'config.input_size' must be an integer"),
    (_config_without("model"), "config.model"),
    (_config_set("channel_groups", 2.5), "'config.channel_groups' must be an integer"),
    (_config_set("num_classes", 10 ** 30), "'config.num_classes' is"),
    (lambda blob: {**blob, "config": "x"}, "'config' must be an object"),
    (lambda blob: {**blob, "bn_stats": {"[8]": {"bn1": [1]}}}, "bn_stats"),
    (_nan_tensor, "NaN"),
])
def test_a_tampered_weights_file_fails_in_one_line(tmp_path, tamper, words):
    """As ``--weights`` (the search) and as a run's ``weights.pt`` (what deploy reads,
    through :func:`edgedyn.validate_weights.load_net`)."""
    from edgedyn.dynamic import DynamicNet
    from edgedyn.errors import ArtifactError
    from edgedyn.search.weights import load_weights_into
    from edgedyn.validate_weights import load_net

    path = _saved_weights(tmp_path, tamper)
    net = DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=2)
    for load in (lambda: load_weights_into(net, path), lambda: load_net(path)):
        with pytest.raises(ArtifactError) as info:
            load()
        msg = str(info.value)
        assert words in msg and str(path) in msg and "\n" not in msg, msg


def test_search_with_tampered_weights_refuses_before_the_run_directory(tmp_path):
    from test_search import MockLatency, small_config

    from edgedyn.errors import ArtifactError
    from edgedyn.search import run_search

    path = _saved_weights(tmp_path, _config_set("input_size", "32"))
    with pytest.raises(ArtifactError, match="config.input_size"):
        run_search(small_config(tmp_path / "run", weights=str(path)), MockLatency())
    assert not (tmp_path / "run").exists()
