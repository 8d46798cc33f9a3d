"""Machine states at run time: serve by the latencies of the state the machine is in now.

A bundle's manifest records, for every machine state its latency table held (another power
mode of a Jetson, another clock, a re-checked CPU), how much slower or faster each sub-net
runs there than in the state it was deployed in (``manifest.states``, from
:func:`edgedyn.deploy.probes.state_scales`). :func:`ranking_in_state` scales the selector's
latencies by them; :class:`StateWatcher` polls the machine's state in a background thread
and, when it changes, swaps the latencies the selector decides by
(:meth:`~edgedyn.runtime.selector.Selector.set_state`): one reference swapped under the
dispatcher's lock, so no request waits for it or is dropped.

The state is read by a ``reader`` returning a state id (:func:`machine_state_reader` by
default: this machine's key as :func:`edgedyn.profile.states.current_key` computes it; on a
Jetson that reads the power mode and clock state). Tests pass a mocked reader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .policies import Ranking

log = logging.getLogger("edgedyn.runtime")

#: how often the watcher reads the machine's state (s): nvpmodel takes a few ms to answer
POLL_S = 2.0


def ranking_in_state(base: Ranking, scale: list[float]) -> Ranking:
    """``base`` with each sub-net's expected and median latency scaled (the order by accuracy stays)."""
    expected = [e * s for e, s in zip(base.expected, scale)]
    median = [m * s for m, s in zip(base.median, scale)]
    return replace(base, expected=expected, median=median,
                   fastest=min(range(len(expected)), key=lambda i: expected[i]))


def machine_state_reader(manifest: Any) -> Callable[[], str | None]:
    """The id of this machine's state now, keyed as the bundle's table keyed its states (the
    bundle's backend, device kind and threads); None when it cannot be read."""
    from ..errors import EdgedynError

    kind = str(manifest.device.get("kind", "cpu"))
    name = str(manifest.backend.get("name"))
    version = manifest.backend.get("version")

    def read() -> str | None:
        from ..profile.states import current_key, state_id

        try:
            key = current_key(kind, name, manifest.threads)
        except EdgedynError:
            return None
        if version is not None:
            key["backend_version"] = version
        return state_id(key)

    return read


class StateWatcher:
    """Polls ``reader`` every ``interval_s`` and calls ``on_change(state_id)`` when it changes."""

    def __init__(self, reader: Callable[[], str | None], on_change: Callable[[str | None], Any],
                 interval_s: float = POLL_S) -> None:
        self.reader, self.on_change, self.interval_s = reader, on_change, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current = reader()
        self.changes = 0

    def poll(self) -> bool:
        """Read the state once; True (and ``on_change`` called) when it changed."""
        now = self.reader()
        if now == self.current:
            return False
        self.current = now
        self.changes += 1
        self.on_change(now)
        return True

    def start(self) -> StateWatcher:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.poll()
                except Exception as err:  # a failing probe never stops serving
                    log.warning("machine state: cannot read it (%s); serving on", str(err).splitlines()[0][:200])

        self._thread = threading.Thread(target=loop, name="edgedyn-state-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1)
