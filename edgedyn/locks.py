"""Exclusive advisory locks for the writers of a table, a run directory or a bundle.

:func:`exclusive_lock` takes ``fcntl.flock`` on a lock file *beside* the artifact
(``DIR/.NAME.lock`` for ``DIR/NAME``, whether ``NAME`` is a file or a directory, so that a
bundle swapped into place by a rename keeps its lock), and writes the holder's pid in it.
A second writer, in this process or another, is refused at once with one
:class:`~edgedyn.errors.EdgedynError` line naming the artifact and the holder's pid.

The lock is released when the ``with`` block ends, normally or by an exception, and the
operating system drops it when its holder dies (even by SIGKILL), so a lock file left
behind by a crash never blocks the next writer: only a live holder does. The lock file
is removed on release; a writer that opened it just before the removal notices that the
file it locked is no longer the one at that path and tries again.

Locks are advisory: they keep edgedyn's own writers apart, nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import EdgedynError

__all__ = ["LockedError", "exclusive_lock", "lock_path"]

_ATTEMPTS = 20  # re-opens after a concurrent release removed the file we had locked


class LockedError(EdgedynError):
    """Another live writer holds the artifact's lock."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the artifact at ``path``: ``.NAME.lock`` in the same folder."""
    p = Path(os.path.abspath(path))  # not resolve(): the lock follows the name, not a symlink's target
    name = p.name or "root"
    return p.parent / f".{name}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _open_locked(lock: Path, path: Path, what: str) -> int:
    """Open and flock ``lock``; the fd of a lock file that is still the one at that path."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(lock, flags, 0o644)
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise EdgedynError(f"{path}: cannot create the lock file {lock} for this {what} ({reason})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            pid = _holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(f"{path}: another edgedyn process (pid {pid}) is writing this {what}; "
                                  f"wait for it to end or stop it (lock file {lock})") from None
            raise EdgedynError(f"{path}: cannot lock {lock} ({err.strerror or type(err).__name__})") from None
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # a holder released and removed it between our open and our flock
    raise LockedError(f"{path}: the lock file {lock} keeps being replaced; is another edgedyn writing this {what}?")


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on the artifact at ``path`` (a file or a directory) for the block.

    ``what`` names the artifact in the refusal ("latency table", "run directory", "bundle").
    The folder holding ``path`` is created if missing. Yields the lock file's path. Raises
    :class:`LockedError` at once when another writer (another process, or another lock
    taken by this one) holds it; not reentrant.
    """
    path = Path(path)
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise EdgedynError(f"{path}: cannot create the folder {lock.parent} ({reason})") from None
    fd = _open_locked(lock, path, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        try:
            os.unlink(lock)  # while still holding it: a waiter that opened it re-checks the inode
        except OSError:
            pass
        os.close(fd)
