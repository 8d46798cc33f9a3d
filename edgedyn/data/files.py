"""Safe reads for the data sources: only regular files, gzip in bounded chunks, images under
PIL's decompression-bomb limit. Every failure is one :class:`DataError` line naming the file.

- :func:`open_regular` refuses a FIFO (whose open would block until a writer comes), a
  device, a socket or a directory *before* opening it, and checks the opened file again
  (a file swapped for a FIFO in between is refused, never waited on). A symlink to a
  regular file is fine; a symlink loop is refused (ELOOP).
- :func:`read_exact` reads exactly ``n`` bytes, from a raw or a gzip stream, in chunks of
  at most :data:`CHUNK` bytes, and refuses a stream that holds more (a gzip bomb stops
  after ``n + 1`` bytes) or fewer.
- :func:`load_rgb_image` opens an image with PIL and refuses one of more pixels than
  ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's default when that is ``None``) before decoding it.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from typing import IO, Any

from .core import DataError, _describe

CHUNK = 1 << 20
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own default: 1024 * 1024 * 1024 // 4 // 3
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink loop"
    return exc.strerror or type(exc).__name__


def _not_regular(path: str | os.PathLike, mode: int) -> DataError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    return DataError(f"{path}: not a regular file ({kind}); remove it or replace it with the file it should be")


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed) if it is a regular file; else one DataError line."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """``path`` opened for binary reading, refused unless it is a regular file (see the module)."""
    check_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO swapped in: no wait
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_reason(exc)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_exact(fh: IO[bytes], n: int, path: str | os.PathLike, what: str) -> bytearray:
    """Exactly ``n`` bytes from ``fh`` (raw or gzip), in chunks; one DataError line when the
    stream ends early or holds more than ``n`` (checked by reading one byte past them)."""
    out = bytearray(n)
    view = memoryview(out)
    got = 0
    while got < n:
        k = fh.readinto(view[got:min(n, got + CHUNK)])  # type: ignore[attr-defined]
        if not k:
            break
        got += k
    if got < n:
        raise DataError(f"{path}: {what} declares {n} bytes of data, the file holds {got} (truncated or corrupt)")
    if fh.read(1):
        raise DataError(f"{path}: the file holds more data than {what} declares ({n} bytes); corrupt, or not "
                        "this format")
    return out


def load_rgb_image(path: str | os.PathLike) -> Any:
    """The image at ``path`` as an RGB PIL image, or one DataError line naming it: not a regular
    file, undecodable, or more pixels than PIL's decompression-bomb limit (checked before decoding)."""
    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_IMAGE_PIXELS
    with open_regular(path) as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh)
                width, height = img.size
                if width * height > limit:
                    raise Image.DecompressionBombError(f"{width} x {height} pixels")
                return img.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"{path}: refused as a decompression bomb (more than {limit} pixels, "
                            "PIL.Image.MAX_IMAGE_PIXELS); shrink it or raise that limit") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
            raise DataError(f"{path}: cannot decode the image ({_describe(exc)}); remove or replace it") from None


def is_image_file(path: str, extensions: tuple[str, ...]) -> bool:
    """Whether ``path`` names an image by its extension; such a name that is not a regular
    file (a FIFO, a device, a dangling link, a loop) is refused with one DataError line."""
    if not path.lower().endswith(extensions):
        return False
    check_regular(path)
    return True
