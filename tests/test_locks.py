"""Exclusive advisory locks (issue 23): a second writer is refused at once, in one line naming
the artifact and the holder's pid; the lock goes with its holder, even a SIGKILLed one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgedyn.errors import EdgedynError
from edgedyn.locks import LockedError, exclusive_lock, lock_path

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys
    from edgedyn.locks import exclusive_lock
    with exclusive_lock(sys.argv[1], "latency table"):
        print("locked", flush=True)
        sys.stdin.readline()  # hold it until told, or killed
    print("released", flush=True)
""")


def _holder(target: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.timeout(60)
def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    target = tmp_path / "profiles" / "cpu.json"
    proc = _holder(target)
    try:
        assert lock_path(target).read_text().strip() == str(proc.pid)
        start = time.monotonic()
        with pytest.raises(LockedError) as err, exclusive_lock(target, "latency table"):
            pytest.fail("two writers held the lock")
        assert time.monotonic() - start < 1.0  # refused, not waited for
        msg = str(err.value)
        assert "\n" not in msg and str(target) in msg and f"pid {proc.pid}" in msg and "latency table" in msg
        assert isinstance(err.value, EdgedynError)
    finally:
        proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0
    assert not lock_path(target).exists()  # released and removed
    with exclusive_lock(target, "latency table") as lock:  # free again
        assert lock.read_text().strip() == str(os.getpid())


@pytest.mark.timeout(60)
def test_a_sigkilled_holder_leaves_a_stale_file_that_does_not_block(tmp_path: Path) -> None:
    target = tmp_path / "run"
    proc = _holder(target)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lock = lock_path(target)
    assert lock.read_text().strip() == str(proc.pid)  # the dead holder's file is still there
    with exclusive_lock(target, "run directory"):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


def test_released_on_exception_and_not_reentrant(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError), exclusive_lock(target, "bundle"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"), exclusive_lock(target, "bundle"):
            pass
        raise RuntimeError("crash inside")
    assert not lock_path(target).exists()
    with exclusive_lock(target, "bundle"):
        pass


def test_lock_file_sits_beside_the_artifact_and_is_never_followed(tmp_path: Path) -> None:
    assert lock_path(tmp_path / "runs" / "my-run") == tmp_path / "runs" / ".my-run.lock"
    assert lock_path(tmp_path / "t.json") == tmp_path / ".t.json.lock"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    lock_path(tmp_path / "t.json").symlink_to(victim)  # a planted symlink is not written through
    with pytest.raises(EdgedynError, match="cannot create the lock file") as err, \
            exclusive_lock(tmp_path / "t.json", "latency table"):
        pass
    assert "\n" not in str(err.value) and victim.read_text() == "keep me"


def test_a_folder_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgedynError, match="cannot create the folder") as err, \
            exclusive_lock(tmp_path / "file" / "sub" / "t.json", "latency table"):
        pass
    assert "\n" not in str(err.value)
