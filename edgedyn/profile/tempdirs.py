"""Build folders in the temporary directory, and the clean-up of those a killed run left.

Each is named ``edgedyn-<kind>-<pid>-XXXX``; a run first removes the folders whose process
is gone (:func:`remove_stale_tempdirs`), never a live process's nor another user's.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

#: Kinds of build folder the profiler makes in the temporary directory (``edgedyn-<kind>-<pid>-XXXX``).
TEMP_KINDS = ("subnets", "blocks", "threads")
_TEMP_NAME = re.compile(r"^edgedyn-(?P<kind>[a-z0-9]+)-(?P<pid>[0-9]+)-.+$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # unknown: never remove what might be in use
    return True


def owned_tempdir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary build folder named ``edgedyn-<kind>-<this pid>-XXXX`` (see :func:`remove_stale_tempdirs`)."""
    return tempfile.TemporaryDirectory(prefix=f"edgedyn-{kind}-{os.getpid()}-")


def remove_stale_tempdirs(root: str | os.PathLike | None = None, kinds: tuple[str, ...] = TEMP_KINDS) -> list[Path]:
    """Remove ``edgedyn-<kind>-<pid>-*`` folders in ``root`` (default: the temporary directory)
    whose process is gone (a SIGKILLed run's); never a live process's, nor another user's.
    Returns the folders removed."""
    root = Path(root if root is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for path in entries:
        m = _TEMP_NAME.match(path.name)
        if m is None or m["kind"] not in kinds:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_symlink() or not path.is_dir() or (uid is not None and st.st_uid != uid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed
