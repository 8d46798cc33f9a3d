"""One rule for the command line (issue 23): SIGTERM behaves as Ctrl-C in every command (its
``finally`` blocks run, state is saved) and ends with status 143, Ctrl-C with 130; an OSError or a
decode error from a user's file is one line naming the file, status 2, never a traceback.

Every case runs ``edgedyn`` in a real subprocess through :func:`edgedyn.cli.main`. Besides the
real commands, a script adds two small commands to the group (a sleeper that keeps state in a
``finally`` block, and a reader of a file) so that the rule itself is checked quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import sigint_default

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

HARNESS = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import click
    from edgedyn import cli as c

    @c.cli.command()
    @click.argument("state")
    def sleeper(state):
        tmp = Path(state + ".tmp")
        tmp.write_text("partial")
        try:
            print("ready", flush=True)
            time.sleep(120)
        finally:
            tmp.unlink()
            Path(state).write_text("saved")

    @c.cli.command()
    @click.argument("path")
    @click.option("--mode", type=click.Choice(["json", "text", "write"]))
    def reader(path, mode):
        if mode == "json":
            json.loads(Path(path).read_bytes())
        elif mode == "text":
            Path(path).read_text(encoding="utf-8")
        else:
            with open(path, "wb") as fh:
                fh.write(b"x" * 100_000)

    c.main()
""")


def _harness(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HARNESS, *args], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw, preexec_fn=sigint_default)


def _edgedyn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgedyn.cli", *args], env=ENV, text=True, cwd=cwd,
                          capture_output=True, timeout=240)


def _one_error_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], (needle, stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig, status, word", [(signal.SIGTERM, 143, "terminated"),
                                               (signal.SIGINT, 130, "interrupted")])
def test_sigterm_unwinds_as_ctrl_c_does(tmp_path: Path, sig: int, status: int, word: str) -> None:
    state = tmp_path / "state.txt"
    proc = _harness("sleeper", str(state))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert Path(f"{state}.tmp").exists()
    start = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 30  # not the 120 s sleep
    assert proc.returncode == status, (proc.returncode, err)
    assert err.strip() == word and "Traceback" not in err
    assert state.read_text() == "saved" and not Path(f"{state}.tmp").exists()  # the finally block ran


@pytest.mark.timeout(120)
@pytest.mark.parametrize("content, mode, needle", [
    (b"\xff\xfe not utf-8", "text", "cannot decode it"),
    (b"{not json", "json", "cannot decode it (Expecting property name"),
    (None, "json", "No such file or directory"),
    ("dir", "json", "Is a directory"),
])
def test_a_bad_user_file_is_one_line_naming_it(tmp_path: Path, content, mode: str, needle: str) -> None:
    path = tmp_path / "user.json"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    proc = _harness("reader", str(path), "--mode", mode)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    _one_error_line(err, f"error: {path}: ", needle)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_one_line_naming_the_file() -> None:
    proc = _harness("reader", "/dev/full", "--mode", "write")  # ENOSPC carries no file name
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    _one_error_line(err, "error: /dev/full: No space left on device")


@pytest.mark.timeout(240)
def test_real_commands_follow_the_rule(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_bytes(b"[8, 16, \xff]")  # not UTF-8: a traceback before
    res = _edgedyn("inspect", "--model", "resnet20", "--spec", str(spec))
    assert res.returncode == 2, res.stderr
    _one_error_line(res.stderr, str(spec), "cannot decode it")
    with open("/dev/full", "w") as full:  # stdout on a full disk
        res = subprocess.run([sys.executable, "-m", "edgedyn.cli", "inspect", "--model", "resnet20", "--json"],
                             env=ENV, text=True, stdout=full, stderr=subprocess.PIPE, timeout=240)
    assert res.returncode == 2, res.stderr
    _one_error_line(res.stderr, "No space left on device")


@pytest.mark.timeout(300)
def test_sigterm_during_profile_keeps_its_progress(tmp_path: Path) -> None:
    """A real command: SIGTERM while blocks are measured saves the partial table, exit 143."""
    out = tmp_path / "t.json"
    proc = subprocess.Popen([sys.executable, "-m", "edgedyn.cli", "profile", "--model", "resnet20",
                             "--input-size", "16", "--calibrate", "0", "--threads", "1", "--passes", "1",
                             "--out", str(out)],
                            env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:  # until it is measuring blocks ("N distinct blocks; measuring")
        line = proc.stderr.readline()
        lines.append(line)
        if not line or "measuring" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    text = "".join(lines) + err
    assert proc.returncode == 143, text
    assert "Traceback" not in text
    assert list(tmp_path.glob("t.json.partial*")), sorted(tmp_path.iterdir())  # the progress kept
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_huge_or_deeply_nested_value_is_shown_short() -> None:
    """A 5,000-digit number or a list nested 5,000 deep is named in a short line, not
    echoed whole, nor a ValueError / RecursionError from repr()."""
    from click.testing import CliRunner

    from edgedyn.cli import cli
    from edgedyn.validate import number_problem

    res = CliRunner().invoke(cli, ["inspect", "--model", "resnet20", "--input-size", "9" * 5000])
    assert res.exit_code == 2 and res.exception is None or isinstance(res.exception, SystemExit), res.output
    line = [ln for ln in res.output.splitlines() if "--input-size" in ln and "must be" in ln]
    assert len(line) == 1 and len(line[0]) < 200, res.output
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        huge = int("9" * 5000)
    finally:
        sys.set_int_max_str_digits(old)
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    for value, shown in ((huge, "an integer of 5000 digits"), ([huge], "(list)"), (nested, "[[[[...]]]]")):
        problem = number_problem(value, 0, 10, integer=True)
        assert problem is not None and shown in problem and len(problem) < 120, problem
