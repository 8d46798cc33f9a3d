"""The bundle directory deploy writes, and how a new bundle replaces the old one atomically.

Layout: ``OUT`` is a symbolic link to ``OUT.d/v-<UTC timestamp>/``, the folder that holds the
bundle's files. A deploy (holding the lock ``.OUT.lock``, :func:`edgedyn.locks.exclusive_lock`)

1. builds the new bundle in ``OUT.d/.building-<pid>/`` (manifest last, then its signature);
2. renames it to ``OUT.d/v-<timestamp>/``;
3. makes a symbolic link ``.OUT.link-<pid>`` to it beside ``OUT``;
4. renames that link over ``OUT`` (``rename(2)`` replaces a link atomically): readers see the old
   bundle or the new one, never neither. A bundle written by older edgedyn versions (``OUT`` a
   plain folder) is exchanged with the link in one ``renameat2(RENAME_EXCHANGE)`` call on Linux,
   and the old folder is moved into ``OUT.d``;
5. prunes ``OUT.d``: every version but the new one and the one it replaced (a reader that
   resolved the old link just before the swap can still finish loading it).

A deploy killed at any point leaves ``OUT`` pointing at a complete bundle (the old one or the
new one); the next deploy removes the leftovers (:func:`remove_stale_builds`) and, where only
the non-Linux fallback's two renames were interrupted, points ``OUT`` at the newest complete
version first (:func:`recover`).

``out`` is checked before any work (:func:`check_out`): a file, a non-empty folder that is not a
bundle, the current directory or one holding it are refused in one line. Tests stop a deploy at
a stage with the environment variable ``EDGEDYN_FAULT_STAGE`` (:func:`fault_point`).
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from ..bundle import MANIFEST_NAME
from ..errors import EdgedynError

log = logging.getLogger("edgedyn.deploy")

VERSIONS_SUFFIX = ".d"
FAULT_ENV = "EDGEDYN_FAULT_STAGE"  # tests only: SIGKILL this process at the named stage
STAGES = ("built", "manifest", "staged", "linked", "swapped")


def fault_point(stage: str) -> None:
    """Kill this process with SIGKILL here if the fault-injection test asks for ``stage``."""
    if os.environ.get(FAULT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def versions_dir(out: Path) -> Path:
    """``OUT.d``: the folder holding the bundle's versions."""
    return out.with_name(out.name + VERSIONS_SUFFIX)


