"""The bundle directory deploy writes: checked before any work, built in a temporary sibling
(``.<out>.building-<pid>``) and renamed into place, so ``out`` is never half-written."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from ..bundle import MANIFEST_NAME
from ..errors import EdgedynError

log = logging.getLogger("edgedyn.deploy")


def file_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` if it is not a folder (then nothing can be
    written at ``path``), else None."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_out(out: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, a bundle directory that deploy could not write or must not
    replace: a file; a non-empty folder that is not an edgedyn bundle; a path under a file."""
    out = Path(out)
    blocker = file_ancestor(out)
    if blocker is not None:
        raise EdgedynError(f"{out}: {blocker} is a file, not a folder; choose another {option}")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise EdgedynError(f"{out}: exists and is a file, not an edgedyn bundle; choose another {option}")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise EdgedynError(f"{out}: exists and is not an edgedyn bundle (a non-empty folder without "
                               f"{MANIFEST_NAME}); choose another {option}")
    return out


def remove_stale_builds(out: Path) -> None:
    """Remove ``.<out>.building-<pid>`` / ``.<out>.old-<pid>`` siblings a killed deploy left behind."""
    from ..profile.profiler import pid_alive

    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(building|old)-(\d+)$")
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        m = pattern.match(path.name)
        if m and int(m[2]) != os.getpid() and not pid_alive(int(m[2])) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s (left behind by a killed deploy)", path)


def building_dir(out: Path) -> Path:
    """A fresh, empty ``.<out>.building-<pid>`` next to ``out``."""
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished bundle ``tmp`` to ``out``, replacing a bundle there."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
            raise EdgedynError(f"{out}: exists and is not an edgedyn bundle; choose another --out")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
