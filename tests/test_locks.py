"""Refuse before destroying (issue 23). Exclusive advisory locks: a second writer is refused at
once, in one line naming the artifact and the holder's pid; the lock goes with its holder, even a
SIGKILLed one. ``refuse_foreign``: an artifact never replaces a file of another kind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgedyn.artifacts import atomic_write_json, refuse_foreign
from edgedyn.errors import ArtifactError, EdgedynError
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


# -- refuse_foreign ---------------------------------------------------------------------------
TABLE = "edgedyn.latency_table/2"


def test_refuse_foreign_lets_a_new_path_and_the_same_kind_through(tmp_path: Path) -> None:
    refuse_foreign(tmp_path / "new.json", TABLE)
    atomic_write_json(tmp_path / "t.json", {"schema": "edgedyn.latency_table/1", "entries": {}})
    refuse_foreign(tmp_path / "t.json", TABLE)  # an older version of the same kind


@pytest.mark.parametrize("content, found", [
    ('{"schema": "edgedyn.search_result/1", "subnets": []}', "edgedyn.search_result artifact"),
    ("not json at all", "not a JSON artifact"),
    ('{"entries": {}}', "without a 'schema' field"),
    ("[1, 2]", "without a 'schema' field"),
    (b"\xff\xfe\x00binary", "not a JSON artifact"),
])
def test_refuse_foreign_refuses_another_kind_in_one_line(tmp_path: Path, content, found: str) -> None:
    victim = tmp_path / "subnets.json"
    if isinstance(content, bytes):
        victim.write_bytes(content)
    else:
        victim.write_text(content)
    with pytest.raises(ArtifactError) as err:
        refuse_foreign(victim, TABLE, hint="; pass --overwrite to replace it")
    msg = str(err.value)
    assert "\n" not in msg and str(victim) in msg and found in msg and "edgedyn.latency_table" in msg
    assert msg.endswith("; pass --overwrite to replace it")
    refuse_foreign(victim, TABLE, allow=True)  # the caller's --overwrite


def test_refuse_foreign_never_opens_a_fifo_nor_replaces_a_directory(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ArtifactError, match="not a regular file"):
        refuse_foreign(fifo, TABLE)  # returns at once: a FIFO is never opened
    with pytest.raises(ArtifactError, match="a directory"):
        refuse_foreign(tmp_path, TABLE)


def test_refuse_foreign_protects_every_file_of_a_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    atomic_write_json(bundle / "manifest.json", {"schema": "edgedyn.bundle/1", "subnets": []})
    (bundle / "model_0.onnx").write_bytes(b"onnx")
    atomic_write_json(bundle / "table.json", {"schema": TABLE, "entries": {}})
    for victim, kind in ((bundle / "manifest.json", "edgedyn.run_report/1"), (bundle / "model_0.onnx", TABLE),
                         (bundle / "table.json", TABLE)):  # even a table of the same kind
        with pytest.raises(ArtifactError, match=f"a file of the bundle {bundle}"):
            refuse_foreign(victim, kind)
    refuse_foreign(bundle / "report.json", "edgedyn.run_report/1")  # a new file beside them
    refuse_foreign(bundle / "manifest.json", "edgedyn.bundle/1")  # deploy rewriting its own manifest