def file_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` if it is not a folder (then nothing can be
    written at ``path``), else None."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _ours(link: Path) -> bool:
    """Whether the symbolic link ``link`` points into its own ``OUT.d`` (deploy made it)."""
    try:
        target = Path(os.readlink(link))
    except OSError:
        return False
    return len(target.parts) == 2 and target.parts[0] == link.name + VERSIONS_SUFFIX


def check_out(out: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, a bundle directory that deploy could not write or must not
    replace: a file; a non-empty folder that is not an edgedyn bundle; the current directory
    or a folder holding it; a path under a file."""
    out = Path(out)
    here, where = Path.cwd().resolve(), Path(os.path.abspath(out))
    where = where.parent.resolve() / where.name if where.name else where  # symlinked folders above it
    if not where.name or where == here or where in here.parents:
        raise EdgedynError(f"{out}: is the current directory or holds it; deploy replaces its --out whole: "
                           f"name a bundle directory instead (e.g. {option} bundle)")
    blocker = file_ancestor(out)
    if blocker is not None:
        raise EdgedynError(f"{out}: {blocker} is a file, not a folder; choose another {option}")
    if out.is_symlink() and not out.exists():
        if not _ours(out):
            raise EdgedynError(f"{out}: is a dangling symbolic link, not an edgedyn bundle; choose another {option}")
    elif out.exists():
        if not out.is_dir():
            raise EdgedynError(f"{out}: exists and is a file, not an edgedyn bundle; choose another {option}")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise EdgedynError(f"{out}: exists and is not an edgedyn bundle (a non-empty folder without "
                               f"{MANIFEST_NAME}); choose another {option}")
    versions = versions_dir(out)
    if (versions.exists() or versions.is_symlink()) and (versions.is_symlink() or not versions.is_dir()):
        raise EdgedynError(f"{out}: {versions} (where deploy keeps the bundle's versions) exists and is not a "
                           f"folder; move it or choose another {option}")
    return out


def remove_stale_builds(out: Path) -> None:
    """Remove what killed deploys left: ``OUT.d/.building-<pid>`` folders and ``.OUT.link-<pid>``
    links (the caller holds the bundle's lock: none is in use), and the ``.OUT.building-<pid>`` /
    ``.OUT.old-<pid>`` folders of older edgedyn versions whose process is gone."""
    from ..profile.profiler import pid_alive

    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(building|old|link)-(\d+)$")
    try:
        siblings = list(out.parent.iterdir())
        inside = list(versions_dir(out).iterdir()) if versions_dir(out).is_dir() else []
    except OSError:
        return
    for path in siblings:
        m = pattern.match(path.name)
        if not m or int(m[2]) == os.getpid():
            continue
        if m[1] == "link" and path.is_symlink():
            path.unlink(missing_ok=True)
        elif not pid_alive(int(m[2])) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        log.info("removed %s (left behind by a killed deploy)", path)
    for path in inside:
        if path.name.startswith(".building-") and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s (left behind by a killed deploy)", path)


def _complete(version: Path) -> bool:
    return version.is_dir() and not version.is_symlink() and (version / MANIFEST_NAME).is_file()


def recover(out: Path) -> None:
    """Point a missing or dangling ``out`` at the newest complete version in ``OUT.d`` (only the
    non-Linux fallback of :func:`swap_into_place`, interrupted, leaves it so)."""
    if out.exists() or (out.is_symlink() and not _ours(out)):
        return
    versions = versions_dir(out)
    found = sorted(p for p in versions.glob("v-*") if _complete(p)) if versions.is_dir() else []
    if found:
        _link_over(out, found[-1])
        log.warning("%s was missing: pointed it at %s, the newest complete bundle", out, found[-1])


def building_dir(out: Path) -> Path:
    """A fresh, empty ``OUT.d/.building-<pid>``."""
    tmp = versions_dir(out) / f".building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _new_version(versions: Path) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path, n = versions / f"v-{stamp}", 1
    while path.exists() or path.is_symlink():
        path, n = versions / f"v-{stamp}-{n}", n + 1
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _link_over(out: Path, version: Path) -> Path | None:
    """Make ``out`` a link to ``version`` (in ``OUT.d``) in one rename. ``out`` may be a folder
    of an older edgedyn version: it is then moved into ``OUT.d``, and its new path returned."""
    link = out.with_name(f".{out.name}.link-{os.getpid()}")
    link.unlink(missing_ok=True)
    os.symlink(Path(version.parent.name) / version.name, link)  # relative: the pair may be moved together
    fault_point("linked")
    if out.is_dir() and not out.is_symlink():  # a bundle of an older edgedyn: a plain folder
        legacy = version.parent / f"{_new_version(version.parent).name}-old"
        if _exchange(link, out):
            fault_point("swapped")
            os.rename(link, legacy)  # the old folder, now under the link's name
            return legacy
        os.rename(out, legacy)  # fallback: two renames (recover() repairs a kill between them)
        os.replace(link, out)
        return legacy
    os.replace(link, out)
    return None


def swap_into_place(staged: Path, out: Path) -> Path:
    """Move the finished bundle ``staged`` to a new version in ``OUT.d`` and point ``out`` at
    it atomically; prune older versions (keeping the one replaced). Returns the version."""
    if out.exists() and not out.is_symlink() and (not out.is_dir() or (any(out.iterdir())
                                                                       and not (out / MANIFEST_NAME).is_file())):
        raise EdgedynError(f"{out}: exists and is not an edgedyn bundle; choose another --out")
    previous = out.resolve() if out.is_symlink() and out.exists() else None
    version = _new_version(staged.parent)
    os.rename(staged, version)
    fault_point("staged")
    try:
        legacy = _link_over(out, version)
    except BaseException:
        if not (out.is_symlink() and out.resolve() == version.resolve()):
            shutil.rmtree(version, ignore_errors=True)
        out.with_name(f".{out.name}.link-{os.getpid()}").unlink(missing_ok=True)
        raise
    fault_point("swapped")
    replaced = legacy or previous
    prune(out, keep={version.name} | ({replaced.name} if replaced is not None else set()))
    return version


def prune(out: Path, keep: set[str]) -> None:
    """Remove every ``OUT.d/v-*`` version but those named in ``keep`` and the one ``out`` points at."""
    versions = versions_dir(out)
    if out.is_symlink():
        keep = keep | {out.resolve().name}
    for path in versions.glob("v-*"):
        if path.name not in keep and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
