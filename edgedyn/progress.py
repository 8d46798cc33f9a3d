"""Progress that reads well on a terminal and in a log.

On a terminal, :class:`Progress` is a tqdm bar. Off a terminal (a log file, CI,
``make demo | tee``) a bar writes nothing useful, so it prints a plain line instead,
``"<desc>: i/n (elapsed s)"``, at most every ``every_s`` seconds and at least that often
while the phase runs (a heartbeat thread prints even when no step finishes), and a last
``"<desc>: n/n done (elapsed s)"`` line if it printed any.

    with Progress(total=len(items), desc="blocks", unit="blk") as bar:
        for item in items:
            work(item)
            bar.update()

    for x, y in Progress(batches, desc="train 1/8", leave=False):  # like tqdm(iterable)
        ...

    with Progress(desc="[2/4] search", bar=False):  # a heartbeat only: "[2/4] search (30 s)"
        run_search(...)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

#: Seconds between plain progress lines off a terminal.
EVERY_S = 30.0


class Progress:
    """A tqdm bar on a terminal; plain ``"<desc>: i/n (elapsed s)"`` lines every ``every_s`` s otherwise.

    Args:
        iterable: iterate over it (``for x in Progress(items)``); ``total`` defaults to its length.
        desc: what is being done; starts every plain line.
        total: the number of steps, or None (lines then show the count or only the time).
        initial: steps already done (a resumed run).
        unit: tqdm's unit.
        leave: keep the tqdm bar on screen when it closes.
        disable: print nothing at all (``--quiet``, a worker that is not the main process).
        bar: show a tqdm bar on a terminal; False: only the plain lines off a terminal.
        every_s: seconds between plain lines (default :data:`EVERY_S`); 0 prints one on every update.
        stream: where the bar and the plain lines go (default ``sys.stderr`` at construction).
        tty: whether ``stream`` is a terminal (default ``stream.isatty()``).
        log: plain lines go to this callable instead of ``stream`` (e.g. a command's logger).
    """

    def __init__(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None, *,
                 initial: int = 0, unit: str = "it", leave: bool = True, disable: bool = False,
                 bar: bool = True, every_s: float | None = None, stream: TextIO | None = None,
                 tty: bool | None = None, log: Callable[[str], None] | None = None) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.n = initial
        self.every_s = EVERY_S if every_s is None else float(every_s)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else bool(tty)
        self._log = log
        self._start = time.monotonic()
        self._last_line = self._start
        self._printed = False
        self._closed = disable
        self._disabled = disable
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        if disable:
            return
        if self.tty:
            if bar:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                                 file=self.stream, dynamic_ncols=True)
        elif self.every_s > 0:
            self._thread = threading.Thread(target=self._heartbeat, name=f"progress:{desc}", daemon=True)
            self._thread.start()

    # -- plain lines -----------------------------------------------------------------
    def line(self, state: str = "") -> str:
        """The plain line for the current state: ``"<desc>: i/n (elapsed s)"``, ``"<desc>: i"``
        without a total, ``"<desc>"`` without steps; ``state`` (``done``, ``stopped``) is appended."""
        elapsed = time.monotonic() - self._start
        if self.total is not None:
            text = f"{self.desc}: {self.n}/{self.total}"
        elif self.n:
            text = f"{self.desc}: {self.n}"
        else:
            text = f"{self.desc}:" if state else self.desc
        return f"{text}{' ' + state if state else ''} ({elapsed:.0f} s)"

    def _emit(self, text: str) -> None:
        self._printed = True
        self._last_line = time.monotonic()
        if self._log is not None:
            self._log(text)
        else:
            try:
                print(text, file=self.stream, flush=True)
            except (ValueError, OSError):  # the stream was closed under us (interpreter exit)
                pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(0.0, self._last_line + self.every_s - time.monotonic())):
            with self._lock:
                if self._closed:
                    return
                if time.monotonic() - self._last_line >= self.every_s:
                    self._emit(self.line())

    # -- the tqdm-like API ------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        if self._closed:
            return
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)
            elif not self.tty and time.monotonic() - self._last_line >= self.every_s:
                self._emit(self.line())

    @property
    def disabled(self) -> bool:
        """Whether this progress prints nothing (``disable=True``)."""
        return self._disabled

    def set_total(self, total: int | None) -> None:
        """Change the number of steps (known only once the work is planned)."""
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def close(self, done: bool | None = None) -> None:
        """Stop; off a terminal, print a last line if any line was printed: ``done`` when
        ``done`` (by default: when the total is reached), ``stopped`` otherwise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            elif self._printed:
                if done is None:
                    done = self.total is None or self.n >= self.total
                self._emit(self.line("done" if done else "stopped"))
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("Progress() was given no iterable")
        ok = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            ok = True
        finally:
            self.close(done=None if ok else False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(done=False if exc_type is not None else None)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


__all__ = ["EVERY_S", "Progress"]
